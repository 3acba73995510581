"""Batched device augmentation: the same operations and distributions as the old per-sample MONAI pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.augment import AUGMENT_PRESETS, AugmentConfig, augment_batch, bias_field, draw_params, flip_fg
from tests.model import single_thread

SHAPE = (24, 27, 24)  # small volumes: the operations do not care about the grid, the test runs in seconds


def ramp_volume() -> torch.Tensor:
    """[1, X, Y, Z] in [0, 1], asymmetric along every axis so flips show in the centre of mass."""
    axes = [torch.linspace(0.0, 1.0, s) for s in SHAPE]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    return ((0.5 * x + 0.3 * y + 0.2 * z) * (0.6 + 0.4 * torch.cos(6 * x * y))).clamp(0, 1)[None]


def test_bias_field_equals_monais_polynomial_field():
    from monai.transforms import RandBiasField

    reference = RandBiasField(degree=3, coeff_range=(0.0, 0.1), prob=1.0)
    coeff = torch.rand(3, 20, generator=torch.Generator().manual_seed(0)) * 0.1
    fields = bias_field(coeff, SHAPE, 3)  # [3, X, Y, Z]
    for c, field in zip(coeff, fields, strict=True):
        expected = reference._generate_random_field(SHAPE, 3, c.tolist())
        np.testing.assert_allclose(field.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="got 20 bias coefficients per sample, degree 2 has 10"):
        bias_field(coeff, SHAPE, 2)


def test_each_operation_equals_the_monai_transform_with_the_same_parameters():
    from monai.transforms import AdjustContrast

    cfg = AugmentConfig()
    params = draw_params(cfg, seed=1, positions=[0])
    image = ramp_volume()
    for col in range(4):  # bias, gamma, noise, shift, one at a time
        p = params | {"aug_on": torch.zeros(1, 4, dtype=torch.bool), "aug_flip": torch.zeros(1, 3, dtype=torch.bool)}
        p["aug_on"][0, col] = True
        got = augment_batch(image[None].clone(), p, cfg)[0]
        if col == 0:
            expected = image * bias_field(p["aug_bias"], SHAPE, 3).exp()
        elif col == 1:
            expected = AdjustContrast(gamma=float(p["aug_gamma"][0]))(image)
        elif col == 2:
            gen = torch.Generator().manual_seed(int(p["aug_noise_seed"][0]))
            expected = image + torch.empty_like(image).normal_(0.0, float(p["aug_noise_std"][0]), generator=gen)
        else:
            expected = image + float(p["aug_shift"][0])
        torch.testing.assert_close(got, torch.as_tensor(expected), atol=2e-6, rtol=0)


def test_batched_and_per_sample_schedules_agree():
    cfg = AugmentConfig()
    params = draw_params(cfg, seed=3, positions=range(8))
    assert params["aug_on"].any(0).all() and params["aug_flip"].any()  # every augmentation occurs at least once
    images = ramp_volume()[None].repeat(8, 1, 1, 1, 1)
    batched = augment_batch(images.clone(), params, cfg, batched=True)
    one_by_one = augment_batch(images.clone(), params, cfg, batched=False)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    assert not torch.equal(batched, images)


def test_the_none_preset_changes_nothing():
    images = ramp_volume()[None].repeat(2, 1, 1, 1, 1)
    params = draw_params(AUGMENT_PRESETS["none"], seed=0, positions=[0, 1])
    assert torch.equal(augment_batch(images.clone(), params, AUGMENT_PRESETS["none"]), images)


def test_flipping_the_foreground_map_equals_the_map_of_the_flipped_volume():
    from model.masks import foreground_patches

    grid = tuple(s // 3 for s in SHAPE)  # patch 3: 8 x 9 x 8
    image = ramp_volume() * (ramp_volume() > 0.4)
    fg = foreground_patches(image[None], 3)  # [1, N]
    for flip in ([True, False, False], [False, True, True], [True, True, True]):
        dims = [1 + d for d, f in enumerate(flip) if f]
        expected = foreground_patches(image.flip(dims)[None], 3)
        assert torch.equal(flip_fg(fg, torch.tensor([flip]), grid), expected)


def _stats(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample statistics that the augmentations move: mean, variance, extremes, centre of mass."""
    flat = images.flatten(1).double()
    out = {"mean": flat.mean(1), "var": flat.var(1), "min": flat.amin(1), "max": flat.amax(1)}
    out["rough"] = (images[..., 1:] - images[..., :-1]).double().square().flatten(1).mean(1)  # noise energy
    weights = images[:, 0].double().clamp(min=0)
    for axis in range(3):
        coord = torch.arange(SHAPE[axis], dtype=torch.float64).view([-1 if d == axis else 1 for d in range(3)])
        out[f"com{axis}"] = (weights * coord).flatten(1).sum(1) / weights.flatten(1).sum(1)
    return {k: v.numpy() for k, v in out.items()}


def test_distributions_match_the_old_monai_pipeline():
    from monai import transforms as mt

    n = 300
    image = ramp_volume()
    monai = mt.Compose(
        [mt.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)]
        + [
            mt.RandBiasField(prob=0.5, coeff_range=(0.0, 0.1), degree=3),
            mt.RandAdjustContrast(prob=0.5, gamma=(0.6, 1.5)),
            mt.RandGaussianNoise(prob=0.5, mean=0.0, std=0.1),
            mt.RandShiftIntensity(prob=0.5, offsets=0.1),
        ]
    )
    monai.set_random_state(seed=0)
    with single_thread():
        old = torch.stack([torch.as_tensor(np.asarray(monai(image.clone()))) for _ in range(n)])
        cfg = AugmentConfig()
        new = augment_batch(image[None].repeat(n, 1, 1, 1, 1), draw_params(cfg, 0, range(n)), cfg)
    a, b = _stats(old), _stats(new)
    for key in a:  # the average of each statistic agrees within 4 standard errors of the difference
        se = np.sqrt(a[key].var() / n + b[key].var() / n)
        assert abs(a[key].mean() - b[key].mean()) < 4 * se + 1e-9, (key, a[key].mean(), b[key].mean(), se)
        spread = a[key].std(), b[key].std()  # and so does its spread across samples, within 25 %
        assert 0.75 < spread[1] / spread[0] < 1.33, (key, spread)


def test_drawn_parameters_follow_monais_distributions():
    """Every parameter MONAI draws, drawn 2000 times by both: same on/off rates, same value laws (KS test)."""
    from monai import transforms as mt
    from scipy.stats import ks_2samp

    n = 2000
    flips = [mt.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)]
    bias = mt.RandBiasField(prob=0.5, coeff_range=(0.0, 0.1), degree=3)
    gamma = mt.RandAdjustContrast(prob=0.5, gamma=(0.6, 1.5))
    noise = mt.RandGaussianNoise(prob=0.5, mean=0.0, std=0.1)
    shift = mt.RandShiftIntensity(prob=0.5, offsets=0.1)
    tiny, voxels = torch.zeros(1, 4, 4, 4), torch.zeros(1, 32, 32, 32)
    old: dict[str, list] = {k: [] for k in ("flip", "on", "bias", "gamma", "noise_std", "shift")}
    for seed, t in enumerate((*flips, bias, gamma, noise, shift)):
        t.set_random_state(seed=seed)
    for _ in range(n):
        for t in flips:
            t.randomize(None)
        bias.randomize(img_size=tiny.shape[1:])
        gamma.randomize(None)
        noise.randomize(voxels)  # enough voxels to read the drawn std back
        shift.randomize()
        old["flip"].append([t._do_transform for t in flips])
        old["on"].append([t._do_transform for t in (bias, gamma, noise, shift)])
        if bias._do_transform:
            old["bias"].append(bias._coeff)
        if gamma._do_transform:
            old["gamma"].append(gamma.gamma_value)
        if noise._do_transform:
            old["noise_std"].append(float(np.std(noise.noise)))
        if shift._do_transform:
            old["shift"].append(shift._offset)
    new = draw_params(AugmentConfig(), seed=0, positions=range(n))
    on = new["aug_on"].numpy()
    for key, drawn in (("flip", new["aug_flip"].numpy()), ("on", on)):
        rate_old, rate_new = np.mean(old[key], axis=0), drawn.mean(0)
        assert np.all(np.abs(rate_old - rate_new) < 4 * np.sqrt(0.25 / n) * np.sqrt(2)), (key, rate_old, rate_new)
    pairs = {
        "bias": (np.ravel(old["bias"]), new["aug_bias"][on[:, 0]].numpy().ravel()),
        "gamma": (old["gamma"], new["aug_gamma"][on[:, 1]].numpy()),
        "noise_std": (old["noise_std"], new["aug_noise_std"][on[:, 2]].numpy()),
        "shift": (old["shift"], new["aug_shift"][on[:, 3]].numpy()),
    }
    for key, (a, b) in pairs.items():
        assert ks_2samp(a, b).pvalue > 1e-3, key
    assert np.ravel(old["bias"]).size == 20 * len(old["bias"])  # MONAI also draws 20 coefficients
