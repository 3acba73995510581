"""Skull stripping behind one small interface, with the backend chosen automatically.

See docs/architecture.md, "Preprocessing recipe".

Backends:
    * ``synthstrip-docker``: FreeSurfer's SynthStrip in its official container. Contrast-agnostic and the
      production default wherever a Docker engine answers. See ``docker/synthstrip.md``.
    * ``deepbet``: the deepbet CNN in-process. Its weights ship inside the pip wheel, so it works offline
      with no engine; trained on T1w, so it is the embedded default rather than the preferred one.

``select_backend`` picks one and says why, so the run record shows which tool produced each mask. For
T2w/FLAIR of a study whose T1w is already stripped, ``mask_from_reference`` reuses the T1w mask.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import nibabel as nib
import numpy as np

from imaging.templates import MODEL_GRID_SHAPE, model_grid_affine, save_nifti_atomic

if TYPE_CHECKING:
    import torch
    from deepbet.bet import BrainExtraction

ENV_VAR = "MRIFOUNDRY_SKULLSTRIP"
"""Environment variable that overrides the automatic choice (values as for ``select_backend``)."""

BACKEND_NAMES: tuple[str, ...] = ("synthstrip-docker", "deepbet")
"""Backends ``select_backend`` knows, in automatic order of preference."""


class SkullStripError(RuntimeError):
    """A backend ran but produced no usable mask, or a requested backend cannot run here."""


@runtime_checkable
class SkullStripBackend(Protocol):
    """What every skull-strip backend offers.

    Attributes:
        name: the stable identifier recorded with each mask (e.g. ``"deepbet"``).
    """

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether the backend can run on this machine now, and a one-line reason when it cannot."""
        ...

    def strip(self, image: Path, mask_out: Path) -> Path:
        """Write a uint8 0/1 brain mask of ``image`` on the image's own grid to ``mask_out``; return it."""
        ...


# --------------------------------------------------------------------------------------------- deepbet


@lru_cache(maxsize=1)
def deepbet_extractor() -> BrainExtraction:
    """The deepbet model, loaded once per process (GPU when torch sees one, else CPU).

    Loading costs little (≈0.1 s) but a worker strips thousands of volumes, and the registration step
    reuses the same object as its brain localiser, so both share one copy of the weights.
    """
    import torch
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def deepbet_mask(img: nib.Nifti1Image, *, threshold: float = 0.5) -> np.ndarray:
    """Run deepbet on an in-memory image; returns a bool mask on the image's own voxel grid.

    deepbet resamples internally (a 128³ box finder, then a 256³ crop around the brain), so it runs on
    the 1.7 mm model grid directly. Upsampling the registered T1w to 1 mm first was measured and gave the
    same mask (Dice with the MNI mask 0.971 both ways, 1877 vs 1881 ml) for more time, so it is not done.
    The steps are deepbet's own (``BrainExtraction.run``), minus costs that change nothing
    (``_deepbet_run``). On the model grid (a registered image) the box finder is skipped: registration
    has already put the brain in the middle of the grid, which is the MNI brain's box plus a few
    millimetres, so deepbet's box (the brain's extent plus 10 % on each side, clipped to the image) is
    the whole grid; on t1w_chris, t2w_head and flair_lesions it is exactly that, and skipping it saves the
    128³ network (≈0.4 CPU s).
    """
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SkullStripError(f"deepbet needs a 3D image, got shape {data.shape}; select one volume first")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if float(data.max() - data.min()) <= 0.0:
        raise SkullStripError("image is constant (no contrast); nothing to strip - check the conversion")
    on_grid = data.shape == MODEL_GRID_SHAPE and np.allclose(img.affine, model_grid_affine(), atol=1e-3)
    can = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    mask = _deepbet_run(deepbet_extractor(), np.asarray(can.dataobj, dtype=np.float32), threshold, whole=on_grid)
    # Back to the input's orientation (deepbet's reoriented_nifti): as_closest_canonical only flips and
    # permutes axes, so its inverse is exact.
    to_input = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], nib.io_orientation(img.affine))
    return nib.orientations.apply_orientation(mask, to_input).astype(bool)


def _deepbet_run(extractor: BrainExtraction, data: np.ndarray, threshold: float, *, whole: bool = False) -> np.ndarray:
    """deepbet 1.0.2's ``run_model`` + ``postprocess`` on a RAS float32 volume; the bool brain mask.

    ``whole``: crop to the whole volume instead of the box deepbet's 128³ network finds (the network is
    not run); for images whose brain is known to fill the volume (see ``deepbet_mask``).

    Same networks, crops and resizes as deepbet, so the same mask, with two of its costs removed
    (measured on the registered t1w_chris, 2 threads): the 0.5/99.5 % intensity percentiles by selection
    (``_quantiles``, the values ``torch.quantile`` returns) instead of two full sorts of 2 M voxels (0.2 s),
    and the intensity normalisation on the crop before the nearest-neighbour upsampling to 256³ instead of
    after it (0.35 s): every upsampled voxel copies one crop voxel, so the elementwise steps commute with
    the upsampling, and the mean and standard deviation of the upsampled volume are those of the crop
    with each voxel weighted by how often it is copied (computed in float64; they differ from torch's
    float32 reductions in the 7th digit, below what moves a probability across 0.5).
    """
    import fill_voids  # deepbet's own dependencies
    import torch
    import torch.nn.functional as F
    from deepbet.utils import keep_largest_connected_component

    device = next(extractor.model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(data)).to(device)  # (X, Y, Z) RAS
    small = F.interpolate(x[None, None], COARSE_SHAPE, mode="nearest-exact")[0, 0]  # (128, 128, 128)
    low, high = _quantiles(small, (0.005, 0.995))
    if whole:
        bbox = tuple(slice(0, n, 1) for n in x.shape)
    else:
        with torch.inference_mode(), _one_cpu_thread(device):
            prob_small = extractor.bbox_model(_normalise(small, low, high)[None, None])[0, 1]
        coarse = keep_largest_connected_component((prob_small > 0.5).float().cpu().numpy())
        bbox = extractor.get_bbox_with_margin(torch.from_numpy(coarse).to(device), x.shape, 0.1)
    crop = x[bbox]  # (cx, cy, cz)
    index = [_nearest_exact_index(n, FINE_SIZE) for n in crop.shape]
    fine = _normalise(
        crop, low, high, weights=[np.bincount(i, minlength=n) for i, n in zip(index, crop.shape, strict=True)]
    )
    fine = F.interpolate(fine[None, None], (FINE_SIZE,) * 3, mode="nearest-exact")  # (1, 1, 256, 256, 256)
    with torch.inference_mode():
        prob = extractor.model(fine)[0, 1]  # (256, 256, 256)
    # deepbet brings the 256³ probabilities back onto the crop by a nearest-exact resize, i.e. it reads
    # one voxel per crop voxel; reading those voxels directly skips the interpolate call.
    back = [torch.as_tensor(_nearest_exact_index(FINE_SIZE, n), device=device) for n in crop.shape]
    prob_crop = prob[back[0][:, None, None], back[1][None, :, None], back[2][None, None, :]]
    mask = np.zeros(data.shape, dtype=bool)
    inside = (prob_crop > threshold).cpu().numpy()
    if inside.any():
        inside = fill_voids.fill(keep_largest_connected_component(inside), in_place=False)
    mask[bbox] = inside
    return mask


FINE_SIZE = 256
"""Edge of the cube deepbet's second network sees: the crop around the brain, resized."""


def _nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output voxel of torch's ``nearest-exact`` resize from ``n_in`` to ``n_out``."""
    import torch

    probe = torch.arange(n_in, dtype=torch.float64)[None, None]
    return torch.nn.functional.interpolate(probe, n_out, mode="nearest-exact")[0, 0].long().numpy()


def _quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """``values.quantile(q)`` for each q (linear interpolation), by two order statistics instead of a sort.

    torch.quantile computes the rank ``q · (n − 1)`` in the tensor's dtype and returns
    ``lerp(v[floor], v[ceil], rank − floor)`` of the sorted values; ``kthvalue`` selects those two
    values without sorting, so the results are the same numbers (checked in tests/imaging/test_skullstrip.py).
    """
    import torch

    flat = values.reshape(-1)
    out = []
    for q in qs:
        rank = torch.tensor(q, dtype=flat.dtype) * (flat.numel() - 1)
        below, above = int(rank.floor()), int(rank.ceil())
        v_below = flat.kthvalue(below + 1).values
        v_above = v_below if above == below else flat.kthvalue(above + 1).values
        out.append(torch.lerp(v_below, v_above, rank - below))
    return out


def _normalise(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, weights: list[np.ndarray] | None = None
) -> torch.Tensor:
    """deepbet's ``normalize``: clip to [low, high] scaled to [0, 1], standardise, map to mean .449, sd .226.

    With ``weights`` (per axis, how often a nearest-neighbour upsampling copies each voxel) the mean and
    the (n − 1) standard deviation are those of the upsampled volume, computed here on ``x`` itself.
    """
    import torch

    y = ((x - low) / (high - low)).clamp(min=0, max=1)
    if weights is None:
        mean, std = y.mean(), y.std()
    else:  # the upsampled volume's statistics
        w = torch.from_numpy(np.einsum("i,j,k->ijk", *[np.asarray(a, dtype=np.float64) for a in weights])).to(y.device)
        y64 = y.double()
        n = float(w.sum())
        mean64 = (w * y64).sum() / n
        std64 = torch.sqrt((w * (y64 - mean64) ** 2).sum() / (n - 1))
        mean, std = mean64.float(), std64.float()
    return 0.226 * ((y - mean) / std) + 0.449  # deepbet's operation order, so the bbox stage is bit-identical


COARSE_SHAPE = (128, 128, 128)


def deepbet_coarse_mask(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """deepbet's first stage only: a coarse brain mask from its 128³ box-finder network.

    Registration needs to know where the brain is, not its exact edge, and this stage costs a fraction
    of the full model (≈0.5 s against ≈3-9 s on 2 cores). It mirrors deepbet's own pre-processing
    (closest-canonical orientation, nearest-exact resize to 128³, 0.5-99.5 percentile scaling, largest
    connected component). The mask is returned on its own 128³ grid, whose affine maps it to world
    coordinates (voxel i of the resize samples input voxel (i + 0.5)·n/128 − 0.5).
    """
    import torch
    from deepbet.utils import keep_largest_connected_component

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    model = deepbet_extractor().bbox_model
    device = next(model.parameters()).device
    # The nearest-exact resize to 128³ reads one voxel per output voxel: pick those 2 M voxels directly
    # instead of copying the whole (Fortran-ordered) volume into a tensor first.
    picked = data[np.ix_(*[_nearest_exact_index(n, m) for n, m in zip(data.shape, COARSE_SHAPE, strict=True)])]
    picked = np.nan_to_num(picked, nan=0.0, posinf=0.0, neginf=0.0)
    small = torch.from_numpy(np.ascontiguousarray(picked)).to(device)  # (128, 128, 128)
    low, high = _quantiles(small, (0.005, 0.995))
    with torch.inference_mode(), _one_cpu_thread(device):
        prob = model(_normalise(small, low, high)[None, None])[0, 1]
    mask = (prob > 0.5).float().cpu().numpy()
    if mask.any():
        mask = keep_largest_connected_component(mask)
    scale = np.asarray(data.shape, dtype=float) / np.asarray(COARSE_SHAPE, dtype=float)
    vox = np.diag([*scale, 1.0])
    vox[:3, 3] = (scale - 1.0) / 2.0
    out = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), can.affine @ vox)
    out.header.set_data_dtype(np.uint8)
    return out


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the 128³ box finder on one CPU thread, whatever torch's thread count.

    Its layers are small, so a second thread saves little on an idle machine (≈0.1 s) and costs much on a
    busy one: with libgomp's default spin-waiting its threads wait for each other at every layer, and the
    network took 2.1 s of wall and CPU time on 2 threads at load 2.6 against 0.40 s on one thread
    (0.26 s with OMP_WAIT_POLICY=passive). The 256³ network keeps the configured threads.
    """
    import torch

    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class DeepbetBackend:
    """In-process deepbet (weights inside the wheel; CPU is fine: a few seconds per volume).

    Attributes:
        threshold: probability above which a voxel is brain (deepbet's default 0.5).
    """

    threshold: float = 0.5
    name: str = field(default="deepbet", init=False)

    def available(self) -> tuple[bool, str]:
        """deepbet is a declared dependency, so this only fails in a broken environment."""
        import importlib.util

        if importlib.util.find_spec("deepbet") is None:
            return False, "deepbet is not installed (pip install deepbet)"
        return True, "deepbet installed (weights ship in the wheel)"

    def strip(self, image: Path, mask_out: Path) -> Path:
        """Mask ``image`` with deepbet and write the mask (uint8, image's grid) atomically to ``mask_out``.

        Raises:
            SkullStripError: the image is constant or the mask comes back empty.
        """
        img = nib.load(str(image))
        mask = deepbet_mask(img, threshold=self.threshold)
        if not mask.any():
            raise SkullStripError(f"deepbet found no brain in {image}; check the image or use another backend")
        out = nib.Nifti1Image(mask.astype(np.uint8), img.affine)
        out.header.set_data_dtype(np.uint8)
        return save_nifti_atomic(out, Path(mask_out))


# ----------------------------------------------------------------------------------- synthstrip-docker


@dataclass(frozen=True)
class SynthStripDockerBackend:
    """FreeSurfer SynthStrip run in its official container (entry point ``mri_synthstrip``).

    Attributes:
        image: container image and tag; pin the tag so masks are reproducible.
        docker: the docker client executable.
        probe_timeout_s: how long ``docker info`` may take before the engine counts as unreachable.
        run_timeout_s: limit for one strip (SynthStrip takes well under a minute per volume on CPU).
    """

    image: str = "freesurfer/synthstrip:1.6"
    docker: str = "docker"
    probe_timeout_s: float = 5.0
    run_timeout_s: float = 600.0
    name: str = field(default="synthstrip-docker", init=False)

    def command(self, image: Path, mask_out: Path) -> list[str]:
        """The exact ``docker run`` argv that writes the mask of ``image`` to ``mask_out``.

        The input folder is mounted read-only at ``/in`` and the output folder writable at ``/out`` (two
        mounts even when they are the same folder, so the container can never modify the source);
        ``-u uid:gid`` makes the mask owned by the caller rather than root; ``--network none`` because
        the container needs no network and the images may hold patient data.
        """
        image, mask_out = Path(image).resolve(), Path(mask_out).resolve()
        return [
            self.docker, "run", "--rm", "--network", "none",
            "-u", f"{os.getuid()}:{os.getgid()}",
            "-v", f"{image.parent}:/in:ro",
            "-v", f"{mask_out.parent}:/out",
            self.image,
            "-i", f"/in/{image.name}",
            "-m", f"/out/{mask_out.name}",
        ]  # fmt: skip

    def available(self) -> tuple[bool, str]:
        """True only when the client exists AND the engine answers ``docker info`` in time."""
        exe = shutil.which(self.docker)
        if exe is None:
            return False, f"{self.docker!r} client not on PATH"
        try:
            proc = subprocess.run(
                [exe, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True, text=True, timeout=self.probe_timeout_s, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, f"Docker engine did not answer within {self.probe_timeout_s:g} s"
        except OSError as exc:
            return False, f"could not run {exe}: {exc}"
        if proc.returncode != 0 or not proc.stdout.strip():
            return False, "Docker engine not reachable"
        return True, f"Docker engine {proc.stdout.strip()} reachable"

    def strip(self, image: Path, mask_out: Path) -> Path:
        """Run the container; the mask is written under a temporary name and renamed into place.

        Raises:
            SkullStripError: the container failed (its stderr tail is included) or wrote no mask.
        """
        mask_out = Path(mask_out)
        mask_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = mask_out.with_name(f".tmp-{uuid.uuid4().hex}-{mask_out.name}")
        try:
            proc = subprocess.run(
                self.command(Path(image), tmp),
                capture_output=True, text=True, timeout=self.run_timeout_s, check=False,
            )  # fmt: skip
            if proc.returncode != 0 or not tmp.exists():
                tail = (proc.stderr or proc.stdout or "").strip()[-500:]
                raise SkullStripError(
                    f"{self.image} exited {proc.returncode} on {image}: {tail or 'no output'}; "
                    f"try `{' '.join(self.command(Path(image), mask_out))}` by hand"
                )
            os.replace(tmp, mask_out)
        finally:
            tmp.unlink(missing_ok=True)
        return mask_out


# ---------------------------------------------------------------------------------------- selection


def _make(name: str) -> SkullStripBackend:
    return SynthStripDockerBackend() if name == "synthstrip-docker" else DeepbetBackend()


def select_backend(preference: str = "auto") -> tuple[SkullStripBackend, str]:
    """Choose the skull-strip backend and say why.

    ``"auto"`` prefers ``synthstrip-docker`` (contrast-agnostic) when its engine answers and otherwise
    uses ``deepbet``, which always works offline. When ``preference`` is ``"auto"`` the environment
    variable ``MRIFOUNDRY_SKULLSTRIP`` may name a backend (a deployment-wide override); an explicit
    ``preference`` wins over the variable.

    Returns:
        The backend and a one-line reason, e.g. ``"synthstrip-docker unavailable: Docker engine not
        reachable; using deepbet"``.

    Raises:
        ValueError: ``preference`` (or the variable) is not ``"auto"`` or one of ``BACKEND_NAMES``.
        SkullStripError: an explicitly requested backend cannot run here.
    """
    source = "requested"
    choice = preference.strip().lower()
    if choice == "auto" and os.environ.get(ENV_VAR, "").strip():
        choice, source = os.environ[ENV_VAR].strip().lower(), f"{ENV_VAR}"
    valid = ("auto", *BACKEND_NAMES)
    if choice not in valid:
        raise ValueError(f"unknown skull-strip backend {choice!r} ({source}); valid choices: {', '.join(valid)}")
    if choice != "auto":
        backend = _make(choice)
        ok, why = backend.available()
        if not ok:
            raise SkullStripError(f"{choice} was {source} but cannot run: {why}; use 'auto' to fall back to deepbet")
        return backend, f"{choice} {source} ({why})"
    docker_backend = _make("synthstrip-docker")
    ok, why = docker_backend.available()
    if ok:
        return docker_backend, f"synthstrip-docker available ({why})"
    fallback = _make("deepbet")
    ok_db, why_db = fallback.available()
    if not ok_db:
        raise SkullStripError(f"no skull-strip backend can run: synthstrip-docker: {why}; deepbet: {why_db}")
    return fallback, f"synthstrip-docker unavailable: {why}; using deepbet"


# ------------------------------------------------------------------------------ reuse of a T1w mask


def mask_from_reference(reference_mask: Path, out: Path) -> Path:
    """Reuse a study's T1w brain mask for its T2w/FLAIR volumes.

    Every contrast of a study is registered to the same MNI template and resampled onto the same model
    grid, so the T1w mask is already in the right space: no further registration is needed. The
    reference design suggests a within-subject rigid T1w→T2w registration; here that step is subsumed by both
    contrasts' registrations to the template (each affine is fitted on a brain-only image, so both
    land on the same anatomy). The cost is that errors of the two registrations add up; QC's
    similarity and brain-volume checks on the T2w/FLAIR judge the result.

    Raises:
        SkullStripError: the reference is not on the model grid or is empty.
    """
    ref = nib.load(str(reference_mask))
    if tuple(ref.shape[:3]) != MODEL_GRID_SHAPE or not np.allclose(ref.affine, model_grid_affine(), atol=1e-3):
        raise SkullStripError(
            f"{reference_mask} is not on the model grid (shape {tuple(ref.shape)}, expected {MODEL_GRID_SHAPE} "
            "with the model-grid affine); only masks of registered volumes can be reused"
        )
    mask = np.asarray(ref.dataobj) > 0
    if not mask.any():
        raise SkullStripError(f"reference mask {reference_mask} is empty; strip the T1w again first")
    img = nib.Nifti1Image(mask.astype(np.uint8), ref.affine)
    img.header.set_data_dtype(np.uint8)
    return save_nifti_atomic(img, Path(out))
