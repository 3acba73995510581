"""INU and tissue SNR in the native image, with ANTs: N4's bias field and masks mapped back from MNI.

Measured natively because the registered image has already had a bias field divided out and its noise
averaged by resampling. The brain and WM are found by mapping the model-grid masks back through the
inverse of the registration's affine.
"""

from __future__ import annotations

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
coarse grid loses nothing that matters, and the fit takes ≈ 1-2 s."""

N4_SPLINE_DISTANCE_MM = 200.0
N4_QC_CONVERGENCE = {"iters": [50, 50, 50], "tol": 1e-7}
"""N4 settings for *measuring* the field, not register.py's (tuned for speed as a correction). With
register.py's early stop (25/25/15 iterations, tol 1e-6) N4 recovered only 10 % of a field injected into
flair_lesions (measured spread 0.05 against 0.48); with B-spline control points every 200 mm (ANTs'
recommended N4 distance), three fitting levels (200 → 100 → 50 mm) and 50 iterations each it measured
0.39, and 0.31/0.38/0.42 against 0.29/0.34/0.41 on t1w_chris, a synthetic FLAIR and t2w_head, while its
field kept tracking the injected one (r ≥ 0.91 on every test volume)."""

BRAIN_FALLBACK_ERODE_MM = 10.0
"""Without the registration's transform (volumes not written by ``register_to_mni``), INU is measured in
the head mask eroded by 10 mm, roughly the brain inside scalp and skull."""


def _to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    import ants

    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")  # else ANTs warns about units for every image
    return ants.from_nibabel_nifti(img)


def native_tissue_metrics(
    native_data: np.ndarray,
    affine: np.ndarray,
    brain_grid: nib.Nifti1Image,
    wm_grid: nib.Nifti1Image,
    transform: Path | None,
) -> dict[str, float]:
    """INU and tissue SNR measured in the native image: ``{"inu": ..., "snr_wm": ...}``.

    1. The bias field comes from ``ants.n4_bias_field_correction(return_bias_field=True)`` on the native
       image at ``N4_SPACING_MM`` inside its Otsu head mask. It must be the native image: the registered
       one already had register.py's field divided out.
    2. The brain is the model-grid brain mask mapped back through the inverse of the registration's affine
       (``transform``); INU = ``inu_spread`` of the field there.
    3. ``snr_wm`` = ``snr_wm`` of the native intensities, divided by the field brought to the native grid,
       where the MNI WM probability mapped the same way is ≥ ``WM_MIN_PROB`` inside the brain: native
       voxels keep their own noise, which the registered image has partly averaged away (anti-aliasing
       and interpolation onto the coarser model grid).

    Without ``transform`` (a volume not written by ``register_to_mni``) INU falls back to the head eroded
    by ``BRAIN_FALLBACK_ERODE_MM`` and ``snr_wm`` is NaN (there is no WM map in native space). Either is
    NaN when N4 fails or its region is empty.
    """
    import ants
    from scipy import ndimage

    out = {"inu": float("nan"), "snr_wm": float("nan")}
    data = np.nan_to_num(np.asarray(native_data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    full = _to_ants(data, affine)
    coarse = ants.resample_image(full, (N4_SPACING_MM,) * 3, False, 0)
    head = head_mask(coarse.numpy())
    if head.sum() < 10:
        return out
    try:
        field = ants.n4_bias_field_correction(
            coarse,
            mask=coarse.new_image_like(head.astype(np.float32)),
            shrink_factor=4,
            convergence=N4_QC_CONVERGENCE,
            spline_param=N4_SPLINE_DISTANCE_MM,
            return_bias_field=True,
        )
    except Exception:  # noqa: BLE001 - a failed fit means "not measured", not a failed QC run
        return out
    has_transform = transform is not None and Path(transform).is_file()
    region = np.zeros_like(head)
    if has_transform:
        brain = _to_ants(np.asarray(brain_grid.dataobj, dtype=np.float32), brain_grid.affine)
        tl = [str(transform)]
        mapped = ants.apply_transforms(coarse, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
        region = head & (mapped.numpy() > 0.5)
        wm = _to_ants(wm_grid.get_fdata(dtype=np.float32), wm_grid.affine)
        wm_native = ants.apply_transforms(full, wm, tl, interpolator="linear", whichtoinvert=[True]).numpy()
        brain_native = ants.apply_transforms(full, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
        field_native = ants.resample_image_to_target(field, full, interp_type="linear").numpy()
        # The 2 mm grid may stop short of the native grid's last voxels, where the interpolated field
        # falls towards 0; dividing by it there would create huge "WM" values, so those voxels are left out.
        typical = float(np.median(field.numpy()[head]))
        sel = (wm_native >= WM_MIN_PROB) & (brain_native.numpy() > 0.5) & (field_native > 0.5 * typical)
        if sel.sum() >= 100:
            out["snr_wm"] = snr_wm(data[sel] / field_native[sel])
    if region.sum() < 10:
        dist = ndimage.distance_transform_edt(head, sampling=(N4_SPACING_MM,) * 3)
        region = dist > BRAIN_FALLBACK_ERODE_MM
    if region.sum() < 10:
        region = head
    out["inu"] = inu_spread(field.numpy()[region])
    return out
