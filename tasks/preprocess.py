"""Per-series preprocessing steps: convert -> register -> skull-strip -> QC, with manifest writes.

Each step is a plain function that takes the previous step's result. A deterministic failure
(unconvertible series, failed registration, ...) is recorded on the series with a reason and the
step returns None, so downstream steps pass None through and the run goes on with other series.
Intermediates go to `derivatives/<subject>/<series>/` and are written atomically by the stage
functions, so a killed run redoes a half-finished series from scratch without duplicates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tasks.context import WarehouseContext
from tasks.record import WorkItem, mark_series
from warehouse.manifest import now

log = logging.getLogger("mrifoundry.preprocess")


@dataclass(frozen=True)
class Converted:
    item: WorkItem
    native: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    converter: str


@dataclass(frozen=True)
class Registered:
    conv: Converted
    registered: Path
    fov: Path
    similarity: float
    fov_coverage: float


@dataclass(frozen=True)
class Stripped:
    reg: Registered
    mask: Path
    backend: str


@dataclass(frozen=True)
class QCResult:
    volume_id: str
    label: str
    decision: str
    reasons: tuple[str, ...]


def _fail(ctx: WarehouseContext, item: WorkItem, stage: str, err: Exception) -> None:
    reason = f"{stage}_failed"
    detail = f"{type(err).__name__}: {err}"[:500]
    log.warning("series %s: %s (%s)", item.series_key, reason, detail)
    mark_series(ctx, item, "failed", reason, detail)


def convert_step(ctx: WarehouseContext, item: WorkItem) -> Converted | None:
    from imaging.convert import convert_series

    out = ctx.derivatives(item.subject_id, item.series_key) / "native.nii.gz"
    try:
        res = convert_series(list(item.files), out)
    except Exception as err:  # noqa: BLE001 - any converter failure is a per-series outcome
        _fail(ctx, item, "conversion", err)
        return None
    return Converted(item, res.nifti_path, tuple(res.shape), tuple(res.spacing), res.converter)


def register_step(ctx: WarehouseContext, conv: Converted | None) -> Registered | None:
    if conv is None:
        return None
    from imaging.register import register_to_mni

    try:
        r = register_to_mni(conv.native, conv.native.parent, contrast=conv.item.label)
    except Exception as err:  # noqa: BLE001
        _fail(ctx, conv.item, "registration", err)
        return None
    return Registered(conv, Path(r.registered_path), Path(r.fov_path), float(r.similarity), float(r.fov_coverage))


def skullstrip_step(
    ctx: WarehouseContext,
    reg: Registered | None,
    backend: str = "auto",
    reference_mask: Stripped | None = None,
) -> Stripped | None:
    """Strip T1w with the selected backend; reuse the study's T1w mask for T2w/FLAIR when there is one.

    Both images live on the same MNI model grid after registration, so the T1w mask applies as is
    (anatomy is shared across the contrasts of one session, and deepbet is trained on T1w).
    """
    if reg is None:
        return None
    from imaging.skullstrip import mask_from_reference, select_backend

    item = reg.conv.item
    out = reg.registered.parent / "mask.nii.gz"
    try:
        if item.label != "T1w" and reference_mask is not None:
            mask_from_reference(reference_mask.mask, out)
            return Stripped(reg, out, f"t1w-mask:{reference_mask.backend}")
        impl, why = select_backend(backend)
        log.info("series %s: skull-strip with %s (%s)", item.series_key, impl.name, why)
        impl.strip(reg.registered, out)
        return Stripped(reg, out, impl.name)
    except Exception as err:  # noqa: BLE001
        _fail(ctx, item, "skullstrip", err)
        return None


def qc_step(ctx: WarehouseContext, s: Stripped | None) -> QCResult | None:
    """Compute metrics, decide, and write the volume + QC rows; mark the series curated."""
    if s is None:
        return None
    from imaging.qc import QCThresholds, compute_metrics, decide
    from tasks.qc_rows import qc_row

    reg, conv = s.reg, s.reg.conv
    item = conv.item
    try:
        metrics = compute_metrics(conv.native, reg.registered, s.mask, reg.fov, reg.similarity, reg.fov_coverage)
        decision, reasons = decide(metrics, QCThresholds(), contrast=item.label)
    except Exception as err:  # noqa: BLE001
        _fail(ctx, item, "qc", err)
        return None
    m = ctx.manifest
    m.upsert(
        "volumes",
        [
            {
                "volume_id": item.volume_id,
                "series_key": item.series_key,
                "subject_id": item.subject_id,
                "study_id": item.study_id,
                "label": item.label,
                "manufacturer": item.manufacturer,
                "model_name": item.model_name,
                "native_path": ctx.rel(conv.native),
                "registered_path": ctx.rel(reg.registered),
                "mask_path": ctx.rel(s.mask),
                "fov_path": ctx.rel(reg.fov),
                "native_shape": list(conv.shape),
                "native_spacing": [float(x) for x in conv.spacing],
                "converter": conv.converter,
                "similarity": reg.similarity,
                "fov_coverage": reg.fov_coverage,
                "skullstrip_backend": s.backend,
                "updated_at": now(),
            }
        ],
    )
    m.upsert("qc", [qc_row(item.volume_id, metrics, decision, reasons)])
    mark_series(ctx, item, "curated", None, f"qc {decision}" + (f": {', '.join(reasons)}" if reasons else ""))
    return QCResult(item.volume_id, item.label, decision, tuple(reasons))
