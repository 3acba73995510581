"""Batched random augmentation on the training device, with the distributions of the old MONAI pipeline.

The per-sample MONAI pipeline (model/data.py, `VolumeDataset(train=True)`) gives ~20-50 samples/s
per CPU core, mostly Gaussian noise and the float64 bias field; the `base` preset needs ~550
samples/s per GPU. So the work is split in two:
    loader worker (CPU): `draw_params` draws every random number of a sample from (seed, stream
        position) -- a few dozen scalars -- and `flip_fg` flips the foreground map on the token grid
        so the masks are drawn for the anatomy the model will see;
    training device: `augment_batch` applies them: flips, bias field, gamma, Gaussian noise,
        intensity shift, as batched tensor ops on a GPU or a few in-place passes per sample on a CPU
        (bench/augment.py compares the two on the same CPU threads; the goal is >= 10x).
Because every parameter (including the seed of each sample's noise) is a pure function of the
sample's stream position, an augmented sample does not depend on the batch it shares, the rank
that holds it or the DataLoader worker that read it: resume stays exact and a 2-rank run sees the
same samples as one process with the whole global batch.

Distributions (`AugmentConfig()` = the old pipeline; tests/model/test_augment.py compares them):
    flip each spatial axis with p=0.5 (MONAI RandFlip per axis);
    bias field with p=0.5: x * exp(sum_{i+j+k<=3} c_ijk P_i(x) P_j(y) P_k(z)), Legendre polynomials
        on [-1, 1] per axis, 20 coefficients ~ U(0, 0.1) (MONAI RandBiasField, degree 3);
    gamma with p=0.5: ((x - min) / (range + 1e-7)) ** g * range + min, g ~ U(0.6, 1.5) (RandAdjustContrast);
    noise with p=0.5: x + s * n, s ~ U(0, 0.1) per sample (RandGaussianNoise, sample_std=True), n i.i.d.
        N(0, 1) within the sample: a window of a fixed bank of normals (`noise_window`), not fresh
        draws -- the one deliberate deviation (docs/model_deviations.md);
    shift with p=0.5: x + o, o ~ U(-0.1, 0.1) (RandShiftIntensity).
The foreground map is taken after the flips but before the intensity augmentations, as before.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from model.config import AUGMENT_PRESETS, AugmentConfig
from model.masks import derive_seed
from model.threads import one_torch_thread

__all__ = [
    "AUGMENT_PRESETS",
    "AugmentConfig",
    "augment_batch",
    "bias_field",
    "draw_params",
    "flip_fg",
    "noise_bank",
    "noise_window",
    "split_params",
]

PARAM_KEYS = ("aug_flip", "aug_on", "aug_bias", "aug_gamma", "aug_noise_std", "aug_noise_seed", "aug_shift")
_BIAS, _GAMMA, _NOISE, _SHIFT = range(4)  # columns of aug_on
_PARAM_STREAM, _NOISE_STREAM = 0xA06, 0x4015E
_BANK_SEED, _BANK_VOLUMES = 0xB4A4C, 4  # the noise bank: its seed and its length in volumes
_LOG2_E = 1.0 / math.log(2.0)
_ROW_BLOCK = 32  # voxels per vectorised block of a row in torch's CPU kernels (AVX-512: 2 x 16 floats)


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
    what a GPU wants); otherwise each sample is augmented in place on its own view, in as few passes
    over its voxels as the drawn augmentations allow and no work for skipped samples (what a CPU
    wants). Default: batched on CUDA. Noise is added per sample in both (its window differs per sample).

    The per-sample schedule spreads the samples over torch's thread count, each sample on one
    thread with one intra-op thread. Splitting each op instead made each of its ~10 full-volume ops
    per sample an OpenMP region ending in a barrier; on a shared machine a barrier waits for the
    other thread's next time slice, and on this project's 2-core box under load 2 intra-op threads
    gave 10 samples/s where 1 gave 190 (bench/augment.py). Per sample there is nothing to wait for
    but the batch's end, and a sample's result does not depend on the thread that computed it.

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
    if not batched:
        samples, threads = _Sample.of_batch(params), torch.get_num_threads()

        def one(b: int) -> None:
            _augment_one(images[b], samples[b], cfg.bias_degree)

        with one_torch_thread():  # see the docstring; threads that start now start with one as well
            if threads > 1 and len(samples) > 1:
                list(_sample_pool(os.getpid(), threads).map(one, range(len(samples))))
            else:
                for b in range(len(samples)):
                    one(b)
        return images
    on = params["aug_on"]
    _flip_batched(images, params["aug_flip"])
    _bias_batched(images, params, cfg.bias_degree)
    _gamma_batched(images, params)
    for b in on[:, _NOISE].nonzero().squeeze(1).tolist():
        window, sign = noise_window(int(params["aug_noise_seed"][b]), images[b])
        images[b].add_(window, alpha=sign * float(params["aug_noise_std"][b]))
    if bool(on[:, _SHIFT].any()):
        shift = torch.where(on[:, _SHIFT], params["aug_shift"], torch.zeros_like(params["aug_shift"]))  # [B]
        images += shift.to(images.device, non_blocking=True).view(-1, *([1] * (images.dim() - 1)))
    return images


@functools.lru_cache(maxsize=4)
def _sample_pool(pid: int, workers: int) -> ThreadPoolExecutor:
    """Threads for the per-sample schedule; keyed by process id, since a forked child has none of its parent's."""
    return ThreadPoolExecutor(workers, thread_name_prefix="augment")


class _Sample(NamedTuple):
    """One sample's draws as Python values: the per-sample schedule reads them without a tensor op each."""

    flip: list[bool]  # [3]
    on: list[bool]  # bias, gamma, noise, shift
    bias: torch.Tensor  # [1, T]
    gamma: float
    noise_std: float
    noise_seed: int
    shift: float

    @staticmethod
    def of_batch(params: dict[str, torch.Tensor]) -> list[_Sample]:
        columns = [
            params[k].tolist()
            for k in ("aug_flip", "aug_on", "aug_gamma", "aug_noise_std", "aug_noise_seed", "aug_shift")
        ]
        coeff = params["aug_bias"]  # [B, T]
        return [
            _Sample(f, o, coeff[b : b + 1], g, s, n, t)
            for b, (f, o, g, s, n, t) in enumerate(zip(*columns, strict=True))
        ]


def _augment_one(x: torch.Tensor, p: _Sample, degree: int) -> None:
    """One sample [C, X, Y, Z] in place: flip, bias, gamma, noise, shift, in as few voxel passes as possible.

    Economies that leave the arithmetic unchanged: a drawn flip makes a copy (`work`) that the last
    pass (noise or shift, when drawn) writes back into `x`; the bias field and the gamma curve run
    only on the bounding box of the voxels they can change (a voxel at 0 stays 0 under any bias
    field and a voxel at the minimum stays the minimum under any gamma; a masked or padded volume
    is mostly background at exactly 0); and bias then gamma run together in the log domain.
    """
    bias, gamma, noise, shift = p.on
    dims = [1 + d for d, flip in enumerate(p.flip) if flip]
    work = x.flip(dims) if dims else x  # [C, X, Y, Z]
    if bias or gamma:
        low, high = (float(v) for v in torch.aminmax(work))
        box = _box(work, low, high)  # every voxel outside `box` equals `low` (None: every voxel does)
        if bias and low != 0.0:  # a bias field moves every voxel but the zeros
            box = (slice(None),) * 4
        if box is not None:
            region = work[box]  # [C, x, y, z]
            log2_field = None  # [1, x, y, z]; exp(f) = 2^(f log2 e), and exp2 is ~3x cheaper than exp
            if bias:
                log2_field = bias_field(p.bias.to(x.device) * _LOG2_E, x.shape[1:], degree, box[1:])
            if log2_field is not None and gamma and low == 0.0:
                _biased_gamma_inplace(region, log2_field, p.gamma)
            else:
                if log2_field is not None:
                    region.mul_(log2_field.exp2_())
                if log2_field is not None and gamma:  # the curve normalises by the biased extremes
                    low, high = (float(v) for v in torch.aminmax(region))  # (the box is the whole grid)
                if gamma and high > low:
                    _gamma_inplace(region, low, high, p.gamma)
    if noise:
        window, sign = noise_window(p.noise_seed, x)
        torch.add(work, window, alpha=sign * p.noise_std, out=x)
        work = x
    if shift:
        torch.add(work, p.shift, out=x)
    elif work is not x:
        x.copy_(work)


def _gamma_inplace(x: torch.Tensor, low: float, high: float, gamma: float) -> None:
    """x = ((x - low) / (span + 1e-7)) ** gamma * span + low, computed as 2^(gamma log2(x - low) + c) + low.

    One log2 and one exp2 instead of pow (~5x slower per voxel on CPU), the normalisation and the
    rescale folded into the constant c. x - low is clamped to `_gamma_floor(gamma)` first: log2 of
    an exact 0 takes a scalar slow path ~15x slower than the vector one.
    """
    span = high - low
    const = math.log2(span) - gamma * math.log2(span + 1e-7)
    if low:
        x.sub_(low)
    x.clamp_min_(_gamma_floor(gamma)).log2_()
    torch.add(torch.tensor(const, device=x.device), x, alpha=gamma, out=x).exp2_()
    if low:
        x.add_(low)


def _biased_gamma_inplace(x: torch.Tensor, log2_field: torch.Tensor, gamma: float) -> None:
    """x = the gamma curve of x * 2^log2_field, for x >= 0 with a 0 among its voxels or just outside.

    Bias then gamma in the log domain: log2(x 2^f) = log2(x) + f, so the field is added, never
    exponentiated or multiplied (a third fewer passes than `mul_` + `_gamma_inplace`). The minimum
    stays 0, so the curve is 2^(g log2(x 2^f) + c) with c from the maximum, 2^max(log2(x) + f).
    """
    x.clamp_min_(_gamma_floor(gamma)).log2_().add_(log2_field)  # log2 of the biased voxels
    top = float(x.amax())  # log2 of the biased maximum (> 0 voxels exist: the box is not empty)
    const = top - gamma * math.log2(2.0**top + 1e-7)
    torch.add(torch.tensor(const, device=x.device), x, alpha=gamma, out=x).exp2_()


def _gamma_floor(gamma: float | torch.Tensor) -> float | torch.Tensor:
    """Smallest x - min the gamma curve sees: 2^max(-126, -100/g).

    A normal float (log2 of a subnormal is ~40x slower), and small enough that the curve's value
    there, ~2^-100 times span^(1-g), is a normal float too (exp2 is ~2.3x slower when its result
    is subnormal): both measured on this CPU. The clamp moves the minimum's voxels by that value,
    < 1e-22 for g >= 0.6.
    """
    if isinstance(gamma, torch.Tensor):
        return torch.exp2(torch.clamp(-100.0 / gamma, min=-126.0))
    return 2.0 ** max(-126.0, -100.0 / gamma)


def _box(x: torch.Tensor, low: float, high: float) -> tuple[slice, ...] | None:
    """Index of the bounding box of the voxels of x [C, X, Y, Z] above its minimum `low`; None if none are.

    A volume with no background at its corners is its own box (no pass). Otherwise two
    max-reductions of x seen as [C*X, Y*Z], across rows and along them (~0.1 ms per 96x108x96
    volume each; torch's per-axis reductions over the other layouts cost 10-30x more on CPU).
    The Z extent (the contiguous rows) is widened to a multiple of _ROW_BLOCK voxels: torch's CPU
    kernels run a row in blocks of two 16-float vectors and the remainder one voxel at a time,
    which made exp2 over 58-voxel rows 3.5x slower per voxel than over 64-voxel rows.
    """
    if not high > low:
        return None
    corners = x[(slice(None), *(slice(None, None, max(1, n - 1)) for n in x.shape[1:]))]  # [C, 2, 2, 2]
    if float(corners.amin()) > low:
        return (slice(None),) * 4
    planes = x.reshape(x.shape[0] * x.shape[1], -1)  # [C*X, Y*Z]
    yz = planes.amax(0).view(x.shape[2:])  # [Y, Z]
    box = [slice(None)]
    for line in (planes.amax(1).view(x.shape[:2]).amax(0), yz.amax(1), yz.amax(0)):  # [X], [Y], [Z]
        above = [i for i, v in enumerate(line.tolist()) if v > low]
        box.append(slice(above[0], above[-1] + 1))
    z0, z1, depth = box[3].start, box[3].stop, x.shape[3]
    width = min(depth, -(-(z1 - z0) // _ROW_BLOCK) * _ROW_BLOCK)  # whole blocks, still inside the grid
    z0 = min(z0, depth - width)
    box[3] = slice(z0, z0 + width)
    return tuple(box)


@functools.lru_cache(maxsize=4)
def noise_bank(numel: int, device: torch.device) -> torch.Tensor:
    """[_BANK_VOLUMES * numel] standard normals from a fixed seed, drawn on the CPU (the same on every device).

    Drawing a fresh N(0, 1) per voxel cost ~4-10 ms per 96x108x96 volume on one CPU core, more than
    every other augmentation together; a sample's noise is instead a window of this bank
    (`noise_window`), drawn once per process and device (~20 ms, 15 MiB for that grid).
    """
    gen = torch.Generator().manual_seed(_BANK_SEED)
    return torch.randn(_BANK_VOLUMES * numel, generator=gen).to(device)


def noise_window(seed: int, like: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(window shaped like `like`, sign): the standard normals of the sample with noise seed `seed`.

    A contiguous window of the bank at an offset set by the seed's high bits, negated when its low
    bit is set: within a sample the voxels stay i.i.d. N(0, 1); across samples windows overlap
    (docs/model_deviations.md). A pure function of the seed and the volume size, so of the stream position.
    """
    numel = like.numel()
    bank = noise_bank(numel, like.device)  # [_BANK_VOLUMES * numel]
    start = (seed >> 1) % (bank.numel() - numel + 1)
    return bank[start : start + numel].view(like.shape), -1.0 if seed & 1 else 1.0


def _flip_batched(images: torch.Tensor, flip: torch.Tensor) -> None:
    """Flip each sample along its drawn axes: one gather-flip-scatter per distinct flip pattern (<= 7)."""
    patterns = flip.long() @ torch.tensor([1, 2, 4])  # [B] pattern id 0..7
    for pattern in sorted(set(patterns.tolist()) - {0}):
        idx = (patterns == pattern).nonzero().squeeze(1).to(images.device)
        dims = [2 + d for d in range(3) if pattern >> d & 1]
        images[idx] = images[idx].flip(dims)


def _bias_batched(images: torch.Tensor, params: dict[str, torch.Tensor], degree: int) -> None:
    """x * exp(field) for the whole batch; skipped samples get a zero field (2^0 = 1 exactly)."""
    on = params["aug_on"][:, _BIAS]
    if not bool(on.any()):
        return
    coeff = torch.where(on[:, None], params["aug_bias"] * _LOG2_E, torch.zeros_like(params["aug_bias"]))  # [B, T]
    field = bias_field(coeff.to(images.device, non_blocking=True), images.shape[2:], degree)  # [B, X, Y, Z]
    images.mul_(field.exp2_().unsqueeze(1))


def _gamma_batched(images: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """`_gamma_inplace` for the whole batch; skipped samples are kept bit for bit by a final select."""
    on = params["aug_on"][:, _GAMMA]
    if not bool(on.any()):
        return
    shape = (-1, *([1] * (images.dim() - 1)))
    low, high = torch.aminmax(images.flatten(1), dim=1)  # [B] each
    low, span = low.view(shape), (high - low).view(shape).double()
    gamma = params["aug_gamma"].to(images.device, non_blocking=True).view(shape)
    const = (span.log2() - gamma * (span + 1e-7).log2()).float()  # -inf for a constant volume: 2^-inf + low = low
    curved = (images - low).clamp_min_(_gamma_floor(gamma)).log2_().mul_(gamma).add_(const).exp2_().add_(low)
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
def _term_scatter(degree: int, device: torch.device) -> torch.Tensor:
    """[T, (d+1)^3] one-hot: coefficient vector @ this = the dense [i, j, k] coefficient cube, in one op."""
    d1 = degree + 1
    terms = bias_terms(degree)
    out = torch.zeros(len(terms), d1**3, device=device)
    out[range(len(terms)), [(i * d1 + j) * d1 + k for i, j, k in terms]] = 1.0
    return out


def bias_field(
    coeff: torch.Tensor, shape: Sequence[int], degree: int, box: Sequence[slice] | None = None
) -> torch.Tensor:
    """Log bias fields sum_t c_t P_i(x) P_j(y) P_k(z) for a batch of coefficient vectors.

    Separable: contracting one axis at a time costs ~4 multiply-adds per voxel instead of the 20
    polynomial terms x 3 factors of evaluating every term everywhere (MONAI's leggrid3d, in float64).
    Four matmuls: einsum's set-up cost more than the arithmetic on the per-sample CPU path.

    Args:
        coeff: [S, T] coefficients in `bias_terms(degree)` order.
        shape: spatial shape (X, Y, Z).
        degree: polynomial degree.
        box: only this sub-box of the grid (one slice per axis, step 1), e.g. where the volume is not 0.

    Returns:
        [S, X, Y, Z] float32 log-field (exponentiate to multiply), or [S, x, y, z] of the box.
    """
    d1 = degree + 1
    scatter = _term_scatter(degree, coeff.device)  # [T, d1^3]
    if coeff.shape[1] != len(scatter):
        raise ValueError(f"got {coeff.shape[1]} bias coefficients per sample, degree {degree} has {len(scatter)}")
    px, py, pz = (legendre_basis(n, degree, coeff.device) for n in shape)  # [d1, X], [d1, Y], [d1, Z]
    if box is not None:
        px, py, pz = (p[:, s] for p, s in zip((px, py, pz), box, strict=True))  # [d1, x], [d1, y], [d1, z]
    cube = (coeff.float() @ scatter).view(-1, d1, d1 * d1)  # [S, i, j*k]
    a = (px.T @ cube).view(-1, px.shape[1], d1, d1)  # [S, X, j, k]
    b = py.T @ a  # [S, X, Y, k]
    return b @ pz  # [S, X, Y, Z]


def split_params(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model inputs, augmentation parameters) of a collated batch."""
    params = {k: batch[k] for k in PARAM_KEYS if k in batch}
    return {k: v for k, v in batch.items() if k not in params}, params
