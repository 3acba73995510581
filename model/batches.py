"""Batch number `step` of a rank, deterministically: the map-style dataset a training DataLoader iterates.

What a loader worker does for one step: look up its samples in the stream (sampler.py), read and
scale them (`dataset[i]`: a prepared image and its foreground map, e.g. tasks.snapshot_data), draw
their augmentation parameters and flip the foreground maps accordingly (augment.py), then draw the
masks (masks.py). The images themselves are augmented later, batched on the training device.
Indexing by step (instead of iterating) is what makes resume exact and lets DataLoader workers
build batches in parallel without shared RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.augment import draw_params, flip_fg
from model.config import AugmentConfig
from model.masks import MaskCollator, foreground_patches
from model.sampler import EpochStream


class StepBatches(torch.utils.data.Dataset):
    """Batch `step` of rank `rank`: MaskCollator output plus the `aug_*` parameters of its samples.

    Augmentation parameters and masks are keyed by each sample's stream position, so rank r holding
    samples 4..7 of a global batch gets exactly what a single process holding all of it gets for them.
    """

    def __init__(
        self,
        dataset: Sequence,
        collator: MaskCollator,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        augment: AugmentConfig | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty; curate at least one volume first")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in 0..world_size-1={world_size - 1}")
        if getattr(dataset, "train", False):
            raise ValueError(
                "the dataset augments its own items (VolumeDataset(train=True), the MONAI reference); training "
                "augments batched on the device, so pass VolumeDataset(train=False)"
            )
        self.dataset, self.collator, self.batch_size, self.seed = dataset, collator, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.augment = augment
        self.stream = EpochStream(len(dataset), seed, batch_size=batch_size, world_size=world_size)

    def indices(self, step: int) -> list[tuple[int, int]]:
        """(dataset index, stream position) of each sample this rank holds in batch `step`."""
        return [(self.stream.item(p), p) for p in self.stream.positions(step, self.rank)]

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        pairs = self.indices(step)
        positions = [p for _, p in pairs]
        items = [self.dataset[i] for i, _ in pairs]
        params = None
        if self.augment is not None:
            params = draw_params(self.augment, self.seed, positions)
            grid = self.collator.cfg.grid
            fg = torch.stack([_fg(it, self.collator) for it in items])  # [B, N] of the unflipped images
            flipped = flip_fg(fg, params["aug_flip"], grid)  # [B, N]: the masks see the flipped anatomy
            items = [{"image": it["image"], "fg": f} for it, f in zip(items, flipped, strict=True)]
        global_start = step * self.world_size * self.batch_size
        batch = self.collator(items, step, [p - global_start for p in positions])
        return batch if params is None else batch | params


def _fg(item: dict, collator: MaskCollator) -> torch.Tensor:
    if "fg" in item:
        return item["fg"].bool()
    cfg = collator.cfg
    return foreground_patches(item["image"][None], cfg.patch, cfg.fg_voxel_fraction)[0]
