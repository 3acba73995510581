"""Named model and training presets, and an analytic parameter count.

Importable without torch (like `config.py`) so the CLI can list presets and their sizes instantly.
`count_parameters` is arithmetic on the config; a test checks it against the built modules, so the two
cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from model.config import ModelConfig, TrainConfig


class Preset(NamedTuple):
    """A model and the training recipe it is meant to run with; unpacks as `model_cfg, train_cfg`."""

    model: ModelConfig
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    # Neuro-JEPA base: ViT-B 768x12 encoder, MoE (16 routed + 2 shared, top-6) in blocks 1,3,...,11,
    # predictor 384x12, 576 tokens on the 8x9x8 grid; 200 epochs x 1600 steps of batch 48.
    "base": Preset(ModelConfig(), TrainConfig()),
    # ViT-S sized encoder with the same routing recipe; for single-GPU experiments.
    "small": Preset(
        ModelConfig(enc_width=384, enc_heads=6, expert_hidden=192, pred_width=192, pred_depth=6, pred_heads=6),
        TrainConfig(batch_size=8, steps=20_000, warmup_steps=2_000, checkpoint_every=250),
    ),
    # Same grid, patch and masks as base (576 tokens, 432 targets), but a toy network: a training step
    # takes a fraction of a second on a laptop CPU. For tests, the demo and smoke runs.
    "tiny": Preset(
        ModelConfig(
            enc_width=48,
            enc_depth=2,
            enc_heads=2,
            moe_layers=(1,),
            n_routed=4,
            n_shared=1,
            top_k=2,
            expert_hidden=24,
            pred_width=32,
            pred_depth=1,
            pred_heads=2,
        ),
        TrainConfig(batch_size=2, steps=20, warmup_steps=5, checkpoint_every=10, seed=0),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name` ("base", "small", "tiny"): `model_cfg, train_cfg = get_preset(name)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def ablation_ladder(cfg: ModelConfig) -> dict[str, ModelConfig]:
    """The four rungs the Neuro-JEPA paper reports, each adding one switch to the previous one."""
    vjepa2 = replace(cfg, multiscale_masks=False, use_moe=False, fg_masks=False, fg_loss=False)
    multiscale = replace(vjepa2, multiscale_masks=True)
    moe = replace(multiscale, use_moe=True)
    return {"vjepa2": vjepa2, "multiscale": multiscale, "moe": moe, "fg": replace(moe, fg_masks=True, fg_loss=True)}


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts: encoder in total, encoder touched by one token (top-k experts), predictor."""

    encoder_total: int
    encoder_active: int
    predictor: int


def count_parameters(cfg: ModelConfig) -> ParamCount:
    """Count parameters from the config alone (mirrors encoder.py / predictor.py / moe.py exactly)."""

    def linear(n_in: int, n_out: int, bias: bool = True) -> int:
        return n_in * n_out + (n_out if bias else 0)

    def norm(d: int) -> int:
        return 2 * d

    def attention(d: int) -> int:
        return linear(d, 3 * d, cfg.qkv_bias) + linear(d, d)

    def mlp(d: int, hidden: int) -> int:
        return linear(d, hidden) + linear(hidden, d)

    d = cfg.enc_width
    dense_block = norm(d) + attention(d) + norm(d) + mlp(d, int(d * cfg.mlp_ratio))
    expert = mlp(d, cfg.expert_hidden)
    shared = mlp(d, cfg.n_shared * cfg.expert_hidden) if cfg.n_shared else 0
    gate = linear(d, cfg.n_routed, bias=False)
    moe_common = norm(d) + attention(d) + norm(d) + gate + shared
    n_moe = len(cfg.moe_layers) if cfg.use_moe else 0
    n_dense = cfg.enc_depth - n_moe
    stem = cfg.patch**3 * cfg.in_chans * d + d + norm(d)  # Conv3d patch embed + final norm

    encoder_total = stem + n_dense * dense_block + n_moe * (moe_common + cfg.n_routed * expert)
    encoder_active = stem + n_dense * dense_block + n_moe * (moe_common + cfg.top_k * expert)

    p = cfg.pred_width
    pred_block = norm(p) + attention(p) + norm(p) + mlp(p, int(p * cfg.mlp_ratio))
    predictor = linear(d, p) + cfg.n_mask_generators * p + cfg.pred_depth * pred_block + norm(p) + linear(p, d)
    return ParamCount(encoder_total=encoder_total, encoder_active=encoder_active, predictor=predictor)
