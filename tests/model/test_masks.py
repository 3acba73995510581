"""Mask invariants (exact counts, disjoint, deterministic), foreground priority, and the foreground map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from model.config import MULTISCALE_MASKS, VJEPA2_MASKS, MaskSpec
from model.masks import MaskCollator, foreground_patches, grow, make_mask, sample_blocks
from tests.model import TINY

GRID = TINY.grid
N = TINY.n_tokens


def random_fg(seed: int, p: float) -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(seed)) < p


def layers_from(region: np.ndarray) -> np.ndarray:
    """Independent BFS: the 6-connected layer (1, 2, ...) of every cell outside `region` (all 1 if empty)."""
    layer = np.zeros(region.shape, dtype=int)
    if not region.any():
        layer[:] = 1
        return layer
    cross = ndimage.generate_binary_structure(3, 1)
    reached, d = region.copy(), 0
    while not reached.all():
        d += 1
        nxt = ndimage.binary_dilation(reached, structure=cross)
        layer[nxt & ~reached] = d
        reached = nxt
    return layer


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    step=st.integers(0, 10_000),
    multiscale=st.booleans(),
    fg_masks=st.booleans(),
    fg_fraction=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
)
def test_collator_indices_are_exact_disjoint_and_complete(seed, step, multiscale, fg_masks, fg_fraction):
    cfg = dataclasses.replace(TINY, multiscale_masks=multiscale, fg_masks=fg_masks)
    items = [{"image": torch.zeros(1, 1, 1, 1), "fg": random_fg(seed + b, fg_fraction)} for b in range(2)]
    out = MaskCollator(cfg, seed=seed)(items, step)
    G = 3 if multiscale else 2
    assert out["context_idx"].shape == (G, 2, 144) and out["target_idx"].shape == (G, 2, 432)
    both = torch.cat((out["context_idx"], out["target_idx"]), dim=-1)  # [G, B, 576]
    assert torch.equal(both.sort(dim=-1).values, torch.arange(N).expand(G, 2, N))  # disjoint and complete
    assert (out["context_idx"].diff(dim=-1) > 0).all() and (out["target_idx"].diff(dim=-1) > 0).all()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    spec_index=st.integers(0, 4),
    fg_fraction=st.floats(0.0, 1.0),
    take_fraction=st.floats(0.0, 1.0),
    empty_region=st.booleans(),
)
def test_grow_takes_cells_layer_by_layer_preferred_first(seed, spec_index, fg_fraction, take_fraction, empty_region):
    """The taken cells are a prefix of the order (layer, not preferred): fg priority within coherent growth."""
    gen = torch.Generator().manual_seed(seed)
    spec = (*MULTISCALE_MASKS, *VJEPA2_MASKS)[spec_index]
    region = torch.zeros(GRID, dtype=torch.bool) if empty_region else sample_blocks(spec, GRID, gen)
    prefer = random_fg(seed, fg_fraction).view(GRID)
    outside = int((~region).sum())
    n = int(take_fraction * outside)
    taken = grow(region, n, prefer, gen)
    assert int(taken.sum()) == n and not (taken & region).any()
    layer = layers_from(region.numpy())
    key = layer * 2 + (~prefer.numpy()).astype(int)  # lexicographic (layer, not preferred)
    left = ~region.numpy() & ~taken.numpy()
    if n and left.any():
        assert key[taken.numpy()].max() <= key[left].min()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spec_index=st.integers(0, 4), fg_fraction=st.floats(0.0, 1.0))
def test_adjustment_only_grows_or_only_shrinks_the_raw_blocks(seed, spec_index, fg_fraction):
    spec = (*MULTISCALE_MASKS, *VJEPA2_MASKS)[spec_index]
    raw = sample_blocks(spec, GRID, torch.Generator().manual_seed(seed)).flatten()
    fg = random_fg(seed, fg_fraction)
    final = make_mask(spec, GRID, 432, fg, torch.Generator().manual_seed(seed))  # same first draws
    assert int(final.sum()) == 432
    if raw.sum() <= 432:
        assert (final | ~raw).all()  # raw subset of final
        grown_fg = final & ~raw & fg
        if grown_fg.any():  # growth took tissue at layer L only after all background up to layer L
            layer = torch.from_numpy(layers_from(raw.view(GRID).numpy()).flatten())
            assert not (~final & ~fg & (layer <= layer[grown_fg].max())).any()
    else:
        assert (raw | ~final).all()  # final subset of raw


def test_foreground_aware_shrink_returns_tissue_to_the_context():
    """With every cell masked, shrinking to 432 hands back tissue first: all 144 context cells are fg."""
    fg = torch.zeros(N, dtype=torch.bool)
    fg[:200] = True
    # One 8x9 block (area 72, aspect 8/9) through the whole depth: every one of the 576 cells.
    everything = MaskSpec(n_blocks=1, spatial_scale=(1.0, 1.0), depth_scale=(1.0, 1.0), aspect_ratio=(8 / 9, 8 / 9))
    assert sample_blocks(everything, GRID, torch.Generator()).all()
    target = make_mask(everything, GRID, 432, fg, torch.Generator().manual_seed(0))
    assert fg[~target].all()
    blind = make_mask(everything, GRID, 432, None, torch.Generator().manual_seed(0))
    assert not fg[~blind].all()


def test_masks_are_a_pure_function_of_seed_and_step():
    items = [{"image": torch.zeros(1, 1, 1, 1), "fg": random_fg(b, 0.5)} for b in range(2)]
    a = MaskCollator(TINY, seed=1)(items, 5)
    b = MaskCollator(TINY, seed=1)(items, 5)
    c = MaskCollator(TINY, seed=1)(items, 6)
    d = MaskCollator(TINY, seed=0)(items, 6)
    assert torch.equal(a["target_idx"], b["target_idx"])
    assert not torch.equal(a["target_idx"], c["target_idx"]) and not torch.equal(c["target_idx"], d["target_idx"])


def test_collator_computes_foreground_when_items_have_none():
    image = torch.zeros(1, *TINY.img_size)
    image[:, :12, :12, :12] = 1.0  # exactly token 0
    out = MaskCollator(TINY)([{"image": image}], 0)
    assert out["fg"].shape == (1, N) and out["fg"][0].nonzero().flatten().tolist() == [0]
    assert out["image"].shape == (1, 1, *TINY.img_size)


def test_foreground_needs_ten_percent_tissue_voxels():
    vol = torch.zeros(1, 1, *TINY.img_size)
    vol[..., 48:, :, :] = 1.0  # half the volume is tissue, so p98 = 1 and the threshold is ~0.1
    vol[..., 0:12, 0:12, 0:12] = 1.0  # patch (0,0,0): 100 % tissue
    vol[..., 12:14, 0:12, 0:12] = 1.0  # patch (1,0,0): 2 of 12 slices = 16.7 % -> foreground
    vol[..., 0:12, 12:13, 0:12] = 1.0  # patch (0,1,0): 1 of 12 slices = 8.3 % -> background
    vol += 0.01 * torch.rand_like(vol)  # faint noise stays below p2 + 0.1 * (p98 - p2)
    fg = foreground_patches(vol, 12).view(GRID)
    assert fg[4:].all()
    assert fg[0, 0, 0] and fg[1, 0, 0] and not fg[0, 1, 0]
    assert int(fg[:4].sum()) == 2


def test_collator_needs_one_position_per_item():
    items = [{"image": torch.zeros(1, 1, 1, 1), "fg": torch.ones(N, dtype=torch.bool)} for _ in range(2)]
    with pytest.raises(ValueError, match="got 2 items but 1 positions"):
        MaskCollator(TINY)(items, 0, positions=[0])
