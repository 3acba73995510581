"""All QC metrics of one volume from the files registration and skull stripping wrote.

Where each metric is measured, and why:
    * Noise and everything about the air (background std, FBER, QI1, EFC) on the **native** image,
      before stripping or resampling: registration interpolates and smooths away noise, and stripping
      removes the air the noise is measured in. INU and the tissue SNR too (``imaging.qc.native``): the
      registered image has already had a bias field divided out and its noise averaged by resampling;
      the brain and WM are found there by mapping the model-grid masks back through the registration's
      affine.
    * Signal (brain, GM, WM means; CJV, WM2MAX) on the **registered** image on the model grid, where the
      MNI tissue maps say which voxels are GM and WM. Registration keeps the native intensity units (its
      N4 field is normalised to mean 1), so the two can be divided.

Many exports are zero-filled outside the head (defacing, background suppression, pre-stripped data:
t1w_chris and flair_lesions here). Their background holds no noise, so SNR, CNR and FBER are reported
as NaN ("not measurable") instead of a meaningless huge value, and the decision skips those rules; the
metrics that need no background are still there for the rules and the group-wise outlier step
(``imaging.qc.groups``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from imaging.qc.masks import background_mask, head_mask
from imaging.qc.metrics import (
    GM_MIN_PROB,
    WM_MIN_PROB,
    artifact_fraction,
    background_noise,
    cjv,
    cnr,
    dice,
    efc,
    fber,
    snr,
    tissue_values,
    wm2max,
)
from imaging.qc.native import load_bias_field, native_tissue_metrics


def compute_metrics(
    native: Path, registered: Path, mask: Path, fov: Path, similarity: float, fov_coverage: float
) -> dict[str, float]:
    """Metrics of one volume (all floats so the row goes straight into the warehouse).

    Native image (before stripping and resampling): background noise (the SNR/CNR denominators), EFC,
    FBER, QI1, INU and the tissue SNR. Registered image (model grid, N4-corrected, MNI tissue priors):
    brain mean, WM/GM means, CJV, WM2MAX.

    Args:
        native: the converted image before registration (noise is measured here).
        registered: the model-grid image from ``register_to_mni`` (signal is measured here). Its folder
            holds the registration's affine (``register.TRANSFORM_NAME``), used to find the brain and WM in
            the native image (INU, tissue SNR), and its N4 field (``native.BIAS_FIELD_NAME``), reused for
            INU and tissue SNR instead of a second fit (one is fitted here only when it is missing).
        mask: the brain mask on the model grid (skull stripping).
        fov: the warped field of view on the model grid.
        similarity: from the registration result, passed through.
        fov_coverage: from the registration result, passed through.

    Returns:
        ``snr`` (background-based), ``snr_wm`` (tissue-based), ``cnr``, ``cjv``, ``efc``, ``fber``,
        ``wm2max``, ``inu``, ``qi1``, ``brain_volume_ml`` (mask voxels × voxel volume), ``mask_mni_dice``
        (Dice of the brain mask with the MNI brain mask: after a correct affine the two coincide), ``brain_mean``,
        ``background_std``, ``background_zero_fraction``, ``fov_coverage``, ``similarity``, ``n_slices``
        (voxels along the shortest native axis, i.e. the slice count of a 2D stack), ``has_nan``
        (1.0 if the native image holds NaN or ±inf). See each function for the formula.
    """
    from imaging.register import TRANSFORM_NAME
    from imaging.templates import model_grid_brain_mask, model_grid_gm, model_grid_wm

    nat = nib.load(str(native))
    nat_data = np.asarray(nat.get_fdata(dtype=np.float32))
    if nat_data.ndim == 4 and nat_data.shape[3] == 1:
        nat_data = nat_data[..., 0]
    zooms = tuple(float(z) for z in nat.header.get_zooms()[:3])
    # The air's metrics need only the native image; they run in a second thread while this one measures
    # the registered image and the native tissue. QC is otherwise single-threaded numpy, and much of it
    # releases the GIL, so on 2 cores this takes ≈0.3 s off a 1 mm head's ≈2 s.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrifoundry-qc-air") as pool:
        air_future = pool.submit(_air_metrics, nat_data, zooms)

        reg = np.nan_to_num(np.asarray(nib.load(str(registered)).get_fdata(dtype=np.float32)))
        mask_img = nib.load(str(mask))
        brain = np.asarray(mask_img.dataobj) > 0
        in_fov = np.asarray(nib.load(str(fov)).dataobj) > 0
        voxel_ml = float(np.prod(mask_img.header.get_zooms()[:3])) / 1000.0
        region = brain & in_fov
        brain_mean = float(reg[region].mean()) if region.any() else float("nan")
        wm = tissue_values(reg, model_grid_wm().get_fdata(dtype=np.float32), region, min_prob=WM_MIN_PROB)
        gm = tissue_values(reg, model_grid_gm().get_fdata(dtype=np.float32), region, min_prob=GM_MIN_PROB)
        wm_mean = float(wm.mean()) if wm.size else float("nan")
        gm_mean = float(gm.mean()) if gm.size else float("nan")
        mask_grid = nib.Nifti1Image(brain.astype(np.uint8), mask_img.affine)
        transform = Path(registered).parent / TRANSFORM_NAME
        bias = load_bias_field(Path(registered).parent)
        native = native_tissue_metrics(nat_data, nat.affine, mask_grid, model_grid_wm(), transform, bias)
        air = air_future.result()
    bg_std = air["background_std"]

    return {
        "snr": snr(brain_mean, bg_std),
        "snr_wm": native["snr_wm"],
        "cnr": cnr(wm_mean, gm_mean, bg_std),
        "cjv": cjv(wm, gm),
        "efc": air["efc"],
        "fber": air["fber"],
        "wm2max": wm2max(wm, reg[in_fov]),
        "inu": native["inu"],
        "qi1": air["qi1"],
        "brain_volume_ml": float(brain.sum()) * voxel_ml,
        "mask_mni_dice": dice(brain, np.asarray(model_grid_brain_mask().dataobj) > 0),
        "brain_mean": brain_mean,
        "background_std": bg_std,
        "background_zero_fraction": air["background_zero_fraction"],
        "fov_coverage": float(fov_coverage),
        "similarity": float(similarity),
        "n_slices": float(min(nat_data.shape[:3])),
        "has_nan": air["has_nan"],
    }


def _air_metrics(nat_data: np.ndarray, zooms: tuple[float, ...]) -> dict[str, float]:
    """What the native image alone gives: the air's noise, EFC, FBER, QI1 and whether it holds NaN."""
    has_nan = not bool(np.isfinite(nat_data).all())
    head = head_mask(nat_data)
    bg = background_mask(nat_data, zooms, head=head)
    bg_values = nat_data[bg]
    head_values = nat_data[head & np.isfinite(nat_data)]
    head_median = float(np.median(head_values)) if head_values.size else float("nan")
    return {
        "background_std": background_noise(bg_values),
        "background_zero_fraction": float(np.mean(bg_values == 0)) if bg_values.size else float("nan"),
        "efc": efc(nat_data),
        "fber": fber(head_values, bg_values),
        "qi1": artifact_fraction(nat_data, bg, signal=head_median),
        "has_nan": 1.0 if has_nan else 0.0,
    }
