"""MNI152 templates and the fixed model grid every curated volume is resampled onto.

The templates come from nilearn's wheel (ICBM152 2009a nonlinear symmetric, 1 mm), so nothing is
downloaded at run time. That template is *brain only* (no skull, no scalp): registration therefore
aligns a brain estimate of the native image to it (see ``imaging/register.py``).

The model grid is the fixed input geometry of the JEPA encoder (docs/architecture.md, "Preprocessing recipe"): 96×108×96
voxels, isotropic, RAS, centred on the bounding box of the MNI brain mask, with the smallest spacing
(rounded up to 0.05 mm) at which the whole mask fits. With nilearn's mask that is 1.70 mm.

Everything here is cached per process: the loaders are cheap to call repeatedly, and the returned
images are shared, so callers must not modify their arrays in place.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

MODEL_GRID_SHAPE: tuple[int, int, int] = (96, 108, 96)
"""Voxel shape of the model grid (Neuro-JEPA: 96×108×96 after crop, 12³ patches → 8×9×8 tokens)."""

SPACING_STEP_MM = 0.05
"""The model-grid spacing is rounded up to a multiple of this, so the grid is a readable number."""

CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
"""Contrasts with a matching template (``contrast_template``)."""

# Relative tissue intensities (GM, WM, CSF) used to synthesise T2w and FLAIR templates from the MNI
# tissue probability maps, because nilearn ships only a T1w template. The orderings are the textbook
# ones (T2w: CSF > GM > WM; FLAIR: GM > WM > CSF, CSF nulled); the exact values matter little since
# the templates are only used with mutual information (registration) and Pearson correlation
# (similarity), both invariant to a linear intensity change. The same synthesis with T1w values
# (fitted: GM 0.66, WM 0.88, CSF 0.28) reproduces nilearn's real T1w template with r = 0.985.
_TISSUE_INTENSITY: dict[str, tuple[float, float, float]] = {
    "T2w": (0.55, 0.35, 1.0),
    "FLAIR": (0.75, 0.55, 0.1),
}


_NILEARN_T1_FILE = Path("datasets") / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
"""nilearn's MNI152 T1w file, relative to the installed nilearn package."""


def _as_float_image(img: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asarray(img.get_fdata(dtype=np.float32))
    return nib.Nifti1Image(data, img.affine)


@lru_cache(maxsize=1)
def mni_template() -> nib.Nifti1Image:
    """MNI152 T1w template at 1 mm, float32 in [0, 1], brain only (zero outside the brain)."""
    from nilearn import datasets

    return _as_float_image(datasets.load_mni152_template(resolution=1))


@lru_cache(maxsize=1)
def mni_brain_mask() -> nib.Nifti1Image:
    """MNI152 brain mask at 1 mm (uint8 0/1); nilearn's mask is generous (≈1.88 l, includes CSF)."""
    from nilearn import datasets

    mask = datasets.load_mni152_brain_mask(resolution=1)
    return nib.Nifti1Image((mask.get_fdata() > 0).astype(np.uint8), mask.affine)


@lru_cache(maxsize=1)
def mni_gm_map() -> nib.Nifti1Image:
    """MNI152 grey-matter probability map at 1 mm, float32 in [0, 1]."""
    from nilearn import datasets

    return _as_float_image(datasets.load_mni152_gm_template(resolution=1))


@lru_cache(maxsize=1)
def mni_wm_map() -> nib.Nifti1Image:
    """MNI152 white-matter probability map at 1 mm, float32 in [0, 1]."""
    from nilearn import datasets

    return _as_float_image(datasets.load_mni152_wm_template(resolution=1))


def mni_template_file() -> Path | None:
    """Path of nilearn's MNI152 T1w file, found without importing nilearn (which takes seconds).

    The dashboard draws registration overlays from it on every cold render; None when nilearn is
    not installed (the overlay is then drawn without template outlines).
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _NILEARN_T1_FILE
    return path if path.is_file() else None


def template_on_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray | None:
    """The MNI T1w template resampled onto an image's grid, lightly smoothed, scaled to its robust max.

    Registered volumes of every contrast are compared with the T1w template's outlines: the brain
    boundary and ventricles sit at the same place whatever the contrast, which is what a reviewer
    checks in a registration overlay. None when no template file is installed.
    """
    return _template_on_grid(tuple(int(s) for s in shape), tuple(np.round(np.asarray(affine), 6).ravel().tolist()))


@lru_cache(maxsize=4)
def _template_on_grid(shape: tuple[int, ...], affine_flat: tuple[float, ...]) -> np.ndarray | None:
    from scipy import ndimage

    path = mni_template_file()
    if path is None:
        return None
    img = nib.load(str(path))
    tpl = np.asarray(img.dataobj, dtype=np.float32)
    vox = np.linalg.inv(img.affine) @ np.asarray(affine_flat).reshape(4, 4)
    out = ndimage.affine_transform(tpl, vox[:3, :3], offset=vox[:3, 3], output_shape=shape, order=1, cval=0.0)
    # Light smoothing keeps the grey/white contour to the large structures instead of every voxel's noise.
    out = ndimage.gaussian_filter(out, sigma=1.0)
    inside = out[out > 0]
    return out / (float(np.percentile(inside, 99.0)) if inside.size else 1.0)


def _check_contrast(contrast: str) -> None:
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}: expected one of {', '.join(CONTRASTS)}")


@lru_cache(maxsize=len(CONTRASTS))
def contrast_template(contrast: str = "T1w") -> nib.Nifti1Image:
    """Template at 1 mm whose tissue contrast matches ``contrast``.

    T1w is nilearn's real template. T2w and FLAIR are synthesised as GM·i_gm + WM·i_wm + CSF·i_csf from
    the MNI tissue probability maps (CSF = brain mask minus GM minus WM), because no T2w/FLAIR template
    ships in any installed wheel; Neuro-JEPA registers T2w/FLAIR to a T2 template (docs/architecture.md,
    "Preprocessing recipe").

    Raises:
        ValueError: ``contrast`` is not one of ``CONTRASTS``.
    """
    _check_contrast(contrast)
    if contrast == "T1w":
        return mni_template()
    gm = mni_gm_map().get_fdata(dtype=np.float32)
    wm = mni_wm_map().get_fdata(dtype=np.float32)
    brain = mni_brain_mask().get_fdata(dtype=np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    i_gm, i_wm, i_csf = _TISSUE_INTENSITY[contrast]
    data = (i_gm * gm + i_wm * wm + i_csf * csf) * brain
    return nib.Nifti1Image(data.astype(np.float32), mni_template().affine)


def _mask_bbox_world() -> tuple[np.ndarray, np.ndarray]:
    """World (RAS mm) lower and upper corners of the MNI brain mask, voxel edges included."""
    mask = mni_brain_mask()
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    lo_vox, hi_vox = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    corners = np.array(
        [[a, b, c] for a in (lo_vox[0], hi_vox[0]) for b in (lo_vox[1], hi_vox[1]) for c in (lo_vox[2], hi_vox[2])]
    )
    world = nib.affines.apply_affine(mask.affine, corners)
    return world.min(axis=0), world.max(axis=0)


@lru_cache(maxsize=1)
def model_grid_spacing() -> float:
    """Isotropic spacing (mm) of the model grid: the smallest multiple of 0.05 mm that fits the mask."""
    lo, hi = _mask_bbox_world()
    needed = float(np.max((hi - lo) / np.asarray(MODEL_GRID_SHAPE)))
    return round(math.ceil(round(needed / SPACING_STEP_MM, 6)) * SPACING_STEP_MM, 4)


@lru_cache(maxsize=1)
def model_grid_affine() -> np.ndarray:
    """RAS voxel-to-world affine of the model grid, centred on the MNI brain-mask bounding box."""
    lo, hi = _mask_bbox_world()
    spacing = model_grid_spacing()
    centre = (lo + hi) / 2.0
    origin = centre - spacing * (np.asarray(MODEL_GRID_SHAPE) - 1) / 2.0
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    affine.setflags(write=False)
    return affine


def resample_to_model_grid(img: nib.Nifti1Image, *, order: int = 1, antialias: bool = True) -> np.ndarray:
    """Resample an image (any affine) onto the model grid; returns a float32 array of MODEL_GRID_SHAPE.

    Args:
        img: 3D image in any orientation.
        order: spline order (0 nearest, 1 linear).
        antialias: Gaussian pre-smoothing when the source voxels are finer than the grid, with
            sigma = sqrt(target² − source²) / 2.355 per axis, so downsampling a 1 mm image to 1.7 mm
            averages instead of aliasing.
    """
    from scipy import ndimage

    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}; select one volume first")
    spacing = model_grid_spacing()
    if antialias and order > 0:
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        sigma_mm = np.sqrt(np.clip(spacing**2 - zooms**2, 0.0, None)) / 2.3548
        if np.any(sigma_mm > 0):
            data = ndimage.gaussian_filter(data, sigma=sigma_mm / zooms)
    vox_to_vox = np.linalg.inv(img.affine) @ model_grid_affine()
    out = ndimage.affine_transform(
        data,
        vox_to_vox[:3, :3],
        offset=vox_to_vox[:3, 3],
        output_shape=MODEL_GRID_SHAPE,
        order=order,
        mode="constant",
        cval=0.0,
    )
    return out.astype(np.float32)


def _grid_image(data: np.ndarray, dtype: type = np.float32) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), model_grid_affine())
    img.header.set_xyzt_units("mm")
    return img


@lru_cache(maxsize=len(CONTRASTS))
def model_grid_template(contrast: str = "T1w") -> nib.Nifti1Image:
    """The contrast's template resampled onto the model grid (float32)."""
    return _grid_image(resample_to_model_grid(contrast_template(contrast)))


def model_grid_reference() -> nib.Nifti1Image:
    """The model-grid reference image: the MNI T1w template on the 96×108×96 grid."""
    return model_grid_template("T1w")


@lru_cache(maxsize=1)
def model_grid_brain_mask() -> nib.Nifti1Image:
    """MNI brain mask on the model grid (uint8 0/1): the area-weighted mask thresholded at 0.5."""
    frac = resample_to_model_grid(mni_brain_mask())
    return _grid_image(frac >= 0.5, np.uint8)


@lru_cache(maxsize=1)
def model_grid_gm() -> nib.Nifti1Image:
    """MNI grey-matter probability map on the model grid (float32)."""
    return _grid_image(resample_to_model_grid(mni_gm_map()))


@lru_cache(maxsize=1)
def model_grid_wm() -> nib.Nifti1Image:
    """MNI white-matter probability map on the model grid (float32)."""
    return _grid_image(resample_to_model_grid(mni_wm_map()))


def model_grid_voxel_ml() -> float:
    """Volume of one model-grid voxel in millilitres (mm³ / 1000)."""
    return model_grid_spacing() ** 3 / 1000.0


def save_nifti_atomic(img: nib.Nifti1Image, path: Path) -> Path:
    """Write ``img`` to ``path`` via a temporary name in the same folder and ``os.replace``.

    Readers (the next task, a retried run, the dashboard) then see either the old file or the complete
    new one, never a half-written gzip stream. The temporary name keeps the ``.nii.gz`` suffix so that
    nibabel compresses it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
