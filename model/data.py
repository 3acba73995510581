"""Volumes -> training items: fit to the model grid, percentile scaling, foreground map; and the MONAI reference.

Inputs are skull-stripped MNI-space volumes already resampled to the model grid (the curation
pipeline does that); anything else is centre-cropped/padded to it. What a loader worker does to a
stored volume is `prepare_volume`: crop/pad -> scale the 0.5-99.5 percentiles to [0, 1] (clipped).
Everything random happens later, batched on the training device (model/augment.py), so CPU workers
only read and scale.

`VolumeDataset` wraps in-memory volumes. With `train=False` its items are prepared volumes and their
foreground map (what training and evaluation consume). With `train=True` it runs the original
per-sample MONAI pipeline (random flips on each axis -> foreground map -> bias field, gamma 0.6-1.5,
Gaussian noise, intensity shift), kept as the reference that model/augment.py must match in
distribution (tests/model/test_augment.py) and as the baseline of bench/augment.py. Every random
choice is seeded from (seed, index, draw), so an item is a pure function of its key.

The 0.5/99.5 percentiles of a volume do not depend on the augmentation draw, so VolumeDataset
computes them once per volume (numpy's partition-based percentile, ~25x faster than torch.quantile's
sort and equal to 1e-7) and keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.masks import derive_seed, foreground_patches


class VolumeDataset(torch.utils.data.Dataset):
    """Map-style dataset of in-memory volumes returning {"image": [1, X, Y, Z] float32, "fg": [N] bool}.

    `ds[i]` is item i without augmentation when `train=False`, and MONAI augmentation draw 0 when
    `train=True`; `ds.sample(i, draw)` gives any other draw of the MONAI reference pipeline.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        train: bool,
        seed: int,
        *,
        img_size: tuple[int, int, int] = (96, 108, 96),
        patch: int = 12,
        fg_voxel_fraction: float = 0.1,
    ) -> None:
        self.volumes = volumes
        self.train = train
        self.seed = seed
        self.img_size = tuple(img_size)
        self.patch = patch
        self.fg_voxel_fraction = fg_voxel_fraction
        self._ranges: dict[int, tuple[float, float]] = {}  # index -> (p0.5, p99.5) intensity, per process
        if train:  # MONAI only for the reference pipeline: training workers never import it
            from monai import transforms as mt

            self.spatial = mt.Compose([mt.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)])
            self.intensity = mt.Compose(
                [
                    mt.RandBiasField(prob=0.5, coeff_range=(0.0, 0.1), degree=3),
                    mt.RandAdjustContrast(prob=0.5, gamma=(0.6, 1.5)),
                    mt.RandGaussianNoise(prob=0.5, mean=0.0, std=0.1),
                    mt.RandShiftIntensity(prob=0.5, offsets=0.1),
                ]
            )

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index, draw=0)

    def sample(self, index: int, draw: int) -> dict[str, torch.Tensor]:
        """Item `index` with MONAI augmentation draw `draw` (ignored when train=False)."""
        image = self.prepare(index)  # [1, X, Y, Z] in [0, 1]
        if self.train:
            self.spatial.set_random_state(seed=derive_seed(self.seed, index, draw, 0) % 2**32)
            image = _plain(self.spatial(image))
        fg = foreground_patches(image[None], self.patch, self.fg_voxel_fraction)[0]  # [N]
        if self.train:
            self.intensity.set_random_state(seed=derive_seed(self.seed, index, draw, 1) % 2**32)
            image = _plain(self.intensity(image))
        return {"image": image.float().contiguous(), "fg": fg}

    def prepare(self, index: int) -> torch.Tensor:
        """Volume `index` on the model grid, 0.5-99.5 percentiles scaled to [0, 1] (clipped): [1, X, Y, Z]."""
        image = fit_to_grid(_as_channel_first(self.volumes[index], index), self.img_size)  # [1, X, Y, Z]
        if index not in self._ranges:
            self._ranges[index] = intensity_range(image)
        return torch.from_numpy(scale_to_unit(image, *self._ranges[index]))


def fit_to_grid(volume: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Centre crop / zero pad a [C, X, Y, Z] array to `size` (MONAI's ResizeWithPadOrCrop, without MONAI).

    Equal to `ResizeWithPadOrCrop(size, mode="constant")` for every shape (a test compares them); done in
    numpy so the loader workers of a training run never import MONAI.
    """
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    out = np.zeros((volume.shape[0], *size), dtype=volume.dtype)
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(volume.shape[1:], size, strict=True):
        if have >= want:  # crop: drop (have - want) // 2 in front
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:  # pad: (want - have) // 2 zeros in front
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of a volume (numpy's partition-based percentile: ~25x torch.quantile)."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    return float(lo), float(hi)


def scale_to_unit(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(image - lo) / (hi - lo) clipped to [0, 1], float32: MONAI's ScaleIntensityRange(lo, hi, 0, 1, clip=True).

    A constant volume (hi == lo) becomes zeros, as in MONAI (which warns and only subtracts lo).
    """
    out = image.astype(np.float32, copy=True)
    out -= np.float32(lo)
    if hi != lo:
        out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def prepare_volume(volume: np.ndarray, size: tuple[int, int, int] = (96, 108, 96), name: object = 0) -> torch.Tensor:
    """A stored volume as the model sees it before augmentation: grid-fitted, percentile-scaled [1, X, Y, Z]."""
    image = fit_to_grid(_as_channel_first(volume, name), size)
    return torch.from_numpy(scale_to_unit(image, *intensity_range(image)))


def _as_channel_first(volume: np.ndarray, index: object) -> np.ndarray:
    arr = np.asarray(volume)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise ValueError(
            f"volume {index} has shape {arr.shape}; expected (X, Y, Z) or (1, X, Y, Z) single-channel data"
        )
    return np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)


def _plain(x: object) -> torch.Tensor:
    """MONAI returns MetaTensors; training only needs the data."""
    if hasattr(x, "as_tensor"):
        return x.as_tensor()
    return torch.as_tensor(x)


def blob_volume(seed: int, shape: tuple[int, int, int] = (96, 108, 96)) -> np.ndarray:
    """A synthetic 'brain': a smooth random texture inside an ellipsoid, zero outside.

    For smoke runs and tests of the training loop: learnable (smooth, structured), cheap (~25 ms),
    and with a brain-like share of foreground patches (about a quarter to a third).
    """
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radii = rng.uniform(0.6, 0.85, size=3)
    inside = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0
    texture = np.zeros(shape, dtype=np.float32)
    for _ in range(6):  # a few random low-frequency waves
        k = rng.normal(0.0, 4.0, size=3).astype(np.float32)
        texture += np.cos(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return np.where(inside, 1.0 + 0.25 * texture, 0.0).astype(np.float32)
