"""Per-series preprocessing stages: convert -> register -> skull-strip -> QC.

Each stage is a plain function that takes the previous stage's result and raises `StageError` (with
the stage's reason code) when the series cannot go on. The stages write only derivatives, never the
manifest: a Dask worker on another machine runs them (`tasks.series_unit`) and the flow process, the
only writer of the warehouse, records the outcome. Intermediates go to `derivatives/<subject>/<series>/`
and are written atomically by the stage functions, so a killed run redoes a half-finished series from
scratch without duplicates.

The `*_step` wrappers keep the older one-step-at-a-time interface (record a failure on the series and
return None) for callers that run a single stage in-process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.deid import Pseudonymizer
from tasks.context import WarehouseContext
from tasks.record import WorkItem, mark_series, redact_paths
from warehouse.manifest import now

log = logging.getLogger("mrifoundry.preprocess")


class StageError(Exception):
    """A deterministic per-series failure: recorded on the series as `<stage>_failed`, never retried."""

    def __init__(self, stage: str, err: BaseException) -> None:
        self.stage = stage
        self.reason = f"{stage}_failed"
        self.detail = f"{type(err).__name__}: {err}"[:500]
        super().__init__(f"{self.reason}: {self.detail}")


@dataclass(frozen=True)
class ReferenceMask:
    """The brain mask a T2w/FLAIR reuses: its study's T1w mask on the same MNI model grid."""

    mask: Path
    backend: str
    series_key: str


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
class Assessed:
    stripped: Stripped
    metrics: dict[str, Any]
    decision: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class QCResult:
    volume_id: str
    label: str
    decision: str
    reasons: tuple[str, ...]


def convert(ctx: WarehouseContext, item: WorkItem) -> Converted:
    """DICOM to NIfTI; a BIDS item's NIfTI is already the converted image and is only copied (RAS)."""
    from imaging.convert import convert_series

    out = ctx.derivatives(item.subject_id, item.series_key) / "native.nii.gz"
    if item.kind == "nifti":
        from imaging.bids import nifti_as_native

        try:
            shape, spacing = nifti_as_native(item.files[0], out)
        except Exception as err:  # noqa: BLE001 - an unreadable image is a per-series outcome
            raise StageError("conversion", err) from err
        return Converted(item, out, shape, spacing, "bids-nifti")
    try:
        res = convert_series(list(item.files), out)
    except Exception as err:  # noqa: BLE001 - any converter failure is a per-series outcome
        raise StageError("conversion", err) from err
    return Converted(item, res.nifti_path, tuple(res.shape), tuple(res.spacing), res.converter)


def register(conv: Converted) -> Registered:
    from imaging.register import register_to_mni

    try:
        r = register_to_mni(conv.native, conv.native.parent, contrast=conv.item.label)
    except Exception as err:  # noqa: BLE001
        raise StageError("registration", err) from err
    return Registered(conv, Path(r.registered_path), Path(r.fov_path), float(r.similarity), float(r.fov_coverage))


def skullstrip(reg: Registered, backend: str = "auto", reference: ReferenceMask | Stripped | None = None) -> Stripped:
    """Strip a T1w with the selected backend; a T2w/FLAIR reuses its study's T1w mask when there is one.

    Both images live on the same MNI model grid after registration, so the T1w mask applies as is
    (anatomy is shared across the contrasts of one session, and deepbet is trained on T1w). Which mask
    a T2w gets is decided by the flow from the warehouse (`tasks.series_unit.reference_masks`), so a
    resumed run hands it the same mask as an uninterrupted one.
    """
    from imaging.skullstrip import mask_from_reference, select_backend

    item = reg.conv.item
    out = reg.registered.parent / "mask.nii.gz"
    try:
        if item.label != "T1w" and reference is not None:
            mask_from_reference(reference.mask, out)
            return Stripped(reg, out, f"t1w-mask:{reference.backend}")
        impl, why = select_backend(backend)
        log.info("series %s: skull-strip with %s (%s)", item.series_key, impl.name, why)
        impl.strip(reg.registered, out)
        return Stripped(reg, out, impl.name)
    except Exception as err:  # noqa: BLE001
        raise StageError("skullstrip", err) from err


def assess(s: Stripped) -> Assessed:
    """QC metrics and the automatic decision (no manifest write)."""
    from imaging.qc import QCThresholds, compute_metrics, decide

    reg, conv = s.reg, s.reg.conv
    try:
        metrics = compute_metrics(conv.native, reg.registered, s.mask, reg.fov, reg.similarity, reg.fov_coverage)
        decision, reasons = decide(metrics, QCThresholds(), contrast=conv.item.label)
    except Exception as err:  # noqa: BLE001
        raise StageError("qc", err) from err
    return Assessed(s, metrics, decision, tuple(reasons))


def volume_row(ctx: WarehouseContext, s: Stripped) -> dict[str, Any]:
    reg, conv = s.reg, s.reg.conv
    item = conv.item
    return {
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


def record_volume(
    ctx: WarehouseContext, item: WorkItem, volume: dict[str, Any], qc: dict[str, Any], decision: str, reasons
) -> QCResult:
    """Write the volume and QC rows, then mark the series curated (last, so a kill in between redoes it)."""
    m = ctx.manifest
    m.upsert("volumes", [volume])
    m.upsert("qc", [qc])
    mark_series(ctx, item, "curated", None, f"qc {decision}" + (f": {', '.join(reasons)}" if reasons else ""))
    return QCResult(item.volume_id, item.label, decision, tuple(reasons))


def record_failure(ctx: WarehouseContext, item: WorkItem, reason: str, detail: str) -> None:
    detail = redact_paths(detail, item, Pseudonymizer.from_env_or_file(ctx.key_file))  # no source path in logs
    log.warning("series %s: %s (%s)", item.series_key, reason, detail)
    mark_series(ctx, item, "failed", reason, detail)


# --- One stage at a time, recording failures on the series (single-stage callers) -----------------


def convert_step(ctx: WarehouseContext, item: WorkItem) -> Converted | None:
    try:
        return convert(ctx, item)
    except StageError as err:
        record_failure(ctx, item, err.reason, err.detail)
        return None


def register_step(ctx: WarehouseContext, conv: Converted | None) -> Registered | None:
    if conv is None:
        return None
    try:
        return register(conv)
    except StageError as err:
        record_failure(ctx, conv.item, err.reason, err.detail)
        return None


def skullstrip_step(
    ctx: WarehouseContext,
    reg: Registered | None,
    backend: str = "auto",
    reference_mask: ReferenceMask | Stripped | None = None,
) -> Stripped | None:
    if reg is None:
        return None
    try:
        return skullstrip(reg, backend, reference_mask)
    except StageError as err:
        record_failure(ctx, reg.conv.item, err.reason, err.detail)
        return None


def qc_step(ctx: WarehouseContext, s: Stripped | None) -> QCResult | None:
    """Compute metrics, decide, and write the volume + QC rows; mark the series curated."""
    if s is None:
        return None
    from tasks.qc_rows import qc_row

    item = s.reg.conv.item
    try:
        a = assess(s)
    except StageError as err:
        record_failure(ctx, item, err.reason, err.detail)
        return None
    return record_volume(
        ctx, item, volume_row(ctx, s), qc_row(item.volume_id, a.metrics, a.decision, a.reasons), a.decision, a.reasons
    )
