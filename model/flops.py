"""Analytic model FLOPs of one JEPA training step, for throughput and MFU reporting.

Importable without torch (like `config.py`): the CLI and the benchmarks quote FLOPs without building
a model. Only matrix multiplications are counted (2 FLOPs per multiply-add); norms, activations,
softmax, RoPE and the optimizer are left out, as in the usual "6 x parameters x tokens" estimate
(forward 2, backward 4 per weight and token), to which the attention score terms are added
(QK^T and AV: 4 n d per token for a sequence of n, times 3 when trained).

Per sample and step the three networks see different token sets (G mask generators, K context and
M target tokens, N = K + M tokens in the grid):
    target encoder    forward only, all N tokens, once;
    context encoder   forward + backward, K tokens, G times;
    predictor         forward + backward, K + M tokens, G times.
Routed experts count top_k times per token (active, not total, parameters). The patch embedding runs
on all N tokens in both encoders (context tokens are gathered after it) and its backward needs only the
weight gradient (the images need none): 2 x forward there instead of 3 x.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import ModelConfig


@dataclass(frozen=True)
class StepFlops:
    """Model FLOPs of one training step for one sample, split by network."""

    target_encoder: float
    context_encoder: float
    predictor: float

    @property
    def total(self) -> float:
        return self.target_encoder + self.context_encoder + self.predictor


def _attention_per_token(d: int, heads: int, n: int, gate: bool) -> float:
    """Forward FLOPs per token of one attention layer over a sequence of n tokens."""
    projections = 2 * (3 * d * d + d * d + (d * heads if gate else 0))  # qkv, out proj, per-head gate
    scores = 4 * n * d  # QK^T and AV
    return projections + scores


def _blocks_per_token(cfg: ModelConfig, n: int) -> float:
    """Forward FLOPs per token of the encoder's transformer blocks on a sequence of n tokens."""
    d = cfg.enc_width
    dense_mlp = 2 * 2 * d * int(d * cfg.mlp_ratio)
    router = 2 * d * cfg.n_routed
    moe = router + (cfg.top_k + cfg.n_shared) * 2 * 2 * d * cfg.expert_hidden  # shared = n_shared expert widths
    flops = 0.0
    for layer in range(cfg.enc_depth):
        flops += _attention_per_token(d, cfg.enc_heads, n, cfg.attn_gate)
        flops += moe if cfg.use_moe and layer in cfg.moe_layers else dense_mlp
    return flops


def train_step_flops(cfg: ModelConfig) -> StepFlops:
    """Model FLOPs of one training step per sample (multiply by the global batch for a step)."""
    G, N, K, M = cfg.n_mask_generators, cfg.n_tokens, cfg.n_context, cfg.n_target
    d, p = cfg.enc_width, cfg.pred_width
    patch_embed = N * 2 * cfg.patch**3 * cfg.in_chans * d  # forward, all tokens; Conv3d = one matmul per token
    target = patch_embed + N * _blocks_per_token(cfg, N)
    context = 2 * patch_embed + 3 * G * K * _blocks_per_token(cfg, K)
    pred_block = _attention_per_token(p, cfg.pred_heads, K + M, cfg.attn_gate) + 2 * 2 * p * int(p * cfg.mlp_ratio)
    pred_forward = K * 2 * d * p + (K + M) * cfg.pred_depth * pred_block + M * 2 * p * d  # embed, blocks, proj
    return StepFlops(float(target), float(context), float(3 * G * pred_forward))
