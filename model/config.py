"""Configuration dataclasses for the JEPA-MoE model and its training loop.

This module must import without torch: the CLI prints presets and parameter counts from it in a few
milliseconds. Everything here is plain data plus validation; the modules that build tensors read these
objects and never mutate them (all dataclasses are frozen, derive variants with `dataclasses.replace`).

Defaults are the Neuro-JEPA `base` recipe (docs/architecture.md, "Model recipe"); named variants live in `presets.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MaskSpec:
    """One multi-block mask generator.

    A block covers `spatial_scale` of the plane spanned by grid axes 0 and 1 (aspect ratio h/w drawn
    log-uniformly from `aspect_ratio`) and `depth_scale` of grid axis 2, as in the Neuro-JEPA collator.
    The union of `n_blocks` blocks is then grown or shrunk to exactly `mask_ratio` of the tokens.
    """

    n_blocks: int
    spatial_scale: tuple[float, float]
    depth_scale: tuple[float, float] = (0.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self) -> None:
        if self.n_blocks < 1:
            raise ValueError(f"MaskSpec.n_blocks={self.n_blocks} must be >= 1")
        for name in ("spatial_scale", "depth_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"MaskSpec.{name}={(lo, hi)} must satisfy 0 <= lo <= hi <= 1")
        lo, hi = self.aspect_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"MaskSpec.aspect_ratio={(lo, hi)} must satisfy 0 < lo <= hi")


# Neuro-JEPA multiscale masking: many small, some medium and a few large blocks (three generators).
MULTISCALE_MASKS: tuple[MaskSpec, ...] = (
    MaskSpec(n_blocks=32, spatial_scale=(0.0, 0.2)),
    MaskSpec(n_blocks=16, spatial_scale=(0.2, 0.5)),
    MaskSpec(n_blocks=4, spatial_scale=(0.5, 0.7)),
)

# V-JEPA 2 style (the first rung of the ablation ladder): 8 short-range blocks of 15 % and 2 long-range
# blocks of 70 % of the plane, each spanning the whole third axis the way V-JEPA's tubes span time.
VJEPA2_MASKS: tuple[MaskSpec, ...] = (
    MaskSpec(n_blocks=8, spatial_scale=(0.15, 0.15), depth_scale=(1.0, 1.0)),
    MaskSpec(n_blocks=2, spatial_scale=(0.7, 0.7), depth_scale=(1.0, 1.0)),
)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (defaults: the old MONAI pipeline)."""

    flip_prob: float = 0.5
    bias_prob: float = 0.5
    bias_coeff: tuple[float, float] = (0.0, 0.1)
    bias_degree: int = 3
    gamma_prob: float = 0.5
    gamma: tuple[float, float] = (0.6, 1.5)
    noise_prob: float = 0.5
    noise_std: float = 0.1
    shift_prob: float = 0.5
    shift: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_prob") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name}={getattr(self, f.name)} must be a probability in [0, 1]")
        if self.bias_degree < 1:
            raise ValueError(f"AugmentConfig.bias_degree={self.bias_degree} must be >= 1")
        if not 0.0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"AugmentConfig.gamma={self.gamma} must satisfy 0 < low <= high")

    @property
    def n_bias_terms(self) -> int:
        """Polynomial terms with total degree <= bias_degree in 3D (20 for degree 3)."""
        d = self.bias_degree
        return (d + 1) * (d + 2) * (d + 3) // 6


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "reference": AugmentConfig(),  # the distributions of the original MONAI pipeline
    "none": AugmentConfig(flip_prob=0.0, bias_prob=0.0, gamma_prob=0.0, noise_prob=0.0, shift_prob=0.0),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, masking and loss switches of the JEPA-MoE (defaults: Neuro-JEPA base).

    The ablation ladder of the paper is four switches: `multiscale_masks`, `use_moe`, `fg_masks`
    and `fg_loss` (all False is the V-JEPA 2 style baseline).
    """

    # Input and tokenisation: 96x108x96 voxels, 12^3 patches -> an 8x9x8 grid of 576 tokens.
    img_size: tuple[int, int, int] = (96, 108, 96)
    patch: int = 12
    in_chans: int = 1
    # Context/target encoder (ViT-B).
    enc_width: int = 768
    enc_depth: int = 12
    enc_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    # Neuro-JEPA's per-head output gate: each head's attention output is scaled by sigmoid(Linear(x)) before
    # the output projection (encoder and predictor). Costs dim * heads + heads parameters per block.
    attn_gate: bool = True
    # Mixture of experts in the encoder's odd blocks; aux-loss-free balancing via a routing bias.
    use_moe: bool = True
    moe_layers: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
    n_routed: int = 16
    n_shared: int = 2
    top_k: int = 6
    expert_hidden: int = 384
    route_scale: float = 4.0
    bias_update_rate: float = 1e-4
    bias_clamp: float = 0.3
    moe_impl: str = "grouped"  # "grouped" (F.grouped_mm over sorted tokens) or "loop" (reference)
    # Predictor (narrow ViT, one learned mask token per mask generator).
    pred_width: int = 384
    pred_depth: int = 12
    pred_heads: int = 12
    # Masking and loss.
    multiscale_masks: bool = True
    mask_ratio: float = 0.75
    fg_masks: bool = True  # growth takes background first, shrink returns foreground first
    fg_loss: bool = True  # token weight bg_weight + (1 - bg_weight) * foreground
    bg_weight: float = 0.1
    fg_voxel_fraction: float = 0.1  # a patch is foreground when >= this fraction of voxels is tissue
    # Initialisation and positions.
    rope_theta: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if len(self.img_size) != 3 or any(s % self.patch for s in self.img_size):
            raise ValueError(
                f"img_size={self.img_size} must be three sizes divisible by patch={self.patch}; "
                "crop or pad the volume grid (data.py does this) or change the patch size"
            )
        towers = (("enc", self.enc_width, self.enc_heads), ("pred", self.pred_width, self.pred_heads))
        for prefix, width, heads in towers:
            if width % heads:
                raise ValueError(f"{prefix}_width={width} is not divisible by {prefix}_heads={heads}")
            if width // heads < 6:
                raise ValueError(
                    f"{prefix}_width/{prefix}_heads={width // heads} < 6: 3D RoPE needs at least one "
                    "rotation pair per axis; use fewer heads"
                )
        if self.use_moe:
            bad = [i for i in self.moe_layers if not 0 <= i < self.enc_depth]
            if bad:
                raise ValueError(f"moe_layers {bad} are outside 0..{self.enc_depth - 1} (enc_depth={self.enc_depth})")
            if not 1 <= self.top_k <= self.n_routed:
                raise ValueError(f"top_k={self.top_k} must be in 1..n_routed={self.n_routed}")
            if self.n_shared < 0 or self.expert_hidden < 1:
                raise ValueError(f"n_shared={self.n_shared} must be >= 0 and expert_hidden={self.expert_hidden} >= 1")
        if self.moe_impl not in ("grouped", "loop"):
            raise ValueError(f"moe_impl={self.moe_impl!r} must be 'grouped' or 'loop'")
        if self.use_moe and self.moe_impl == "grouped" and (self.enc_width % 8 or self.expert_hidden % 8):
            raise ValueError(
                f"enc_width={self.enc_width} and expert_hidden={self.expert_hidden} must be multiples of 8 for "
                "moe_impl='grouped' (the CUDA grouped GEMM needs 16-byte aligned bf16 rows); round them up or use "
                "moe_impl='loop'"
            )
        if not 0.0 < self.mask_ratio < 1.0 or not 0 < self.n_target < self.n_tokens:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} must leave both targets and context among {self.n_tokens} tokens"
            )
        if not 0.0 <= self.bg_weight <= 1.0:
            raise ValueError(f"bg_weight={self.bg_weight} must be in [0, 1]")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid, e.g. (8, 9, 8) for 96x108x96 voxels and 12^3 patches."""
        return (self.img_size[0] // self.patch, self.img_size[1] // self.patch, self.img_size[2] // self.patch)

    @property
    def n_tokens(self) -> int:
        g = self.grid
        return g[0] * g[1] * g[2]

    @property
    def n_target(self) -> int:
        """Tokens the predictor must fill in per generator (432 of 576 at 75 %)."""
        return int(self.n_tokens * self.mask_ratio)

    @property
    def n_context(self) -> int:
        return self.n_tokens - self.n_target

    @property
    def mask_specs(self) -> tuple[MaskSpec, ...]:
        return MULTISCALE_MASKS if self.multiscale_masks else VJEPA2_MASKS

    @property
    def n_mask_generators(self) -> int:
        """Derived from `multiscale_masks` so the predictor's mask tokens can never disagree with it."""
        return len(self.mask_specs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe (defaults: Neuro-JEPA base, 200 epochs x 1600 iterations, 40 warmup epochs).

    Two phases, as in the reference. The main phase (`train`) warms the learning rate up linearly from
    `start_lr` to `lr` over `warmup_steps`, then holds it constant for `steps` in total, so it can be
    extended at will. The cooldown phase (`cooldown`) starts from a main-phase checkpoint (weights, EMA
    target, routing biases and AdamW moments) and decays the rate linearly from `lr` to `final_lr` over
    `cooldown_steps` (reference: 40 epochs x 1600 iterations to 1e-6). Keeping the decay out of the main
    phase is what lets any main checkpoint be cooled down without knowing the run length in advance.

    `batch_size` is per process: under torchrun the global batch is batch_size x world size (the
    reference runs 48 per GPU).
    """

    batch_size: int = 48
    steps: int = 320_000
    warmup_steps: int = 64_000
    start_lr: float = 1e-4
    lr: float = 5.25e-4
    cooldown_steps: int = 64_000
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema: float = 0.99925
    seed: int = 42
    checkpoint_every: int = 500
    num_workers: int = 0
    device: str = "auto"  # "auto" = cuda (this process's local rank) when available, else cpu
    compile: bool = False  # torch.compile the training forward (GPU runs; needs a C++ toolchain on CPU)
    collapse_std: float = 1e-3  # warn when target features barely vary across the batch
    augment: str = "reference"  # AUGMENT_PRESETS name: "reference" (the old MONAI distributions) or "none"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.steps < 0 or self.warmup_steps < 0 or self.cooldown_steps < 0:
            raise ValueError(
                f"batch_size={self.batch_size} must be >= 1, steps={self.steps}, warmup_steps={self.warmup_steps} "
                f"and cooldown_steps={self.cooldown_steps} >= 0"
            )
        if not 0.0 <= self.ema <= 1.0:
            raise ValueError(f"ema={self.ema} must be in [0, 1]")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 1")
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment={self.augment!r} is not one of {sorted(AUGMENT_PRESETS)}")
        if not 0.0 <= self.final_lr <= self.lr:
            raise ValueError(f"final_lr={self.final_lr} must be in [0, lr={self.lr}]: the cooldown only decays")

    def lr_at(self, step: int) -> float:
        """Main phase: linear warmup from start_lr to lr over warmup_steps, then constant."""
        if step >= self.warmup_steps:
            return self.lr
        return self.start_lr + (self.lr - self.start_lr) * step / self.warmup_steps

    def cooldown_lr_at(self, step: int) -> float:
        """Cooldown phase: linear from lr towards final_lr, reaching final_lr at the last step.

        Step 0 already takes the first decrement (as the reference's LinearDecaySchedule, which steps
        before the first update), so no step of the cooldown repeats the main phase's constant rate.
        """
        if self.cooldown_steps == 0:
            return self.final_lr
        progress = min(step + 1, self.cooldown_steps) / self.cooldown_steps
        return self.lr + (self.final_lr - self.lr) * progress

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a config from `asdict` output (or JSON, where tuples came back as lists)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields are {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
