"""Batched device augmentation: the same operations and distributions as the old per-sample MONAI pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    augment_batch,
    bias_field,
    draw_params,
    flip_fg,
    noise_bank,
    noise_window,
)
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


def boxed_volume() -> torch.Tensor:
    """[1, X, Y, Z]: the ramp inside a sub-box, exactly 0 around it (an MRI's background)."""
    out = torch.zeros(1, *SHAPE)
    out[:, 4:19, 6:20, 3:17] = ramp_volume()[:, 4:19, 6:20, 3:17] + 0.05
    return out


@pytest.mark.parametrize("volume", [ramp_volume, boxed_volume])
def test_each_operation_equals_the_monai_transform_with_the_same_parameters(volume):
    from monai.transforms import AdjustContrast

    cfg = AugmentConfig()
    params = draw_params(cfg, seed=1, positions=[0])
    image = volume()
    for col in range(4):  # bias, gamma, noise, shift, one at a time
        p = params | {"aug_on": torch.zeros(1, 4, dtype=torch.bool), "aug_flip": torch.zeros(1, 3, dtype=torch.bool)}
        p["aug_on"][0, col] = True
        for batched in (False, True):
            got = augment_batch(image[None].clone(), p, cfg, batched=batched)[0]
            if col == 0:
                expected = image * bias_field(p["aug_bias"], SHAPE, 3).exp()
            elif col == 1:
                expected = AdjustContrast(gamma=float(p["aug_gamma"][0]))(image)
            elif col == 2:  # the sample's window of the noise bank, scaled by its std
                window, sign = noise_window(int(p["aug_noise_seed"][0]), image)
                expected = image + sign * float(p["aug_noise_std"][0]) * window
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


def _volumes() -> dict[str, torch.Tensor]:
    """Volumes that take each path of the per-sample schedule's bounding boxes."""
    ramp = ramp_volume()
    return {
        "ramp": ramp,  # minimum 0 at one corner only: the box is the whole grid
        "zero background": boxed_volume(),  # bias and gamma on the box only
        "raised background": boxed_volume() + 0.2,  # gamma on the box, bias everywhere
        "negative minimum": ramp - 0.3,
        "all zero": torch.zeros_like(ramp),
        "constant": torch.full_like(ramp, 0.5),
        "one voxel": torch.zeros_like(ramp).index_put_((torch.tensor([0]),) * 4, torch.tensor(0.7)),
    }


@pytest.mark.parametrize("name", list(_volumes()))
def test_the_bounding_box_path_equals_the_whole_volume_arithmetic(name):
    """Every combination of augmentations on every kind of background: the boxed per-sample schedule
    equals the batched one, which runs every operation on every voxel."""
    cfg = AugmentConfig()
    image = _volumes()[name]
    on = torch.tensor([[bool(m >> c & 1) for c in range(4)] for m in range(16)])  # [16, 4] every subset
    params = draw_params(cfg, seed=4, positions=range(16)) | {"aug_on": on}
    images = image[None].repeat(16, 1, 1, 1, 1)
    batched = augment_batch(images.clone(), params, cfg, batched=True)
    one_by_one = augment_batch(images.clone(), params, cfg, batched=False)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("z", [(37, 50), (70, 79), (0, 80)])
def test_boxes_widened_to_whole_row_blocks_keep_the_arithmetic(z):
    """Rows longer than a vector block (32 voxels): the box's Z extent is widened, at the grid's end too."""
    cfg = AugmentConfig()
    image = torch.zeros(1, 6, 7, 80)
    image[:, 1:5, 2:6, slice(*z)] = torch.rand(1, 4, 4, z[1] - z[0], generator=torch.Generator().manual_seed(2))
    on = torch.tensor([[bool(m >> c & 1) for c in range(4)] for m in range(16)])
    params = draw_params(cfg, seed=5, positions=range(16)) | {"aug_on": on}
    images = image[None].repeat(16, 1, 1, 1, 1)
    batched = augment_batch(images.clone(), params, cfg, batched=True)
    torch.testing.assert_close(augment_batch(images.clone(), params, cfg, batched=False), batched, atol=1e-5, rtol=0)


def test_the_cpu_schedule_gives_the_same_samples_on_any_thread_count_and_restores_it():
    """Samples spread over threads (one intra-op thread each) or run in turn: the same bits."""
    cfg = AugmentConfig()
    params = draw_params(cfg, 0, range(6))
    images = torch.stack([ramp_volume(), boxed_volume()] * 3)  # [6, 1, X, Y, Z]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        spread = augment_batch(images.clone(), params, cfg, batched=False)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        in_turn = augment_batch(images.clone(), params, cfg, batched=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(spread, in_turn) and not torch.equal(spread, images)


def test_a_sample_does_not_depend_on_its_batch():
    """Resume and multi-rank runs rely on it: sample k augmented alone equals sample k in a batch."""
    cfg = AugmentConfig()
    params = draw_params(cfg, seed=6, positions=range(100, 108))
    images = torch.stack([ramp_volume(), boxed_volume()] * 4)  # [8, 1, X, Y, Z]
    for batched in (False, True):
        whole = augment_batch(images.clone(), params, cfg, batched=batched)
        for k in (0, 5):
            alone = augment_batch(images[k : k + 1].clone(), {n: v[k : k + 1] for n, v in params.items()}, cfg)
            torch.testing.assert_close(alone, whole[k : k + 1], atol=1e-5, rtol=0)


def test_the_bias_field_of_a_box_is_the_crop_of_the_whole_field():
    coeff = torch.rand(2, 20, generator=torch.Generator().manual_seed(1)) * 0.1
    box = (slice(3, 20), slice(0, 27), slice(5, 6))
    whole = bias_field(coeff, SHAPE, 3)  # [2, X, Y, Z]
    torch.testing.assert_close(bias_field(coeff, SHAPE, 3, box), whole[(slice(None), *box)], atol=1e-6, rtol=0)


def _seeds(n: int) -> list[int]:
    """Noise seeds as draw_params makes them: well-mixed 63-bit integers."""
    from model.masks import derive_seed

    return [derive_seed(0, k, 9) for k in range(n)]


def _noise_of(seeds: list[int], std: float = 0.05) -> torch.Tensor:
    """[S, X, Y, Z] the noise alone: zero volumes with only the noise drawn, at a fixed std."""
    n = len(seeds)
    params = draw_params(AugmentConfig(), seed=0, positions=range(n))
    on = torch.zeros(n, 4, dtype=torch.bool)
    on[:, 2] = True
    params |= {
        "aug_on": on,
        "aug_flip": torch.zeros(n, 3, dtype=torch.bool),
        "aug_noise_std": torch.full((n,), std),
        "aug_noise_seed": torch.tensor(seeds),
    }
    return augment_batch(torch.zeros(n, 1, *SHAPE), params, AugmentConfig())[:, 0]


def test_noise_within_a_sample_is_iid_normal_with_the_drawn_std():
    """The bank window keeps what the old fresh draws gave within a sample: N(0, s^2) marginals and no
    correlation between voxels (along the flat order, where windows are contiguous, and along each axis)."""
    from scipy.stats import kstest, norm

    noise = _noise_of(_seeds(4), std=0.05)  # [4, X, Y, Z]
    n = noise[0].numel()
    for sample in noise:
        assert kstest(sample.flatten().numpy(), norm(scale=0.05).cdf).pvalue > 1e-3
        for lag in (1, 2, 24):
            flat = sample.flatten()
            r = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1]
            assert abs(float(r)) < 5 / np.sqrt(n), lag
        for axis in range(3):
            a, b = sample.narrow(axis, 0, SHAPE[axis] - 1), sample.narrow(axis, 1, SHAPE[axis] - 1)
            assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 5 / np.sqrt(n)


def test_noise_differs_between_samples_and_is_a_function_of_the_seed():
    seeds = _seeds(6)
    noise = _noise_of(seeds).flatten(1)  # [6, N]
    corr = torch.corrcoef(noise)  # [6, 6]
    off_diagonal = corr[~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 / np.sqrt(noise.shape[1])  # overlapping windows, but not aligned
    assert torch.equal(_noise_of(seeds[::-1]).flatten(1), noise.flip(0))  # the seed decides, not the batch
    flipped_sign = seeds[0] ^ 1  # the low bit of the seed is the sign, the rest the window's offset
    torch.testing.assert_close(_noise_of([flipped_sign])[0].flatten(), -noise[0])


def test_the_noise_bank_is_fixed_standard_normal():
    from scipy.stats import kstest

    bank = noise_bank(1000, torch.device("cpu"))
    noise_bank.cache_clear()
    assert torch.equal(noise_bank(1000, torch.device("cpu")), bank)  # the same in every process
    assert kstest(bank.numpy(), "norm").pvalue > 1e-3
    window, sign = noise_window(12345, torch.zeros(10, 10, 10))
    assert window.shape == (10, 10, 10) and sign in (-1.0, 1.0)


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
