"""Volume -> token sequence: a strided Conv3d, one token per non-overlapping patch^3 cube."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed3D(nn.Module):
    """Conv3d(in_chans, width, kernel=patch, stride=patch), flattened in C order over the token grid."""

    def __init__(self, img_size: tuple[int, int, int], patch: int, in_chans: int, width: int) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.in_chans = in_chans
        self.proj = nn.Conv3d(in_chans, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, X, Y, Z] -> [B, N, width] with N = (X/patch) * (Y/patch) * (Z/patch)."""
        if x.ndim != 5 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected images [B, {self.in_chans}, {', '.join(map(str, self.img_size))}], got "
                f"{list(x.shape)}; resample/crop volumes to the model grid first (data.VolumeDataset does)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, g0, g1, g2] -> [B, N, D]
