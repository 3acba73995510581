"""Turn a header scan into manifest rows and a work plan, de-identifying on the way.

This is the PHI boundary: raw UIDs, patient IDs and dates from `SeriesRecord` go in, only keyed
pseudonyms and shifted dates come out, both into the manifest and into the `WorkItem`s that the
rest of the DAG passes around.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from imaging.bids import BidsRecord, NoInputError, classify_bids_record, no_input_message
from imaging.classify import classify_series
from imaging.deid import Pseudonymizer
from imaging.dicom import ScanResult, SeriesRecord
from imaging.dicom.drop import DROP_MARKER
from tasks.context import PIPELINE_VERSION, WarehouseContext
from tasks.review import apply_overrides, curation_state, load_overrides
from warehouse.manifest import now
from warehouse.queries import done_series, set_series_state
from warehouse.source_files import replace_rejected_files

# Sequence classes the curated corpus keeps; everything else is recorded and skipped.
CURATED_CLASSES = ("T1w", "T2w", "FLAIR")


@dataclass(frozen=True)
class WorkItem:
    """One series to preprocess; carries pseudonyms and file paths only (no PHI)."""

    series_key: str
    subject_id: str
    study_id: str
    label: str
    manufacturer: str
    model_name: str
    sop_hash: str
    files: tuple[Path, ...] = field(repr=False)
    source: Path | None = field(default=None, repr=False, compare=False)
    """The export root the files were scanned under: failure messages are redacted against it."""
    kind: str = "dicom"
    """"dicom" (files are a series' instances) or "nifti" (files hold one already converted BIDS image)."""

    @property
    def volume_id(self) -> str:
        return "vol-" + hashlib.sha256(f"{self.series_key}:{self.sop_hash}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScanPlan:
    """What a scan means for this warehouse: what to do, and what was already done."""

    work: tuple[WorkItem, ...]
    n_series: int
    n_unchanged: int
    n_rejected: int
    n_other: int
    n_rejected_files: int
    n_review: int = 0

    def ordered(self) -> tuple[WorkItem, ...]:
        """T1w first: T2w/FLAIR of the same study reuse the T1w brain mask."""
        return tuple(sorted(self.work, key=lambda w: (w.study_id, w.label != "T1w", w.series_key)))


def require_input(source: Path, scan: ScanResult) -> None:
    """Raise `NoInputError` (one line: why, and what to pass instead) when the scan found no series.

    A receiver drop folder is exempt: before its first study is ready it is empty by design.
    """
    if scan.series or (Path(source) / DROP_MARKER).exists():
        return
    raise NoInputError(no_input_message(Path(source)))


def source_id(source: Path) -> str:
    return "src-" + hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:12]


def _series_row(
    ctx: WarehouseContext, rec: SeriesRecord, p: Pseudonymizer, state: str, reason: str | None, detail: str
) -> dict:
    h = rec.header
    return {
        "series_key": p.series(rec.series_uid),
        "subject_id": p.subject(rec.patient_id),
        "study_id": p.study(rec.study_uid),
        "sop_hash": rec.sop_hash,
        "pipeline_version": PIPELINE_VERSION,
        "n_instances": rec.n_instances,
        "modality": h.modality,
        "manufacturer": h.manufacturer,
        "model_name": h.model_name,
        "field_strength": h.field_strength,
        "series_description": h.series_description or h.protocol_name,
        "series_number": h.series_number,
        "study_date_shifted": p.shift_date(rec.patient_id, h.study_date),
        "state": state,
        "reason": reason,
        "detail": detail,
        "run_id": ctx.run_id,
        "updated_at": now(),
    }


def record_scan(ctx: WarehouseContext, source: Path, scan: ScanResult, p: Pseudonymizer) -> ScanPlan:
    """Write series, rejections and classifications; return the series that still need work.

    Idempotent: a series already finished by this pipeline version with the same SOP-instance hash
    is left alone; one whose instances changed (new files arrived) is redone.
    """
    m = ctx.manifest
    done = done_series(m, PIPELINE_VERSION)
    src = source_id(source)
    replace_rejected_files(
        m,
        src,
        [
            {
                "source_id": src,
                "relpath": _relpath(f.path, source, p),
                "reason": f.reason,
                "detail": f.detail,
                "run_id": ctx.run_id,
                "updated_at": now(),
            }
            for f in scan.rejected_files
        ],
    )
    series_rows, class_rows, work = [], [], []
    n_unchanged = n_rejected = n_other = n_review = 0
    overrides = load_overrides(m)
    for rec in scan.series:
        key = p.series(rec.series_uid)
        if done.get(key) == rec.sop_hash:
            n_unchanged += 1
            continue
        if rec.rejection:
            n_rejected += 1
            series_rows.append(_series_row(ctx, rec, p, "rejected", rec.rejection, rec.rejection_detail))
            continue
        auto = classify_bids_record(rec) if isinstance(rec, BidsRecord) else classify_series(rec.header)
        c = apply_overrides(m, key, auto, overrides)
        class_rows.append(
            {
                "series_key": key,
                "label": c.label,
                "contrast_enhanced": c.contrast_enhanced,
                "confidence": c.confidence,
                "explanation": c.explanation,
                "needs_review": c.needs_review,
                "updated_at": now(),
            }
        )
        state, reason = curation_state(c)
        if state != "classified":
            # "skipped" (class other) is final; "review" (keywords vs physics disagree, or low
            # confidence) is held until a reviewer labels it, and re-examined by every run.
            n_other += state == "skipped"
            n_review += state != "skipped"
            series_rows.append(_series_row(ctx, rec, p, state, reason, c.explanation))
            continue
        series_rows.append(_series_row(ctx, rec, p, "classified", None, c.explanation))
        work.append(
            WorkItem(
                series_key=key,
                subject_id=p.subject(rec.patient_id),
                study_id=p.study(rec.study_uid),
                label=c.label,
                manufacturer=rec.header.manufacturer,
                model_name=rec.header.model_name,
                sop_hash=rec.sop_hash,
                files=rec.files,
                source=Path(source),
                kind="nifti" if isinstance(rec, BidsRecord) else "dicom",
            )
        )
    m.upsert("series", series_rows)
    m.upsert("classification", class_rows)
    return ScanPlan(
        work=tuple(work),
        n_series=len(scan.series),
        n_unchanged=n_unchanged,
        n_rejected=n_rejected,
        n_other=n_other,
        n_rejected_files=len(scan.rejected_files),
        n_review=n_review,
    )


SAFE_EXTENSIONS = frozenset(
    {"dcm", "dicom", "ima", "img", "gz", "bz2", "xz", "zip", "tar", "nii", "json", "txt", "xml", "pdf", "csv"}
)
"""File extensions kept in a pseudonymised path (lower-cased): they say what a file is and cannot carry a
name. Any other suffix is dropped with the rest of the name: in ``MUELLER.HANS`` or ``scan.19450101`` the
"extension" is PHI."""


def _extension(name: str) -> str:
    """The trailing run of safe suffixes of a file name (".dcm.gz"), "" when the last one is not safe."""
    parts = name.split(".")[1:]
    kept: list[str] = []
    for part in reversed(parts):
        if part.lower() not in SAFE_EXTENSIONS:
            break
        kept.insert(0, part.lower())
    return "".join(f".{x}" for x in kept)


def _relpath(path: Path, source: Path, p: Pseudonymizer) -> str:
    """Every path component under the source root pseudonymised, the file's extension kept.

    PACS exports name folders, and sometimes files, after patients, IDs and dates
    (``MUELLER_HANS_19450101/…/MUELLER_HANS_broken.dcm``). Each folder becomes the keyed token of its
    path from the root (``dir-…``; files of one folder still share it, and the depth stays visible), the
    file the token of its whole relative path (``file-….dcm``). A path outside the root is treated the same
    way from the filesystem root.
    """
    try:
        rel = Path(path).resolve().relative_to(Path(source).resolve())
    except ValueError:
        rel = Path(Path(path).resolve().as_posix().lstrip("/"))
    parts = rel.parts
    out = [p.folder("/".join(parts[: i + 1])) for i in range(len(parts) - 1)]
    out.append(p.file(rel.as_posix()) + _extension(parts[-1]) if parts else p.file(""))
    return "/".join(out)


def redact_paths(text: str, item: WorkItem, p: Pseudonymizer) -> str:
    """``text`` with every source path of ``item`` (and its bare file and folder names) pseudonymised.

    A converter's error message can quote the file it choked on; it goes to the log and into
    ``series.detail``. Whole paths are replaced first (as given and resolved), then names on their own;
    folder names shorter than 4 characters are left, as they would match ordinary words.
    """
    if not text:
        return text
    source = Path(item.source) if item.source is not None else None
    names: dict[str, str] = {}
    for f in item.files:
        root = source if source is not None else Path(f).parent
        token = _relpath(Path(f), root, p)
        for raw in {str(f), str(Path(f).resolve())}:
            names[raw] = token
        try:
            rel = Path(f).resolve().relative_to(Path(root).resolve())
        except ValueError:
            rel = Path(Path(f).name)
        names.setdefault(rel.name, token.rsplit("/", 1)[-1])
        for i, part in enumerate(rel.parts[:-1]):
            if len(part) >= 4:
                names.setdefault(part, p.folder("/".join(rel.parts[: i + 1])))
    if source is not None:
        for raw in {str(source), str(source.resolve())}:
            names.setdefault(raw, "<source>")
    for raw in sorted(names, key=len, reverse=True):
        text = text.replace(raw, names[raw])
    return text


def mark_series(ctx: WarehouseContext, item: WorkItem, state: str, reason: str | None, detail: str) -> None:
    """Move a series to its final state (curated / failed) without touching its other columns."""
    set_series_state(
        ctx.manifest, item.series_key, state=state, reason=reason, detail=detail, run_id=ctx.run_id, when=now()
    )
