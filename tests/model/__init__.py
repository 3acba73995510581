"""Tests of the pure-PyTorch JEPA-MoE package (CPU, tiny preset; the whole directory runs in well under a minute).

Shared helpers live here rather than in a conftest so test modules can import them explicitly.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from model.masks import MaskCollator
from model.presets import get_preset
from model.threads import one_torch_thread

TINY = get_preset("tiny").model


@cache
def blob_volumes(n: int) -> tuple[np.ndarray, ...]:
    """`n` synthetic brain-like volumes on the model grid (cached: each takes ~25 ms)."""
    from model.data import blob_volume  # imported here: MONAI takes seconds to import, DDP workers skip it

    return tuple(blob_volume(seed) for seed in range(n))


def tiny_batch(batch_size: int = 2, step: int = 0, train: bool = False) -> dict[str, torch.Tensor]:
    """A MaskCollator batch of blob volumes for the tiny preset."""
    from model.data import VolumeDataset

    ds = VolumeDataset(blob_volumes(batch_size), train=train, seed=0)
    return MaskCollator(TINY, seed=0)([ds.sample(i, step) for i in range(batch_size)], step)


single_thread = one_torch_thread
"""Tiny-preset tests run on one intra-op thread (see model.threads)."""
