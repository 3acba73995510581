"""A synthetic head in MNI152 space, per-subject pathology, and where the head sits in the scanner.

The MNI152 template that ships inside nilearn's wheel is brain-only. A curation pipeline that
skull-strips and registers real scans would have nothing to do on it, so this module wraps the brain
in a head built from distance shells around the brain mask (subarachnoid CSF, a two-table skull with
diploic marrow, scalp fat and skin), adds eyes, orbital fat and a neck, and then derives each
subject from that reference: white-matter lesions, enlarged ventricles and a slightly different skull.

Coordinates: "MNI" is the template's RAS millimetre space. The scanner's patient space is DICOM LPS;
a `Pose` maps MNI to scanner RAS (LPS is RAS with x and y negated).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage as ndi

# Empty space added below the template's lowest slice (it cuts through the brainstem) so that the
# skull base and a neck fit in the reference grid.
PAD_INFERIOR_VOX = 50
# Shell thicknesses around the brain mask, in mm, for a skull-thickness factor of 1.
CSF_RIM_MM = 2.5
INNER_TABLE_MM = 1.5
DIPLOE_MM = 2.5
OUTER_TABLE_MM = 1.5
SCALP_FAT_MM = 4.0
SKIN_MM = 1.5


class Tissue(IntEnum):
    """Labels of the tissues outside the brain; inside it tissue is fractional (GM/WM/CSF/lesion)."""

    AIR = 0
    BRAIN = 1
    CSF = 2
    SKULL = 3
    MARROW = 4
    FAT = 5
    SKIN = 6
    MUSCLE = 7
    EYE = 8
    CORD = 9


N_TISSUE_LABELS = len(Tissue)


@dataclass(frozen=True, eq=False)
class ReferenceHead:
    """The subject-independent head on a padded 1 mm MNI grid (arrays are float32 unless noted).

    Attributes:
        affine: voxel index -> MNI RAS mm.
        gm, wm, csf: brain tissue fractions (sum to 1 inside the brain mask, 0 outside).
        texture: the part of the real MNI T1 intensities that the tissue fractions do not explain
            (deep grey nuclei, cortical ribbon detail); added back so images look less like cartoons.
        outside_mm: distance from the brain mask in mm (0 inside).
        overlay_strong: uint8 labels (eyes, orbital fat, spinal cord and its CSF) that replace the
            shells around the brain.
        overlay_weak: uint8 labels (neck, vertebra) that only fill what would otherwise be air.
        ventricles: bool mask of the lateral/third ventricles.
        lesion_sites: (N, 3) int voxel indices of deep cerebral white matter, candidate lesion centres.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    outside_mm: np.ndarray
    overlay_strong: np.ndarray
    overlay_weak: np.ndarray
    ventricles: np.ndarray
    lesion_sites: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class SubjectTraits:
    """What makes one subject differ from the reference; drawn once per subject by the exporter.

    Attributes:
        lesion: whether the subject has white-matter hyperintensities (a labels.csv target).
        enlarged_ventricles: whether the ventricles are dilated (the other labels.csv target).
        skull_scale: multiplies the skull/scalp shell thicknesses (people differ).
        head_scale: isotropic head size relative to MNI (applied through the pose).
    """

    lesion: bool
    enlarged_ventricles: bool
    skull_scale: float
    head_scale: float


@dataclass(frozen=True, eq=False)
class SubjectHead:
    """One subject's head on the reference grid: tissue fractions plus non-brain labels."""

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    lesion: np.ndarray
    texture: np.ndarray
    labels: np.ndarray
    n_lesions: int
    lesion_ml: float
    ventricle_ml: float
    lesion_centres_mni: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class Pose:
    """Where a head sits in the scanner: MNI RAS -> scanner RAS is translate @ rotate @ scale.

    Rotations are about the MNI origin (roughly the anterior commissure), applied x, then y, then z.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scale: float = 1.0

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping MNI RAS mm to scanner RAS mm."""
        ax, ay, az = (math.radians(a) for a in self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
        out = np.eye(4)
        out[:3, :3] = rz @ ry @ rx * self.scale
        out[:3, 3] = self.translation_mm
        return out


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # nilearn is imported here, not at module level: it takes over a second and `python -m synth
    # --help` should not pay for it.
    from nilearn import datasets

    imgs = (
        datasets.load_mni152_template(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    )
    for img in imgs[1:]:
        if img.shape != imgs[0].shape or not np.allclose(img.affine, imgs[0].affine):
            raise ValueError(f"MNI templates disagree on the grid: {img.shape} vs {imgs[0].shape}")
    arrays = [np.asarray(img.get_fdata(dtype=np.float32)) for img in imgs]
    return arrays[0], arrays[1], arrays[2], arrays[3], np.asarray(imgs[0].affine, dtype=np.float64)


def _mni_coords(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse MNI x, y, z coordinate grids (the reference affine is axis-aligned)."""
    axes = [np.arange(n) * affine[a, a] + affine[a, 3] for a, n in enumerate(shape)]
    return (
        axes[0][:, None, None].astype(np.float32),
        axes[1][None, :, None].astype(np.float32),
        axes[2][None, None, :].astype(np.float32),
    )


def _distance_outside(mask: np.ndarray) -> np.ndarray:
    """Distance (mm) from the mask, computed on a 2 mm grid and upsampled.

    An exact 1 mm transform of the whole padded grid costs seconds; the shells built from it are
    several millimetres thick, so a 2 mm transform, corrected by half a voxel, is plenty.
    """
    pad = [(0, s % 2) for s in mask.shape]
    m = np.pad(mask, pad)
    coarse = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).any(axis=(1, 3, 5))
    dist = ndi.distance_transform_edt(~coarse, sampling=2.0).astype(np.float32)
    fine = ndi.zoom(dist, 2, order=1, grid_mode=True, mode="nearest")[: mask.shape[0], : mask.shape[1]]
    fine = fine[:, :, : mask.shape[2]]
    out = np.maximum(fine - 0.5, 0.0)
    out[mask] = 0.0
    # Voxels just outside the mask may be rounded to 0 by the coarse grid; keep them distinct.
    out[(~mask) & (out < 0.5)] = 0.5
    return out


def _sphere(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float]) -> np.ndarray:
    return np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)


def _overlays(
    shape: tuple[int, ...], affine: np.ndarray, outside_mm: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eyes, orbits, cord (strong) and neck (weak) labels; see `ReferenceHead`."""
    x, y, z = _mni_coords(shape, affine)
    strong = np.zeros(shape, dtype=np.uint8)
    weak = np.zeros(shape, dtype=np.uint8)
    away_from_brain = outside_mm > CSF_RIM_MM + 1.0
    for side in (-1.0, 1.0):
        d = _sphere(x, y, z, (side * 32.0, 54.0, -38.0))
        strong[(d < 17.0) & away_from_brain & (strong == 0)] = Tissue.FAT
        strong[(d < 12.0) & away_from_brain] = Tissue.EYE
    # Spinal cord continuing the brainstem (which the template cuts at z = -72), in a CSF sleeve.
    below = z < -60.0
    cord_r = np.sqrt(x**2 + (y + 45.0) ** 2)
    strong[(cord_r < 8.0) & below & ~mask] = Tissue.CSF
    strong[(cord_r < 5.0) & below & ~mask] = Tissue.CORD
    # Neck: an elliptical cylinder of muscle with a fat and skin rim and a vertebral body.
    neck_r = np.sqrt((x / 50.0) ** 2 + ((y + 28.0) / 46.0) ** 2) * 48.0
    neck = z < -35.0
    weak[neck & (neck_r < 48.0)] = Tissue.SKIN
    weak[neck & (neck_r < 46.5)] = Tissue.FAT
    weak[neck & (neck_r < 40.0)] = Tissue.MUSCLE
    vert_r = np.sqrt(x**2 + (y + 24.0) ** 2)
    weak[neck & (vert_r < 10.0)] = Tissue.SKULL
    weak[neck & (vert_r < 8.5)] = Tissue.MARROW
    return strong, weak


def _ventricles(csf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Ventricles = large connected CSF components near the middle of the brain."""
    x, y, z = _mni_coords(csf.shape, affine)
    central = (np.abs(x) < 30) & (y > -50) & (y < 30) & (z > -10) & (z < 35)
    labelled, n = ndi.label((csf > 0.5) & central)
    if n == 0:
        raise ValueError("no ventricular CSF found in the MNI template's central region")
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.flatnonzero(sizes >= 1000) + 1
    return np.isin(labelled, keep)


@functools.lru_cache(maxsize=1)
def reference_head() -> ReferenceHead:
    """Build (once per process) the reference head from the nilearn MNI152 templates."""
    t1, gm, wm, mask_f, affine = _load_templates()
    pad = ((0, 0), (0, 0), (PAD_INFERIOR_VOX, 0))
    t1, gm, wm, mask_f = (np.pad(a, pad) for a in (t1, gm, wm, mask_f))
    shift = np.eye(4)
    shift[2, 3] = -PAD_INFERIOR_VOX
    affine = affine @ shift

    mask = mask_f > 0.5
    gm = np.where(mask, gm, 0.0).astype(np.float32)
    wm = np.where(mask, wm, 0.0).astype(np.float32)
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.where(mask, 1.0 - gm - wm, 0.0).astype(np.float32)

    # Texture: template intensity (white matter scaled to 1) minus its best tissue-mixture fit.
    t1n = t1 / np.float32(np.mean(t1[wm > 0.9]))
    design = np.stack([gm[mask], wm[mask], csf[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, t1n[mask], rcond=None)
    fit = gm * coef[0] + wm * coef[1] + csf * coef[2]
    texture = np.clip(np.where(mask, t1n - fit, 0.0), -0.3, 0.3).astype(np.float32)

    outside = _distance_outside(mask)
    strong, weak = _overlays(mask.shape, affine, outside, mask)
    ventricles = _ventricles(csf, affine)
    _, _, z = _mni_coords(mask.shape, affine)
    sites = np.argwhere((wm > 0.97) & (z > -5.0))
    return ReferenceHead(
        affine=affine,
        gm=gm,
        wm=wm,
        csf=csf,
        texture=texture,
        outside_mm=outside,
        overlay_strong=strong,
        overlay_weak=weak,
        ventricles=ventricles,
        lesion_sites=sites,
    )


def _shell_labels(outside_mm: np.ndarray, skull_scale: float) -> np.ndarray:
    """Concentric shells by distance from the brain: subarachnoid CSF, inner table, diploe, outer
    table, scalp fat, skin; air beyond."""
    edges = [
        (CSF_RIM_MM, Tissue.CSF),
        (INNER_TABLE_MM * skull_scale, Tissue.SKULL),
        (DIPLOE_MM * skull_scale, Tissue.MARROW),
        (OUTER_TABLE_MM * skull_scale, Tissue.SKULL),
        (SCALP_FAT_MM * skull_scale, Tissue.FAT),
        (SKIN_MM, Tissue.SKIN),
    ]
    radii = np.cumsum([t for t, _ in edges]).astype(np.float32)
    lut = np.array([t for _, t in edges] + [Tissue.AIR], dtype=np.uint8)
    labels = lut[np.searchsorted(radii, outside_mm, side="left")]
    labels[outside_mm <= 0.0] = Tissue.BRAIN
    return labels


def _enlarge_ventricles(
    ref: ReferenceHead, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, grow_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dilate the ventricles by `grow_mm`, turning the tissue they swallow into CSF (hydrocephalus-
    or atrophy-like), with a one-voxel partial-volume ramp so the edge is not a staircase."""
    idx = np.argwhere(ref.ventricles)
    margin = int(math.ceil(grow_mm)) + 3
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, ref.ventricles.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dist = ndi.distance_transform_edt(~ref.ventricles[box]).astype(np.float32)
    inside = (gm[box] + wm[box] + csf[box]) > 0
    frac = np.clip(grow_mm + 0.5 - dist, 0.0, 1.0) * inside
    new_csf = np.maximum(csf[box], frac)
    keep = np.where(csf[box] < 1.0, (1.0 - new_csf) / np.maximum(1.0 - csf[box], 1e-6), 0.0)
    gm[box] *= keep
    wm[box] *= keep
    csf[box] = new_csf
    return gm, wm, csf


def _add_lesions(
    ref: ReferenceHead, wm: np.ndarray, rng: np.random.Generator, n_lesions: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Place soft ellipsoidal white-matter blobs at least 12 mm apart; they replace white matter only."""
    lesion = np.zeros_like(wm)
    order = rng.permutation(len(ref.lesion_sites))
    centres: list[np.ndarray] = []
    for i in order:
        site = ref.lesion_sites[i]
        if all(np.linalg.norm(site - c) >= 12.0 for c in centres):
            centres.append(site)
        if len(centres) == n_lesions:
            break
    for centre in centres:
        radii = rng.uniform(3.0, 6.5, size=3)
        r = int(math.ceil(radii.max())) + 1
        lo = np.maximum(centre - r, 0)
        hi = np.minimum(centre + r + 1, wm.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grids = np.ogrid[box]
        q = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, centre, radii, strict=True)))
        blob = np.clip((1.0 - q) / 0.35, 0.0, 1.0).astype(np.float32)
        take = np.minimum(blob * wm[box], wm[box])
        lesion[box] += take
        wm[box] -= take
    return lesion, wm, centres


def build_subject(traits: SubjectTraits, rng: np.random.Generator) -> SubjectHead:
    """Derive one subject's head from the reference: skull shells, ventricles, lesions."""
    if not 0.5 <= traits.skull_scale <= 2.0:
        raise ValueError(f"skull_scale {traits.skull_scale} outside [0.5, 2.0]")
    ref = reference_head()
    gm, wm, csf = ref.gm.copy(), ref.wm.copy(), ref.csf.copy()
    if traits.enlarged_ventricles:
        gm, wm, csf = _enlarge_ventricles(ref, gm, wm, csf, float(rng.uniform(2.5, 3.5)))
    centres: list[np.ndarray] = []
    if traits.lesion:
        lesion, wm, centres = _add_lesions(ref, wm, rng, int(rng.integers(4, 9)))
    else:
        lesion = np.zeros_like(wm)

    labels = _shell_labels(ref.outside_mm, traits.skull_scale)
    labels = np.where((ref.overlay_weak > 0) & (labels == Tissue.AIR), ref.overlay_weak, labels)
    labels = np.where((ref.overlay_strong > 0) & (labels != Tissue.BRAIN), ref.overlay_strong, labels)
    ventricle_ml = float(np.sum(csf[ref.ventricles]) / 1000.0)
    if traits.enlarged_ventricles:
        grown = csf - ref.csf
        ventricle_ml += float(np.sum(np.clip(grown, 0.0, None)) / 1000.0)
    return SubjectHead(
        affine=ref.affine,
        gm=gm,
        wm=wm,
        csf=csf,
        lesion=lesion,
        texture=ref.texture,
        labels=labels.astype(np.uint8),
        n_lesions=len(centres),
        lesion_ml=float(lesion.sum() / 1000.0),
        ventricle_ml=ventricle_ml,
        lesion_centres_mni=tuple(
            tuple(float(x) for x in ref.affine[:3, :3] @ c + ref.affine[:3, 3])  # type: ignore[misc]
            for c in centres
        ),
    )


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def resample(
    volume: np.ndarray, affine: np.ndarray, pose: Pose, index_to_lps: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Trilinear resampling of an MNI-space volume onto a scanner grid; 0 (air) outside the volume.

    Args:
        volume: array on a grid whose voxel -> MNI RAS mm matrix is `affine`.
        affine: see above.
        pose: where the head sits in the scanner.
        index_to_lps: 4x4 matrix from output array indices to scanner LPS mm.
        shape: output array shape.
    """
    m = np.linalg.inv(affine) @ np.linalg.inv(pose.matrix()) @ _LPS_TO_RAS @ index_to_lps
    return ndi.affine_transform(
        volume, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1, mode="constant", cval=0.0, prefilter=False
    )
