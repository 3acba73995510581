"""Transformer building blocks shared by the encoder and the predictor: attention with 3D RoPE, MLP, Block.

A Block takes its feed-forward module as an argument so the encoder can drop a MoE (moe.py) into
selected layers without this file knowing about experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.rope import apply_rope


class Attention(nn.Module):
    """Multi-head self-attention; q and k are rotated by 3D RoPE, the kernel is PyTorch's SDPA.

    With `gate=True` (Neuro-JEPA's RoPEAttention), each head's output is multiplied by a per-token,
    per-head sigmoid gate computed from the block input before the output projection, so a head can
    switch itself off for tokens where it has nothing useful to add (e.g. air around the head).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, gate: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.gate = nn.Linear(dim, heads, bias=qkv_bias) if gate else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, N, D], rope = (cos, sin) from rope.rope_angles -> [B, N, D]."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd] each
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, N, H, hd]
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x)).unsqueeze(-1)  # gate [B, N, H, 1]
        return self.proj(y.reshape(B, N, D))


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp: nn.Module, qkv_bias: bool = True, attn_gate: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, attn_gate)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


TRUNC = 2.0  # absolute truncation bound of the weight init (the reference's trunc_normal_ default)


def init_weights(module: nn.Module, std: float) -> None:
    """ViT/V-JEPA initialisation: truncated-normal weights, zero biases, unit LayerNorm.

    Truncated at +-2 absolute (TRUNC), as the reference's `trunc_normal_(std=0.02)` with its default
    bounds: at std 0.02 that is +-100 sigma, i.e. a plain normal. Truncating at +-2 sigma instead
    would shrink the effective std by 12 %.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv3d):
            nn.init.trunc_normal_(m.weight, std=std, a=-TRUNC, b=TRUNC)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def rescale_residuals(blocks: nn.ModuleList) -> None:
    """Divide each block's residual output projections by sqrt(2 * layer) (V-JEPA's depth rescaling).

    Keeps the residual stream's variance from growing with depth at initialisation. Applies to every
    parameter named `proj.weight`, `fc2.weight` or `w2` (the stacked routed-expert output weights).
    """
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            for name, p in block.named_parameters():
                if name.endswith(("proj.weight", "fc2.weight")) or name.endswith("w2"):
                    p.div_((2.0 * layer) ** 0.5)
