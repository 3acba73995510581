"""Evaluation presets: how hard each protocol tries, sized for where it runs.

`tiny` is for tests (seconds), `cpu` for the 2-core benchmark (minutes), `small` for one GPU.
Hyper-parameter grids are searched on the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    batch_size: int = 4  # volumes per feature-extraction batch
    num_workers: int = 0  # DataLoader workers for feature extraction
    wd_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # linear heads: L2 strength (1/C, ridge alpha)
    attn_lr_grid: tuple[float, ...] = (1e-3, 3e-4)
    attn_epochs: int = 40
    attn_heads: int = 16
    pool_regions: int = 1  # frozen features: global mean (1), or mean + r³ regional means (features.readout)
    token_pool: int = 1  # average tokens over k×k×k cells before the attentive probe (memory)
    fewshot_ks: tuple[int, ...] = (4, 8, 16, 32, 64)
    cnn_width: int = 8
    cnn_downsample: int = 3
    cnn_epochs: int = 15
    cnn_lr: float = 2e-3
    mae_steps: int = 300
    mae_batch: int = 8
    finetune_epochs: int = 3
    finetune_max_train: int = 200
    finetune_lr: float = 1e-4
    run_attentive: bool = True
    run_fusion: bool = True
    run_fusion_gated: bool = True  # learned fusion (fusion.py), each only when run_fusion
    run_fusion_mil: bool = True
    run_fusion_poe: bool = True
    run_finetune: bool = True
    run_scratch_cnn: bool = True
    run_cnn_mae: bool = True
    device: str = "cpu"
    seed: int = 0
    random_init_seed: int = 1_000_003  # independent of every pretraining seed


PRESETS: dict[str, EvalConfig] = {
    "tiny": EvalConfig(
        n_boot=200,
        wd_grid=(1.0, 10.0),
        attn_lr_grid=(1e-3,),
        attn_epochs=15,
        fewshot_ks=(2, 4),
        cnn_width=4,
        cnn_downsample=4,
        cnn_epochs=3,
        mae_steps=3,
        mae_batch=2,
        finetune_epochs=1,
        finetune_max_train=8,
    ),
    # 2 CPU cores: the CNN baselines see 3x-downsampled volumes; fine-tuning is short. The CNN-MAE sees
    # 600 pool volumes (150 x 4), half of what the benchmark's JEPA pretraining sees (300 x 4). The attentive
    # probes read 2x2x2-averaged tokens (80 instead of 576 per volume): at 576 they and early fusion took
    # 15-30 % of a shared 2-core run (150-subject trial runs).
    "cpu": EvalConfig(
        attn_epochs=20,
        token_pool=2,
        fewshot_ks=(4, 8, 16, 32),
        cnn_epochs=8,
        mae_steps=150,
        mae_batch=4,
        finetune_epochs=1,
        finetune_max_train=64,
    ),
    # Recipe tuning (bench/tune_recipe.py) on a cohort of its own: only the frozen-feature protocols (linear
    # and attentive probes, as in `cpu`), which are what a pretraining recipe changes; the learned baselines
    # do not depend on it.
    "tune": EvalConfig(
        n_boot=500,
        fewshot_ks=(),
        attn_epochs=20,
        token_pool=2,
        run_fusion=False,
        run_finetune=False,
        run_scratch_cnn=False,
        run_cnn_mae=False,
    ),
    "small": EvalConfig(
        batch_size=16,
        num_workers=4,
        cnn_width=16,
        cnn_downsample=2,
        cnn_epochs=30,
        mae_steps=3000,
        mae_batch=16,
        finetune_epochs=10,
        finetune_max_train=10_000,
        token_pool=1,
        device="cuda",
    ),
}


def get_eval_preset(name: str) -> EvalConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown evaluation preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]
