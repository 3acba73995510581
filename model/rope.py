"""3D rotary position embedding (RoPE) for a token grid.

Why RoPE and not a learned table: the context encoder and the predictor see arbitrary subsets of the
grid, and RoPE makes the attention logit between two tokens depend only on their relative offset, so
a token's position travels with it no matter which subset is kept.

The head dimension is split into three equal, even-sized chunks, one per grid axis (any remainder of
1-5 channels is left unrotated); within a chunk, channel pairs (2i, 2i+1) rotate by angle
pos * theta^(-i / (chunk / 2)).
"""

from __future__ import annotations

import torch


def grid_coords(grid: tuple[int, int, int], device: torch.device | None = None) -> torch.Tensor:
    """Integer (axis0, axis1, axis2) coordinates of every token in C (row-major) order.

    Token n of a flattened grid sits at coords[n]; patch_embed.py, masks.py and the foreground map all
    flatten in this same order.

    Returns:
        Float tensor [N, 3].
    """
    axes = [torch.arange(g, device=device, dtype=torch.float32) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # [N, 3]


def axis_dim(head_dim: int) -> int:
    """Channels rotated per axis: the largest even number <= head_dim / 3."""
    return 2 * ((head_dim // 3) // 2)


def rope_angles(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for tokens at `coords`, computed once per forward and shared by all blocks.

    Args:
        coords: [..., N, 3] token coordinates (e.g. [N, 3] for the full grid or [B, K, 3] for a subset).
        head_dim: attention head dimension.
        theta: RoPE base frequency.

    Returns:
        (cos, sin), each [..., 1, N, 3 * axis_dim / 2], with a singleton head axis so they broadcast
        against q, k of shape [B, H, N, head_dim].
    """
    a = axis_dim(head_dim)
    if a == 0:
        raise ValueError(f"head_dim={head_dim} is too small for 3D RoPE (needs >= 6)")
    freqs = theta ** (-torch.arange(a // 2, device=coords.device, dtype=torch.float32) / (a // 2))  # [a/2]
    angles = (coords.float().unsqueeze(-1) * freqs).flatten(-2)  # [..., N, 3 * a/2], axis-major
    angles = angles.unsqueeze(-3)  # [..., 1, N, 3a/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of `x` [B, H, N, head_dim] by the angles in (cos, sin)."""
    n_rot = 2 * cos.shape[-1]
    rot, rest = x[..., :n_rot].float(), x[..., n_rot:]
    even, odd = rot[..., 0::2], rot[..., 1::2]  # [B, H, N, n_rot/2] each
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), rest), dim=-1)
