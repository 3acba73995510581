"""INU and tissue SNR in the native image, with ANTs: N4's bias field and masks mapped back from MNI.

Measured natively because the registered image has already had a bias field divided out and its noise
averaged by resampling. The brain and WM are found by mapping the model-grid masks back through the
inverse of the registration's affine.

One N4 fit serves registration and QC (``fit_bias_field``): ``register_to_mni`` fits it with the QC
settings below, divides it out of its input and output, and writes it beside the registered image
(``BIAS_FIELD_NAME``, with the head mask it was fitted in, ``BIAS_HEAD_NAME``); QC reads it back
(``load_bias_field``) instead of fitting a second field (≈1 s of a 1 mm T1w on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from imaging.qc.masks import head_mask
from imaging.qc.metrics import WM_MIN_PROB, inu_spread, snr_wm

if TYPE_CHECKING:
    import ants


N4_SPACING_MM = 2.0
"""The bias field for INU is fitted on the native image resampled to 2 mm: the field is smooth, so the
coarse grid loses nothing that matters, and the fit takes ≈1 s."""

N4_SPLINE_DISTANCE_MM = 200.0
N4_QC_CONVERGENCE = {"iters": [10, 10, 60], "tol": 1e-7}
"""N4 settings for *measuring* the field, not only correcting it. With an early stop (25/25/15
iterations, tol 1e-6) N4 recovered only 10 % of a field injected into flair_lesions (measured spread 0.05
against 0.48); with B-spline control points every 200 mm (ANTs' recommended N4 distance), three fitting
levels (200 → 100 → 50 mm) and 50 iterations each it measured 0.39, and 0.31/0.38/0.42 against
0.29/0.34/0.41 on t1w_chris, a synthetic FLAIR and t2w_head, while its field kept tracking the injected one
(r ≥ 0.91 on every test volume).

The spread is set by the finest level: N4 never reaches the tolerance, every iteration costs the same
(≈20 ms on the shrunk 8 mm grid), and the two coarse levels settle within a few iterations. 10/10/60
instead of 50/50/50 costs 45 % less (1.9 against 3.3 CPU s on t1w_chris) and measures the same field: r
≥ 0.997 with the 50/50/50 field in the head, brain INU of t1w_chris/t2w_head/flair_lesions 0.055/0.274/0.155
against 0.054/0.276/0.156, snr_wm within 0.1 %, a phantom's injected spread 0.435 against 0.419 (truth
0.415). Fewer last-level iterations lose sensitivity (10/10/50: t2w_head 0.244); a coarser fitting grid
(shrink 5-6) or a finer spline distance (100 mm, 2 levels) changes the field itself (r 0.66-0.94)."""

BIAS_FIELD_NAME = "n4_field.nii.gz"
BIAS_HEAD_NAME = "n4_head.nii.gz"
"""Files ``register_to_mni`` writes beside the registered image: the N4 field on the native image's 2 mm
grid (float32, mean 1 over the head) and the head mask it was fitted in (uint8, same grid)."""

BRAIN_FALLBACK_ERODE_MM = 10.0
"""Without the registration's transform (volumes not written by ``register_to_mni``), INU is measured in
the head mask eroded by 10 mm, roughly the brain inside scalp and skull."""


@dataclass(frozen=True)
class BiasField:
    """An N4 field on the native image's ``N4_SPACING_MM`` grid and the head mask it was fitted in.

    Attributes:
        field: ANTs image of the multiplicative field (strictly positive; its scale is arbitrary).
        head: bool array on the field's grid, the ``head_mask`` of the 2 mm native image.
    """

    field: ants.ANTsImage
    head: np.ndarray


def _to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    import ants

    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")  # else ANTs warns about units for every image
    return ants.from_nibabel_nifti(img)


def coarse_native(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """The native image resampled to ``N4_SPACING_MM`` (NaN and ±inf as 0), the grid N4 is fitted on."""
    clean = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return resample_to_spacing(_to_ants(clean, affine), N4_SPACING_MM)


def resample_to_spacing(image: ants.ANTsImage, spacing_mm: float) -> ants.ANTsImage:
    """``ants.resample_image(image, (spacing_mm,) * 3, False, 0)`` computed as three 1D passes.

    The same grid as ANTs' ResampleImage (origin and direction kept, ``int(n · s / spacing_mm + 0.5)``
    voxels along an axis of n voxels of s mm) and the same values (linear interpolation, the last voxel
    repeated up to half a voxel past the edge, 0 beyond; equal to float32 rounding): the grid is axis
    aligned with the image, so trilinear interpolation factors into one linear interpolation per axis.
    ITK evaluates every output voxel through the full interpolator instead, 4× the CPU time (0.48 against
    0.12 s for a 0.88 mm T1w); registration and QC both fit their N4 field on this grid.
    """
    import ants

    out = image.numpy().astype(np.float32, copy=False)
    for axis in range(3):
        old_mm = float(image.spacing[axis])
        size = int(old_mm * image.shape[axis] / spacing_mm + 0.5)  # ResampleImage's rounding, bit for bit
        out = _interpolate_axis(out, axis, np.arange(size, dtype=np.float64) * (spacing_mm / old_mm))
    return ants.from_numpy(
        np.ascontiguousarray(out),
        origin=tuple(image.origin),
        spacing=(float(spacing_mm),) * 3,
        direction=np.asarray(image.direction),
    )


def _interpolate_axis(data: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    """``data`` linearly interpolated along ``axis`` at continuous indices ``pos`` (≥ 0), as ITK does.

    ITK's linear interpolator repeats the last voxel up to half a voxel past it and returns the default
    value 0 beyond that.
    """
    n = data.shape[axis]
    low = np.minimum(np.floor(pos).astype(np.intp), n - 1)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * data.ndim
    shape[axis] = pos.size
    weight = (pos - low).astype(np.float32).reshape(shape)
    inside = (pos < n - 0.5).astype(np.float32).reshape(shape)
    below, above = np.take(data, low, axis=axis), np.take(data, high, axis=axis)
    return (below + weight * (above - below)) * inside


def fit_bias_field(coarse: ants.ANTsImage) -> BiasField | None:
    """N4 with the QC settings on ``coarse`` (``coarse_native``) inside its head mask; None if it fails.

    The only N4 fit of a volume: registration divides this field out and QC measures INU and tissue SNR
    with it, so both see the same correction. None when the head is empty (< 10 voxels) or N4 raises.
    """
    import ants

    head = head_mask(coarse.numpy())
    if head.sum() < 10:
        return None
    try:
        field = ants.n4_bias_field_correction(
            coarse,
            mask=coarse.new_image_like(head.astype(np.float32)),
            shrink_factor=4,
            convergence=N4_QC_CONVERGENCE,
            spline_param=N4_SPLINE_DISTANCE_MM,
            return_bias_field=True,
        )
    except Exception:  # noqa: BLE001 - a failed fit means "not corrected / not measured", not a failure
        return None
    return BiasField(field=field, head=head)


def load_bias_field(folder: Path) -> BiasField | None:
    """The field ``register_to_mni`` wrote into ``folder``, or None when it wrote none (N4 off or failed)."""
    import ants

    field_path, head_path = Path(folder) / BIAS_FIELD_NAME, Path(folder) / BIAS_HEAD_NAME
    if not (field_path.is_file() and head_path.is_file()):
        return None
    field = ants.image_read(str(field_path), pixeltype="float")
    head = ants.image_read(str(head_path)).numpy() > 0.5
    if head.shape != field.shape:
        return None
    return BiasField(field=field, head=head)


def native_tissue_metrics(
    native_data: np.ndarray,
    affine: np.ndarray,
    brain_grid: nib.Nifti1Image,
    wm_grid: nib.Nifti1Image,
    transform: Path | None,
    bias: BiasField | None = None,
) -> dict[str, float]:
    """INU and tissue SNR measured in the native image: ``{"inu": ..., "snr_wm": ...}``.

    1. The bias field is ``bias`` (registration's, ``load_bias_field``) or, without one, a new
       ``fit_bias_field`` of the native image at ``N4_SPACING_MM`` inside its head mask. It must be the
       native image's field: the registered image already had it divided out.
    2. The brain is the model-grid brain mask mapped back through the inverse of the registration's affine
       (``transform``); INU = ``inu_spread`` of the field there.
    3. ``snr_wm`` = ``snr_wm`` of the native intensities, divided by the field brought to the native grid,
       where the MNI WM probability mapped the same way is ≥ ``WM_MIN_PROB`` inside the brain: native
       voxels keep their own noise, which the registered image has partly averaged away (anti-aliasing
       and interpolation onto the coarser model grid). Only the native voxels inside the brain's bounding
       box (the model-grid brain's box mapped through the affine) are resampled: no others can qualify.

    Without ``transform`` (a volume not written by ``register_to_mni``) INU falls back to the head eroded
    by ``BRAIN_FALLBACK_ERODE_MM`` and ``snr_wm`` is NaN (there is no WM map in native space). Either is
    NaN when N4 fails or its region is empty.
    """
    import ants
    from scipy import ndimage

    out = {"inu": float("nan"), "snr_wm": float("nan")}
    data = np.nan_to_num(np.asarray(native_data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if bias is None:
        bias = fit_bias_field(coarse_native(data, affine))
    if bias is None:
        return out
    field, head = bias.field, bias.head
    has_transform = transform is not None and Path(transform).is_file()
    region = np.zeros_like(head)
    if has_transform:
        brain_data = np.asarray(brain_grid.dataobj, dtype=np.float32)
        brain = _to_ants(brain_data, brain_grid.affine)
        tl = [str(transform)]
        mapped = ants.apply_transforms(field, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
        region = head & (mapped.numpy() > 0.5)
        box = _native_box(brain_data > 0.5, brain_grid.affine, Path(transform), affine, data.shape[:3])
        if box is not None:
            sub = data[box]
            corner = np.eye(4)
            corner[:3, 3] = [b.start for b in box]
            box_affine = affine @ corner
            full = _to_ants(sub, box_affine)
            brain_box = ants.apply_transforms(full, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
            voxels = np.nonzero(brain_box.numpy() > 0.5)
            wm_data = wm_grid.get_fdata(dtype=np.float32)
            wm_native = _wm_at(voxels, box_affine, Path(transform), wm_data, wm_grid.affine)
            if wm_native is None:  # not a plain affine: ANTs resamples the WM map over the whole box
                wm = _to_ants(wm_data, wm_grid.affine)
                wm_box = ants.apply_transforms(full, wm, tl, interpolator="linear", whichtoinvert=[True]).numpy()
                wm_native = wm_box[voxels]
            wm_voxels = tuple(v[wm_native >= WM_MIN_PROB] for v in voxels)
            field_native = _field_at(field, box_affine, wm_voxels)
            # The 2 mm grid may stop short of the native grid's last voxels, where the interpolated field
            # falls towards 0; dividing by it there would create huge "WM" values, so those are left out.
            typical = float(np.median(field.numpy()[head]))
            sel = field_native > 0.5 * typical
            if sel.sum() >= 100:
                out["snr_wm"] = snr_wm(sub[wm_voxels][sel] / field_native[sel])
    if region.sum() < 10:
        dist = ndimage.distance_transform_edt(head, sampling=(N4_SPACING_MM,) * 3)
        region = dist > BRAIN_FALLBACK_ERODE_MM
    if region.sum() < 10:
        region = head
    out["inu"] = inu_spread(field.numpy()[region])
    return out


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _wm_at(
    voxels: tuple[np.ndarray, ...], box_affine: np.ndarray, transform: Path, wm: np.ndarray, grid_affine: np.ndarray
) -> np.ndarray | None:
    """The model-grid WM probability at box voxels, as ``ants.apply_transforms`` (linear, inverse) gives it.

    ANTs would resample the map over the whole box (≈4 M voxels of a 1 mm head) to read it at the brain's
    voxels; here the affine is written out (box index → native → MNI through the inverse registration
    → model-grid index, ITK's LPS coordinates) and the map is interpolated at those voxels only, and only
    where one of the 8 neighbours reaches ``WM_MIN_PROB`` (elsewhere no interpolated value can). float32
    like ANTs' output. None when the transform is not a plain affine.
    """
    import ants

    tx = ants.read_transform(str(transform))
    params = np.asarray(tx.parameters, dtype=np.float64)
    if params.size != 12:
        return None
    matrix, centre = params[:9].reshape(3, 3), np.asarray(tx.fixed_parameters, dtype=np.float64)
    offset = params[9:] + centre - matrix @ centre  # MNI (LPS) -> native (LPS): y = matrix · x + offset
    to_grid = np.linalg.inv(grid_affine)
    rotate = to_grid[:3, :3] @ _RAS_TO_LPS @ np.linalg.inv(matrix)
    linear = rotate @ _RAS_TO_LPS @ box_affine[:3, :3]
    shift = rotate @ (_RAS_TO_LPS @ box_affine[:3, 3] - offset) + to_grid[:3, 3]
    cont = linear @ np.stack(voxels).astype(np.float64) + shift[:, None]  # (3, n) continuous grid indices
    out = np.zeros(cont.shape[1], dtype=np.float32)
    inside = np.all((cont >= -0.5) & (cont < np.asarray(wm.shape)[:, None] - 0.5), axis=0)
    # A linear interpolation is a weighted mean of its 8 neighbours: it reaches the WM threshold only
    # where one of them does.
    reach = wm >= WM_MIN_PROB
    for axis in range(3):  # neighbour i + 1 along each axis, the last voxel standing for itself
        ahead = np.concatenate(
            [np.take(reach, range(1, reach.shape[axis]), axis=axis), np.take(reach, [-1], axis=axis)], axis=axis
        )
        reach = reach | ahead
    base = np.clip(np.floor(cont), 0, np.asarray(wm.shape)[:, None] - 1).astype(np.intp)
    inside &= reach[base[0], base[1], base[2]]
    out[inside] = _trilinear(wm, np.maximum(cont[:, inside], 0.0)).astype(np.float32)
    return out


def _trilinear(volume: np.ndarray, cont: np.ndarray) -> np.ndarray:
    """ITK's linear interpolation of ``volume`` at continuous indices ``cont`` (3, n), all ≥ 0 and inside.

    Neighbours past the last voxel repeat it (the half voxel ITK still counts as inside); float64 like
    ITK's internal arithmetic, interpolating along the first axis, then the second, then the third.
    """
    shape = volume.shape
    flat = np.ascontiguousarray(volume, dtype=np.float64).ravel()
    base = [np.minimum(np.floor(c).astype(np.intp), n - 1) for c, n in zip(cont, shape, strict=True)]
    dist = [c - b for c, b in zip(cont, base, strict=True)]
    strides = (shape[1] * shape[2], shape[2], 1)
    # the step to the next voxel along each axis, 0 on the last one (ITK repeats it)
    step = [np.where(b < n - 1, st, 0) for b, n, st in zip(base, shape, strides, strict=True)]
    origin = base[0] * strides[0] + base[1] * strides[1] + base[2]

    def along_x(offset: np.ndarray | int) -> np.ndarray:
        low = flat.take(origin + offset)
        return low + (flat.take(origin + offset + step[0]) - low) * dist[0]

    y0 = along_x(0)
    y0 = y0 + (along_x(step[1]) - y0) * dist[1]
    y1 = along_x(step[2])
    y1 = y1 + (along_x(step[1] + step[2]) - y1) * dist[1]
    return y0 + (y1 - y0) * dist[2]


def _field_at(field: ants.ANTsImage, box_affine: np.ndarray, voxels: tuple[np.ndarray, ...]) -> np.ndarray:
    """The N4 field (its own 2 mm grid) linearly interpolated at box voxels, float32, 0 outside its grid.

    The values ``ants.resample_image_to_target(field, box)`` holds at those voxels: the box is a block of
    the native image the field was resampled from, so each box axis runs along one field axis.
    """
    import ants

    box = nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), box_affine)
    box.header.set_xyzt_units("mm", "sec")
    target = ants.from_nibabel_nifti(box)  # the box's ITK geometry, as ANTs would build it
    to_index = np.linalg.inv(np.asarray(field.direction, dtype=np.float64) @ np.diag(field.spacing))
    scale = to_index @ np.asarray(target.direction, dtype=np.float64) @ np.diag(target.spacing)
    offset = to_index @ (np.asarray(target.origin, dtype=np.float64) - np.asarray(field.origin, dtype=np.float64))
    cont = scale @ np.stack(voxels).astype(np.float64) + offset[:, None]
    data = field.numpy()
    inside = np.all((cont >= -0.5) & (cont < np.asarray(data.shape)[:, None] - 0.5), axis=0)
    out = np.zeros(cont.shape[1], dtype=np.float32)
    out[inside] = _trilinear(data, np.maximum(cont[:, inside], 0.0)).astype(np.float32)
    return out


def _native_box(
    brain: np.ndarray, grid_affine: np.ndarray, transform: Path, native_affine: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    """Native voxel box holding every voxel whose nearest model-grid voxel (through ``transform``) is brain.

    A native voxel samples the grid at the inverse-mapped point, so it can be brain only if that point
    lies in the brain's grid box grown by half a voxel; the native image of that box under the forward
    affine (native ← MNI, ITK's LPS coordinates) is a parallelepiped spanned by its 8 corners. One voxel
    of margin absorbs rounding. None when the brain is empty or the box misses the image.
    """
    import ants

    hit = np.argwhere(brain)
    if hit.size == 0:
        return None
    lo, hi = hit.min(axis=0) - 0.5, hit.max(axis=0) + 0.5
    tx = ants.read_transform(str(transform))
    to_native = np.linalg.inv(native_affine)
    points = []
    for corner in np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T:
        ras = grid_affine[:3, :3] @ corner + grid_affine[:3, 3]
        moved = np.asarray(tx.apply_to_point(tuple(float(v) for v in _RAS_TO_LPS @ ras)), dtype=float)
        points.append(to_native[:3, :3] @ (_RAS_TO_LPS @ moved) + to_native[:3, 3])
    pts = np.asarray(points)
    start = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 2, np.asarray(shape))
    if (stop <= start).any():
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
