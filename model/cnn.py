"""Small 3D CNNs for the baselines: a ResNet-style classifier trained from scratch and a masked autoencoder.

Why: the reference result to beat on brain MRI is a plain CNN (scratch, or pretrained as a masked
autoencoder: the style that won the SSL3D and FOMO25 challenges at a fraction of a ViT's cost). The
networks here are sized for CPU benchmarks (`width` 8 -> 64 channels) and can downsample the input
first (`downsample`, average pooling), so a 96×108×96 volume costs tens of milliseconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(c: int) -> nn.Module:
    return nn.GroupNorm(min(8, c), c)


class ResBlock3d(nn.Module):
    """Two 3×3×3 convolutions with a residual path (strided 1×1×1 when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.n1 = _norm(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.n2 = _norm(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv3d(c_in, c_out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.conv1(x)))
        return F.relu(self.n2(self.conv2(h)) + self.skip(x))


class ResNet3d(nn.Module):
    """Stem + 4 residual stages (stride 2 each after the first) + global average pool + linear head.

    Input [B, C, X, Y, Z]; `features` gives [B, 8*width] pooled features, `forward` [B, n_out] logits.
    """

    def __init__(self, in_chans: int = 1, n_out: int = 1, width: int = 8, downsample: int = 1) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample={downsample} must be >= 1")
        self.downsample = downsample
        self.stem = nn.Sequential(
            nn.Conv3d(in_chans, width, 3, stride=2, padding=1, bias=False), _norm(width), nn.ReLU()
        )
        chans = [width, 2 * width, 4 * width, 8 * width]
        stages, c = [], width
        for i, co in enumerate(chans):
            stages.append(ResBlock3d(c, co, stride=1 if i == 0 else 2))
            c = co
        self.stages = nn.Sequential(*stages)
        self.out_dim = c
        self.head = nn.Linear(c, n_out)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, X, Y, Z] -> [B, 8*width, x, y, z] (total stride 16 × downsample)."""
        if self.downsample > 1:
            x = F.avg_pool3d(x, self.downsample)
        return self.stages(self.stem(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3, 4))  # [B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNNMAE(nn.Module):
    """Masked autoencoder around a ResNet3d: zero random cubes of the input, reconstruct them.

    The loss is the mean squared error on the masked voxels only, at half the encoder's input resolution, so the
    encoder must infer missing anatomy from context rather than copy it.
    """

    def __init__(self, encoder: ResNet3d, mask_patch: int = 4, mask_ratio: float = 0.6) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_patch = mask_patch
        self.mask_ratio = mask_ratio
        c = encoder.out_dim
        ups, ch = [], c
        for _ in range(3):  # undo 3 of the 4 stride-2 steps: reconstruct at half the encoder's input size
            ups += [nn.ConvTranspose3d(ch, max(ch // 2, 8), 2, stride=2), _norm(max(ch // 2, 8)), nn.ReLU()]
            ch = max(ch // 2, 8)
        self.decoder = nn.Sequential(*ups, nn.Conv3d(ch, 1, 3, padding=1))

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x, 2 * self.encoder.downsample)

    def random_mask(self, shape: torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 1, X, Y, Z] float mask (1 = hidden) made of mask_patch³ cubes."""
        B, _, X, Y, Z = shape
        p = self.mask_patch
        coarse = (torch.rand(B, 1, -(-X // p), -(-Y // p), -(-Z // p), generator=generator) < self.mask_ratio).float()
        full = coarse.repeat_interleave(p, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)
        return full[:, :, :X, :Y, :Z]

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x [B, 1, X, Y, Z] on the model grid -> scalar masked reconstruction loss."""
        target = self._target(x)  # [B, 1, x, y, z]
        mask = self.random_mask(target.shape, generator).to(x.device)
        d = 2 * self.encoder.downsample
        # The encoder sees the full-resolution input with the hidden cubes zeroed.
        hidden = F.interpolate(mask, scale_factor=d, mode="nearest")
        hidden = F.pad(
            hidden, [0, x.shape[4] - hidden.shape[4], 0, x.shape[3] - hidden.shape[3], 0, x.shape[2] - hidden.shape[2]]
        )
        recon = self.decoder(self.encoder.feature_map(x * (1 - hidden)))
        recon = F.interpolate(recon, size=target.shape[2:], mode="trilinear", align_corners=False)
        return ((recon - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
