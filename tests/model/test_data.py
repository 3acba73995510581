"""VolumeDataset: grid fitting, scaling, deterministic augmentation, foreground map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import VolumeDataset, blob_volume
from tests.model import blob_volumes


def test_eval_items_are_scaled_to_unit_range_on_the_model_grid():
    item = VolumeDataset(blob_volumes(1), train=False, seed=0)[0]
    image, fg = item["image"], item["fg"]
    assert image.shape == (1, 96, 108, 96) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9
    assert fg.shape == (576,) and fg.dtype == torch.bool and 0.1 < fg.float().mean() < 0.9


def test_other_shapes_are_centre_cropped_or_padded():
    vol = blob_volume(0, shape=(100, 100, 90))
    item = VolumeDataset([vol], train=False, seed=0)[0]
    assert item["image"].shape == (1, 96, 108, 96)
    assert VolumeDataset([vol[None]], train=False, seed=0)[0]["image"].shape == (1, 96, 108, 96)


def test_augmentation_is_a_pure_function_of_index_and_draw():
    ds = VolumeDataset(blob_volumes(2), train=True, seed=3)
    a, b = ds.sample(1, 7), ds.sample(1, 7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["fg"], b["fg"])
    draws = [ds.sample(1, d)["image"] for d in range(4)]
    assert len({d.sum().item() for d in draws}) == 4  # different draws, different augmentations
    plain = VolumeDataset(blob_volumes(2), train=False, seed=3)
    assert torch.equal(plain.sample(1, 0)["image"], plain.sample(1, 5)["image"])  # eval ignores the draw


def test_non_finite_voxels_become_zero():
    vol = blob_volume(0)
    vol[0, 0, :10] = np.nan
    assert torch.isfinite(VolumeDataset([vol], train=True, seed=0).sample(0, 1)["image"]).all()


def test_bad_volume_shape_names_the_problem():
    with pytest.raises(ValueError, match="volume 0 has shape \\(96, 108\\)"):
        VolumeDataset([np.zeros((96, 108))], train=False, seed=0)[0]


def test_cached_percentile_scaling_equals_monais_percentile_transform():
    from monai import transforms as mt

    vol = blob_volume(1, shape=(100, 110, 90)) * 3.0 + 0.5
    ds = VolumeDataset([vol], train=True, seed=0)
    reference = mt.Compose(
        [
            mt.ResizeWithPadOrCrop(spatial_size=(96, 108, 96)),
            mt.ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        ]
    )(vol[None])
    torch.testing.assert_close(ds.prepare(0), reference.as_tensor(), atol=1e-6, rtol=0)
    assert list(ds._ranges) == [0]  # computed once, reused by every later draw
    torch.testing.assert_close(ds.prepare(0), reference.as_tensor(), atol=1e-6, rtol=0)
