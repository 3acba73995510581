"""Subject-independent anatomy on the 96×108×96 model grid, computed once per process.

The benchmark cohort is generated straight on the model grid (no DICOM, no registration), so it
needs the MNI tissue maps there. This module rebuilds that grid with the same rule as the curation
pipeline (isotropic, centred on the MNI brain-mask bounding box, smallest 0.05 mm multiple that fits)
without importing it, because synth/ is a standalone generator.

Beside the tissue fractions it precomputes the distance maps that make per-subject anatomy cheap:
ventricle enlargement and cortical atrophy are thresholds on these maps, not morphology per subject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

GRID_SHAPE: tuple[int, int, int] = (96, 108, 96)
"""Model grid (voxels); equal to imaging.templates.MODEL_GRID_SHAPE (a test checks it)."""


@dataclass(frozen=True, eq=False)
class GridAtlas:
    """Tissue fractions and distance maps on the model grid (float32 [96, 108, 96] unless noted).

    Attributes:
        spacing: isotropic voxel size in mm.
        affine: voxel -> MNI RAS mm [4, 4].
        gm, wm, csf: tissue fractions (sum to `brain` inside the mask).
        brain: brain mask (bool).
        d_ventricle: distance (voxels) to the ventricle core; 0 inside it.
        d_surface: distance (voxels) from the outside of the brain mask.
        lesion_sites: [K, 3] int voxel indices of deep white matter where lesions may be centred.
    """

    spacing: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    d_ventricle: np.ndarray
    d_surface: np.ndarray
    lesion_sites: np.ndarray

    @property
    def voxel_ml(self) -> float:
        return self.spacing**3 / 1000.0


def _grid(mask_img) -> tuple[float, np.ndarray]:
    mask = np.asarray(mask_img.dataobj) > 0
    idx = np.argwhere(mask)
    lo_vox, hi_vox = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    corners = np.array(
        [[a, b, c] for a in (lo_vox[0], hi_vox[0]) for b in (lo_vox[1], hi_vox[1]) for c in (lo_vox[2], hi_vox[2])]
    )
    world = corners @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    needed = float(np.max((hi - lo) / np.asarray(GRID_SHAPE)))
    spacing = round(math.ceil(round(needed / 0.05, 6)) * 0.05, 4)
    origin = (lo + hi) / 2.0 - spacing * (np.asarray(GRID_SHAPE) - 1) / 2.0
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return spacing, affine


def _resample(img, spacing: float, affine: np.ndarray) -> np.ndarray:
    data = np.asarray(img.get_fdata(dtype=np.float32))
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    sigma = np.sqrt(np.clip(spacing**2 - zooms**2, 0.0, None)) / 2.3548 / zooms
    data = ndi.gaussian_filter(data, sigma=sigma)
    v2v = np.linalg.inv(img.affine) @ affine
    out = ndi.affine_transform(data, v2v[:3, :3], offset=v2v[:3, 3], output_shape=GRID_SHAPE, order=1)
    return out.astype(np.float32)


@lru_cache(maxsize=1)
def grid_atlas() -> GridAtlas:
    """Build (once per process, ~3 s) the model-grid anatomy from nilearn's MNI152 maps."""
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    spacing, affine = _grid(mask_img)
    brain = _resample(mask_img, spacing, affine) >= 0.5
    gm = _resample(datasets.load_mni152_gm_template(resolution=1), spacing, affine)
    wm = _resample(datasets.load_mni152_wm_template(resolution=1), spacing, affine)
    gm, wm = np.where(brain, gm, 0).astype(np.float32), np.where(brain, wm, 0).astype(np.float32)
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.where(brain, 1.0 - gm - wm, 0.0).clip(0, 1).astype(np.float32)
    # Ventricle core: CSF-dominated voxels deep inside the brain (far from the cortical surface),
    # the largest connected piece being the lateral ventricles.
    d_surface = ndi.distance_transform_edt(brain).astype(np.float32)
    core = (csf > 0.5) & (d_surface > 8)
    lab, n = ndi.label(core)
    if n:
        sizes = ndi.sum(core, lab, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= max(20, 0.05 * sizes.max())) + 1
        core = np.isin(lab, keep)
    d_ventricle = ndi.distance_transform_edt(~core).astype(np.float32)
    sites = np.argwhere((wm > 0.9) & (d_surface > 6) & (d_ventricle > 3))
    for a in (gm, wm, csf, d_surface, d_ventricle):
        a.setflags(write=False)
    return GridAtlas(spacing, affine, gm, wm, csf, brain, d_ventricle, d_surface, sites.astype(np.int32))
