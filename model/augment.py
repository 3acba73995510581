"""Batched random augmentation on the training device, with the distributions of the old MONAI pipeline.

The per-sample MONAI pipeline (model/data.py, `VolumeDataset(train=True)`) gives ~15-20 samples/s
per CPU core, mostly Gaussian noise and the float64 bias field; the `base` preset needs ~550
samples/s per GPU. So the work is split in two:
    loader worker (CPU): `draw_params` draws every random number of a sample from (seed, stream
        position) -- a few dozen scalars -- and `flip_fg` flips the foreground map on the token grid
        so the masks are drawn for the anatomy the model will see;
    training device: `augment_batch` applies them to the whole batch: flips, bias field, gamma,
        Gaussian noise, intensity shift, each as a handful of batched tensor ops.
Because every parameter (including the seed of each sample's noise) is a pure function of the
sample's stream position, an augmented sample does not depend on the batch it shares, the rank
that holds it or the DataLoader worker that read it: resume stays exact and a 2-rank run sees the
same samples as one process with the whole global batch.

Distributions (`AugmentConfig()` = the old pipeline; tests/model/test_augment.py compares them):
    flip each spatial axis with p=0.5 (MONAI RandFlip per axis);
    bias field with p=0.5: x * exp(sum_{i+j+k<=3} c_ijk P_i(x) P_j(y) P_k(z)), Legendre polynomials
        on [-1, 1] per axis, 20 coefficients ~ U(0, 0.1) (MONAI RandBiasField, degree 3);
    gamma with p=0.5: ((x - min) / (range + 1e-7)) ** g * range + min, g ~ U(0.6, 1.5) (RandAdjustContrast);
    noise with p=0.5: x + N(0, s^2), s ~ U(0, 0.1) per sample (RandGaussianNoise, sample_std=True);
    shift with p=0.5: x + o, o ~ U(-0.1, 0.1) (RandShiftIntensity).
The foreground map is taken after the flips but before the intensity augmentations, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from model.config import AUGMENT_PRESETS, AugmentConfig
from model.masks import derive_seed

__all__ = ["AUGMENT_PRESETS", "AugmentConfig", "augment_batch", "bias_field", "draw_params", "flip_fg", "split_params"]

PARAM_KEYS = ("aug_flip", "aug_on", "aug_bias", "aug_gamma", "aug_noise_std", "aug_noise_seed", "aug_shift")
_BIAS, _GAMMA, _NOISE, _SHIFT = range(4)  # columns of aug_on
_PARAM_STREAM, _NOISE_STREAM = 0xA06, 0x4015E


def draw_params(cfg: AugmentConfig, seed: int, positions: Sequence[int]) -> dict[str, torch.Tensor]:
    """Every random choice of the samples at `positions` of the stream (CPU, a few microseconds each).

    Returns:
        aug_flip [B, 3] bool, aug_on [B, 4] bool (bias, gamma, noise, shift), aug_bias [B, T] float32,
        aug_gamma [B] float32, aug_noise_std [B] float32, aug_noise_seed [B] int64, aug_shift [B] float32.
    """
    n_terms = cfg.n_bias_terms
    probs = torch.tensor([cfg.bias_prob, cfg.gamma_prob, cfg.noise_prob, cfg.shift_prob], dtype=torch.float64)
    rows = []
    for position in positions:
        gen = torch.Generator().manual_seed(derive_seed(seed, position, _PARAM_STREAM))
        rows.append(torch.rand(3 + 4 + n_terms + 3, generator=gen, dtype=torch.float64))
    u = torch.stack(rows) if rows else torch.empty(0, 3 + 4 + n_terms + 3, dtype=torch.float64)  # [B, U]
    lo, hi = cfg.bias_coeff
    g_lo, g_hi = cfg.gamma
    return {
        "aug_flip": u[:, :3] < cfg.flip_prob,
        "aug_on": u[:, 3:7] < probs,
        "aug_bias": (lo + (hi - lo) * u[:, 7 : 7 + n_terms]).float(),
        "aug_gamma": (g_lo + (g_hi - g_lo) * u[:, 7 + n_terms]).float(),
        "aug_noise_std": (cfg.noise_std * u[:, 8 + n_terms]).float(),
        "aug_noise_seed": torch.tensor([derive_seed(seed, p, _NOISE_STREAM) for p in positions], dtype=torch.int64),
        "aug_shift": (cfg.shift * (2.0 * u[:, 9 + n_terms] - 1.0)).float(),
    }


def flip_fg(fg: torch.Tensor, flip: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Foreground maps [B, N] of the flipped volumes: the voxel flip of an axis is the patch-grid flip.

    Exact because every axis of the model grid is a whole number of patches.
    """
    out = fg.clone()
    for b, axes in enumerate(flip.tolist()):
        dims = [d for d, on in enumerate(axes) if on]
        if dims:
            out[b] = fg[b].view(grid).flip(dims).reshape(-1)
    return out


def augment_batch(
    images: torch.Tensor, params: dict[str, torch.Tensor], cfg: AugmentConfig, *, batched: bool | None = None
) -> torch.Tensor:
    """Apply the drawn augmentations to a batch on its device: flips, bias field, gamma, noise, shift.

    Two schedules of the same arithmetic (a test checks they agree): `batched` runs each augmentation
    as whole-batch tensor ops, identity parameters for the samples that skip it (few, large kernels:
    what a GPU wants); otherwise each sample is augmented in place on its own view (no gather/scatter
    copies and no work for skipped samples: what a memory-bound CPU wants). Default: batched on CUDA.

    Args:
        images: [B, C, X, Y, Z] float32 in [0, 1], on the training device (modified in place and returned).
        params: `draw_params` output, on the CPU (control flow reads it without a device sync).
        cfg: only `bias_degree` is read here; the probabilities were applied when drawing.
        batched: force one schedule (tests, benchmarks).

    Returns:
        `images`, augmented.
    """
    if batched is None:
        batched = images.device.type == "cuda"
    on = params["aug_on"]
    if batched:
        _flip_batched(images, params["aug_flip"])
        _bias_batched(images, params, cfg.bias_degree)
        _gamma_batched(images, params)
    else:
        for b in range(images.shape[0]):
            _augment_one(images[b], {k: v[b] for k, v in params.items()}, cfg.bias_degree)
    for b in on[:, _NOISE].nonzero().squeeze(1).tolist():  # per-sample seeds: rank/batch independent
        images[b] += _noise(images[b], params["aug_noise_seed"][b], params["aug_noise_std"][b])
    if batched and bool(on[:, _SHIFT].any()):
        shift = torch.where(on[:, _SHIFT], params["aug_shift"], torch.zeros_like(params["aug_shift"]))  # [B]
        images += shift.to(images.device, non_blocking=True).view(-1, *([1] * (images.dim() - 1)))
    return images


def _augment_one(x: torch.Tensor, p: dict[str, torch.Tensor], degree: int) -> None:
    """One sample [C, X, Y, Z] in place (noise aside): flip, bias, gamma, shift."""
    dims = [1 + d for d, flip in enumerate(p["aug_flip"].tolist()) if flip]
    bias, gamma, _, shift = p["aug_on"].tolist()
    if bias:
        field = bias_field(p["aug_bias"][None].to(x.device), x.shape[1:], degree).exp_()  # [1, X, Y, Z]
        torch.mul(x.flip(dims) if dims else x, field, out=x)  # the flip's copy doubles as the product's input
    elif dims:
        x.copy_(x.flip(dims))
    if gamma:
        low, high = (float(v) for v in torch.aminmax(x))
        span = high - low
        scale = 1.0 / (span + 1e-7)
        torch.add(torch.tensor(-low * scale, device=x.device), x, alpha=scale, out=x)  # (x - min) / (range + eps)
        x.pow_(float(p["aug_gamma"]))
        torch.add(torch.tensor(low, device=x.device), x, alpha=span, out=x)  # * range + min
    if shift:
        x.add_(float(p["aug_shift"]))


def _noise(like: torch.Tensor, seed: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=like.device).manual_seed(int(seed))
    return torch.empty_like(like).normal_(0.0, float(std), generator=gen)


def _flip_batched(images: torch.Tensor, flip: torch.Tensor) -> None:
    """Flip each sample along its drawn axes: one gather-flip-scatter per distinct flip pattern (<= 7)."""
    patterns = flip.long() @ torch.tensor([1, 2, 4])  # [B] pattern id 0..7
    for pattern in sorted(set(patterns.tolist()) - {0}):
        idx = (patterns == pattern).nonzero().squeeze(1).to(images.device)
        dims = [2 + d for d in range(3) if pattern >> d & 1]
        images[idx] = images[idx].flip(dims)


def _bias_batched(images: torch.Tensor, params: dict[str, torch.Tensor], degree: int) -> None:
    """x * exp(field) for the whole batch; skipped samples get a zero field (exp(0) = 1 exactly)."""
    on = params["aug_on"][:, _BIAS]
    if not bool(on.any()):
        return
    coeff = torch.where(on[:, None], params["aug_bias"], torch.zeros_like(params["aug_bias"]))  # [B, T]
    field = bias_field(coeff.to(images.device, non_blocking=True), images.shape[2:], degree)  # [B, X, Y, Z]
    images.mul_(field.exp_().unsqueeze(1))


def _gamma_batched(images: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """The gamma curve for the whole batch; skipped samples are kept bit for bit by a final select."""
    on = params["aug_on"][:, _GAMMA]
    if not bool(on.any()):
        return
    shape = (-1, *([1] * (images.dim() - 1)))
    low, high = torch.aminmax(images.flatten(1), dim=1)  # [B] each
    low, span = low.view(shape), (high - low).view(shape)
    gamma = params["aug_gamma"].to(images.device, non_blocking=True).view(shape)
    curved = ((images - low) / (span + 1e-7)).pow_(gamma).mul_(span).add_(low)
    keep = on.to(images.device, non_blocking=True).view(shape)
    torch.where(keep, curved, images, out=images)


@functools.lru_cache(maxsize=32)
def legendre_basis(n: int, degree: int, device: torch.device | None = None) -> torch.Tensor:
    """P_0..P_degree on `n` evenly spaced points of [-1, 1]: [degree + 1, n] float32 (Bonnet's recursion).

    Cached: the grid never changes during a run, and rebuilding it cost more than the field itself.
    """
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64, device=device)
    basis = [torch.ones_like(x), x]
    for k in range(1, degree):
        basis.append(((2 * k + 1) * x * basis[k] - k * basis[k - 1]) / (k + 1))
    return torch.stack(basis[: degree + 1]).float()


def bias_terms(degree: int) -> list[tuple[int, int, int]]:
    """(i, j, k) of each coefficient, in MONAI's order: i outer, k inner, total degree <= `degree`."""
    return [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]


@functools.lru_cache(maxsize=8)
def _terms_tensor(degree: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(bias_terms(degree), device=device)


def bias_field(coeff: torch.Tensor, shape: Sequence[int], degree: int) -> torch.Tensor:
    """Log bias fields sum_t c_t P_i(x) P_j(y) P_k(z) for a batch of coefficient vectors.

    Separable: contracting one axis at a time costs ~4 multiply-adds per voxel instead of the 20
    polynomial terms x 3 factors of evaluating every term everywhere (MONAI's leggrid3d, in float64).

    Args:
        coeff: [S, T] coefficients in `bias_terms(degree)` order.
        shape: spatial shape (X, Y, Z).
        degree: polynomial degree.

    Returns:
        [S, X, Y, Z] float32 log-field (exponentiate to multiply).
    """
    d1 = degree + 1
    terms = _terms_tensor(degree, coeff.device)  # [T, 3]
    if coeff.shape[1] != len(terms):
        raise ValueError(f"got {coeff.shape[1]} bias coefficients per sample, degree {degree} has {len(terms)}")
    mat = torch.zeros(coeff.shape[0], d1, d1, d1, dtype=torch.float32, device=coeff.device)  # [S, i, j, k]
    mat[:, terms[:, 0], terms[:, 1], terms[:, 2]] = coeff.float()
    px, py, pz = (legendre_basis(n, degree, coeff.device) for n in shape)  # [d1, X], [d1, Y], [d1, Z]
    a = torch.einsum("sijk,ix->sxjk", mat, px)  # [S, X, j, k]
    b = torch.einsum("sxjk,jy->sxyk", a, py)  # [S, X, Y, k]
    return b @ pz  # [S, X, Y, Z]


def split_params(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model inputs, augmentation parameters) of a collated batch."""
    params = {k: batch[k] for k in PARAM_KEYS if k in batch}
    return {k: v for k, v in batch.items() if k not in params}, params
