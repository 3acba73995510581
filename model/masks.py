"""Multi-block 3D masks on the token grid, the foreground map, and the collator that builds index tensors.

Each mask generator drops `n_blocks` random boxes on the 8x9x8 grid (the union is the target set),
then grows or shrinks that union to exactly `n_target` tokens (432 of 576) so every sample of a
batch has the same number of context and target tokens and the index tensors stack without padding.

Growth and shrinking happen in layers of 6-connected neighbours of the current region, so blocks
stay blocky. Foreground-aware (`fg_masks`): within a layer, growth takes background cells first
(the extra targets take no tissue away from the context), and shrinking hands foreground cells
back to the context first (the encoder should see tissue). Equivalently, the cells taken are a
prefix of the order (layer, preference, random), which is what the property tests check.

All randomness comes from a torch.Generator per sample seeded by (seed, step, position in the global
batch), so masks are a pure function of where a sample sits in the stream: resuming a run reproduces
them exactly, in any DataLoader worker, and a data-parallel rank holding samples 4..7 of a global
batch draws the same masks for them as a single process holding all of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.config import MaskSpec, ModelConfig

_CROSS = torch.zeros(1, 1, 3, 3, 3)
_CROSS[0, 0, 1, 1, :] = _CROSS[0, 0, 1, :, 1] = _CROSS[0, 0, :, 1, 1] = 1.0  # 6-neighbourhood + centre


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, e.g. (seed, step) or (seed, index, draw).

    Plain `seed + step` would make (seed=1, step=0) and (seed=0, step=1) share masks.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def foreground_patches(images: torch.Tensor, patch: int, voxel_fraction: float = 0.1) -> torch.Tensor:
    """Which patches contain tissue.

    A voxel is tissue when it exceeds p2 + 0.1 * (p98 - p2) of its own volume; a patch is foreground
    when at least `voxel_fraction` of its voxels are tissue (Neuro-JEPA's rule). Percentiles are taken
    over an evenly strided subsample of ~131k voxels: exact enough for a 10 %-of-range threshold and
    ~10x cheaper than sorting a million voxels.

    Args:
        images: [B, C, X, Y, Z] volumes (channels are reduced by max |value|).
        patch: patch edge in voxels.
        voxel_fraction: minimum tissue fraction of a foreground patch.

    Returns:
        Bool tensor [B, N] in the token order of the encoder.
    """
    x = images.detach()
    vol = (x[:, 0].abs() if x.shape[1] == 1 else x.abs().amax(dim=1)).float()  # [B, X, Y, Z]
    flat = vol.flatten(1)  # [B, V]
    sub = flat[:, :: max(1, flat.shape[1] // 2**17)]
    if sub.device.type == "cpu":  # numpy's partition: same linear interpolation, ~10x torch.quantile's sort
        p2, p98 = torch.from_numpy(np.quantile(sub.numpy(), [0.02, 0.98], axis=1).astype(np.float32))  # [B] each
    else:
        p2, p98 = torch.quantile(sub, torch.tensor([0.02, 0.98], device=sub.device), dim=1)  # [B] each
    thresh = (p2 + 0.1 * (p98 - p2)).view(-1, 1, 1, 1)
    tissue = (vol > thresh).float().unsqueeze(1)  # [B, 1, X, Y, Z]
    frac = F.avg_pool3d(tissue, kernel_size=patch, stride=patch)  # [B, 1, g0, g1, g2]
    return (frac >= voxel_fraction).flatten(1)  # [B, N]


def sample_blocks(spec: MaskSpec, grid: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Union of `spec.n_blocks` random boxes on the grid: bool [g0, g1, g2], True = target."""
    g0, g1, g2 = grid
    plane = g0 * g1
    s_lo = max(spec.spatial_scale[0], 1.0 / plane)
    s_hi = max(spec.spatial_scale[1], s_lo)
    d_lo = max(spec.depth_scale[0], 1.0 / g2)
    d_hi = max(spec.depth_scale[1], d_lo)
    log_a_lo, log_a_hi = math.log(spec.aspect_ratio[0]), math.log(spec.aspect_ratio[1])
    target = torch.zeros(grid, dtype=torch.bool)
    for u_s, u_d, u_a, u0, u1, u2 in torch.rand(spec.n_blocks, 6, generator=gen).tolist():
        area = max(1, int(plane * (s_lo + u_s * (s_hi - s_lo))))
        depth = min(g2, max(1, int(g2 * (d_lo + u_d * (d_hi - d_lo)))))
        aspect = math.exp(log_a_lo + u_a * (log_a_hi - log_a_lo))  # log-uniform h / w
        h = min(g0, max(1, round(math.sqrt(area * aspect))))
        w = min(g1, max(1, round(math.sqrt(area / aspect))))
        i, j, k = int(u0 * (g0 - h + 1)), int(u1 * (g1 - w + 1)), int(u2 * (g2 - depth + 1))
        target[i : i + h, j : j + w, k : k + depth] = True
    return target


def dilate6(region: torch.Tensor) -> torch.Tensor:
    """Region plus its 6-connected neighbours, for a bool grid [g0, g1, g2]."""
    hits = F.conv3d(region.float()[None, None], _CROSS, padding=1)[0, 0]
    return hits > 0


def grow(region: torch.Tensor, n: int, prefer: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Pick `n` cells outside `region`, layer by layer outwards from it.

    Within a layer the `prefer`red cells come first, each group in random order. With an empty region
    every outside cell is one layer.

    Args:
        region: bool grid [g0, g1, g2] to grow from.
        n: number of cells to take (at most the number outside the region).
        prefer: bool grid of cells to take first within a layer, or None.
        gen: random generator.

    Returns:
        Bool grid of the taken cells.
    """
    taken = torch.zeros_like(region)
    grown = region.clone()
    while n > 0:
        layer = (dilate6(grown) if grown.any() else torch.ones_like(grown)) & ~grown
        if not layer.any():  # only when region is everything: nothing left to take
            raise ValueError(f"cannot take {n} more cells: the region already covers the grid")
        cells = layer.flatten().nonzero().squeeze(1)
        cells = cells[torch.randperm(cells.numel(), generator=gen)]
        if prefer is not None:
            first = prefer.flatten()[cells]
            cells = torch.cat((cells[first], cells[~first]))
        pick = cells[:n]
        taken.view(-1)[pick] = True
        grown.view(-1)[pick] = True
        n -= pick.numel()
    return taken


def make_mask(
    spec: MaskSpec, grid: tuple[int, int, int], n_target: int, fg: torch.Tensor | None, gen: torch.Generator
) -> torch.Tensor:
    """One sample's target set: random blocks adjusted to exactly `n_target` cells.

    Args:
        spec: block statistics of this generator.
        grid: token grid.
        n_target: exact number of target tokens.
        fg: bool [N] foreground map for fg-aware adjustment, or None.
        gen: random generator.

    Returns:
        Bool [N], True = target (predicted), False = context (seen by the encoder).
    """
    target = sample_blocks(spec, grid, gen)
    fg_grid = fg.view(grid) if fg is not None else None
    n = int(target.sum())
    if n < n_target:  # grow the target into the context, background first
        target |= grow(target, n_target - n, None if fg_grid is None else ~fg_grid, gen)
    elif n > n_target:  # shrink: hand target cells back to the context, foreground first
        target &= ~grow(~target, n - n_target, fg_grid, gen)
    return target.flatten()


class MaskCollator:
    """Stack dataset items into a batch and draw every generator's context/target indices.

    Returns a dict with
        image: [B, C, X, Y, Z] float,
        fg: [B, N] bool foreground map (from the items, or computed here when they have none),
        context_idx: [G, B, n_context] long, ascending grid indices the encoder sees,
        target_idx: [G, B, n_target] long, ascending grid indices the predictor fills in.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed

    def __call__(
        self, items: Sequence[dict[str, torch.Tensor]], step: int, positions: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Collate `items` of batch `step`.

        Args:
            items: dataset items {"image": [C, X, Y, Z], "fg": [N] (optional)}.
            step: training step; masks change every step.
            positions: each item's index in the global batch (default 0..len(items)-1); a data-parallel
                rank passes its slice, e.g. [2, 3] for rank 1 of 2 with 2 samples per rank.
        """
        if not items:
            raise ValueError("MaskCollator got an empty batch")
        positions = range(len(items)) if positions is None else positions
        if len(positions) != len(items):
            raise ValueError(f"got {len(items)} items but {len(positions)} positions; pass one position per item")
        cfg = self.cfg
        images = torch.stack([it["image"] for it in items])  # [B, C, X, Y, Z]
        if all("fg" in it for it in items):
            fg = torch.stack([it["fg"] for it in items]).bool()  # [B, N]
        else:
            fg = foreground_patches(images, cfg.patch, cfg.fg_voxel_fraction)
        if fg.shape[1] != cfg.n_tokens:
            raise ValueError(f"fg has {fg.shape[1]} patches per sample, the model grid {cfg.grid} has {cfg.n_tokens}")
        G, B = cfg.n_mask_generators, len(items)
        ctx = torch.empty(G, B, cfg.n_context, dtype=torch.long)
        tgt = torch.empty(G, B, cfg.n_target, dtype=torch.long)
        for b, position in enumerate(positions):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, step, position))
            for g, spec in enumerate(cfg.mask_specs):
                target = make_mask(spec, cfg.grid, cfg.n_target, fg[b] if cfg.fg_masks else None, gen)
                ctx[g, b] = (~target).nonzero().squeeze(1)
                tgt[g, b] = target.nonzero().squeeze(1)
        return {"image": images, "fg": fg, "context_idx": ctx, "target_idx": tgt}
