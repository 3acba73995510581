"""Export a snapshot as a BIDS-derivatives dataset, the layout other neuroimaging tools read.

A snapshot is the frozen set of volumes a model trained on; exporting it (rather than "whatever
passes now") makes the dataset reproducible: the snapshot id is written into
dataset_description.json, so anyone can tell which curated set a result came from.

Layout (labels are the warehouse pseudonyms without their `sub-`/`stu-` prefix, so no identifier
from the hospital leaves; BIDS labels must be alphanumeric)::

    OUT/dataset_description.json           DatasetType "derivative", GeneratedBy, snapshot id
    OUT/README, OUT/participants.tsv, OUT/descriptions.tsv
    OUT/sub-<S>/ses-<E>/sub-<S>_ses-<E>_scans.tsv (+ .json)   per-volume QC, one row per volume
    OUT/sub-<S>/ses-<E>/anat/sub-<S>_ses-<E>[_run-<n>]_space-<SPACE>_desc-preproc_<T1w|T2w|FLAIR>.nii.gz (+ .json)
    OUT/sub-<S>/ses-<E>/anat/sub-<S>_ses-<E>[_run-<n>]_space-<SPACE>_desc-brain<CLASS>_mask.nii.gz (+ .json)

The image is the registered whole-head volume on the model grid (MNI space), the mask the brain
mask on the same grid; the mask's desc names the class of its image (`desc-brainT1w`), because a
session's T1w and FLAIR otherwise share every entity of the mask name. Several volumes of one class
in one session get `run-1`, `run-2`, ... in volume-id order. The dataset is written to a temporary
folder beside OUT and renamed into place, so an interrupted export never leaves a half dataset that
looks complete.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warehouse.export_queries import QC_EXPORT_COLUMNS, snapshot_export_rows
from warehouse.manifest import Manifest

SPACE = "MNI152NLin2009aSym"
"""TemplateFlow name of the template the model grid is aligned to (nilearn's ICBM152 2009a symmetric)."""

BIDS_VERSION = "1.10.0"
CLASSES: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
"""Sequence classes that curation produces volumes for; each is a BIDS anat suffix as is."""
GENERATED_BY = "mrifoundry"
SCANS_COLUMNS: tuple[str, ...] = (
    "filename",
    "volume_id",
    "series_key",
    "label",
    "decision",
    "auto_decision",
    "rating",
    "reasons",
    "manufacturer",
    "model_name",
    "field_strength",
    *QC_EXPORT_COLUMNS,
)
"""Columns of each session's scans.tsv: the per-volume QC table."""

COLUMN_DOCS: dict[str, str] = {
    "volume_id": "Warehouse volume id (pseudonymous).",
    "series_key": "Keyed-HMAC pseudonym of the DICOM series.",
    "label": "Sequence class assigned at curation (T1w, T2w, FLAIR).",
    "decision": "Effective QC decision: the human rating if any, else the automatic decision.",
    "auto_decision": "Automatic QC decision (pass, review, fail).",
    "rating": "Human QC rating from the dashboard, empty when unrated.",
    "reasons": "Automatic QC reason codes, separated by ';'.",
    "manufacturer": "Scanner manufacturer.",
    "model_name": "Scanner model.",
    "field_strength": "Magnetic field strength in tesla.",
    "outlier_score": "Largest robust z over the metrics within the (scanner, class) group.",
}

_LABEL_RE = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True)
class BidsExport:
    """What an export wrote.

    Attributes:
        out: the dataset root.
        snapshot_id: the snapshot exported.
        n_volumes: volumes written (images, each with a mask).
        n_subjects: subjects (participants.tsv rows).
        n_sessions: sessions (one scans.tsv each).
    """

    out: Path
    snapshot_id: str
    n_volumes: int
    n_subjects: int
    n_sessions: int


def bids_label(pseudonym: str) -> str:
    """The BIDS label of a warehouse pseudonym: its part after the prefix, alphanumerics only.

    Raises:
        ValueError: nothing alphanumeric is left (the manifest row is damaged).
    """
    raw = pseudonym.split("-", 1)[1] if "-" in pseudonym else pseudonym
    label = _LABEL_RE.sub("", raw)
    if not label:
        raise ValueError(f"pseudonym {pseudonym!r} has no alphanumeric part to use as a BIDS label")
    return label


def _cell(value: Any) -> str:
    """TSV cell: 'n/a' for missing values (BIDS), ';'-joined lists, no tabs or newlines."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, list | tuple):
        return ";".join(map(str, value)) or "n/a"
    return re.sub(r"[\t\r\n]", " ", str(value))


def _write_tsv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _source_file(root: Path, rel: str | None, what: str, volume_id: str) -> Path:
    """A warehouse file named by the manifest, refusing paths that leave the warehouse."""
    if not rel:
        raise FileNotFoundError(f"volume {volume_id} has no {what} in the manifest; re-run curation for it")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{what} of volume {volume_id} points outside the warehouse ({rel!r}); re-run curation")
    if not path.is_file():
        raise FileNotFoundError(f"{what} of volume {volume_id} is missing at {path}; re-run curation for it")
    return path


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"export folder {out} exists and is not empty; pass a new folder (or delete this one)")


def export_bids(
    manifest: Manifest, snapshot_id: str, out: Path | str, *, code_version: str | None = None
) -> BidsExport:
    """Write the snapshot's volumes as a BIDS-derivatives dataset at `out` (see the module notes).

    Args:
        manifest: the warehouse manifest (its directory holds the files).
        snapshot_id: a snapshot id as `mrifoundry status` lists it.
        out: the dataset folder; must not exist or be empty.
        code_version: recorded as GeneratedBy.Version (default: unknown).

    Raises:
        LookupError: unknown or empty snapshot.
        ValueError: `out` is not empty, or a manifest path leaves the warehouse.
        FileNotFoundError: a volume's image or mask is missing from the warehouse.
    """
    out = Path(out).expanduser().resolve()
    _check_out(out)
    rows = snapshot_export_rows(manifest, snapshot_id)
    root = manifest.root
    sessions: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        sessions[(bids_label(r["subject_id"]), bids_label(r["study_id"] or r["series_key"]))].append(r)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for (sub, ses), members in sessions.items():
            _write_session(tmp, root, sub, ses, members)
        subjects = sorted({sub for sub, _ in sessions})
        _write_tsv(tmp / "participants.tsv", ["participant_id"], [{"participant_id": f"sub-{s}"} for s in subjects])
        _write_json(tmp / "participants.json", {"participant_id": {"Description": "Pseudonymous subject label."}})
        _write_tsv(
            tmp / "descriptions.tsv",
            ["desc_id", "description"],
            [
                {"desc_id": "preproc", "description": f"registered to {SPACE} on the model grid, whole head"},
                *({"desc_id": f"brain{c}", "description": f"brain mask of the {c} image, same grid"} for c in CLASSES),
            ],
        )
        _write_dataset_description(tmp, snapshot_id, code_version)
        (tmp / "README").write_text(_readme(snapshot_id, len(rows), len(subjects)), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a directory
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BidsExport(out, snapshot_id, len(rows), len(subjects), len(sessions))


def _write_session(tmp: Path, root: Path, sub: str, ses: str, members: list[dict[str, Any]]) -> None:
    anat = tmp / f"sub-{sub}" / f"ses-{ses}" / "anat"
    anat.mkdir(parents=True)
    per_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in members:
        per_label[r["label"]].append(r)
    scans = []
    for label, vols in sorted(per_label.items()):
        if label not in CLASSES:
            raise ValueError(
                f"volume {vols[0]['volume_id']} has class {label!r}; only {', '.join(CLASSES)} are curated"
            )
        for i, r in enumerate(sorted(vols, key=lambda v: v["volume_id"]), start=1):
            run = f"_run-{i}" if len(vols) > 1 else ""
            stem = f"sub-{sub}_ses-{ses}{run}_space-{SPACE}"
            image = anat / f"{stem}_desc-preproc_{label}.nii.gz"
            mask = anat / f"{stem}_desc-brain{label}_mask.nii.gz"
            shutil.copyfile(_source_file(root, r["registered_path"], "registered image", r["volume_id"]), image)
            shutil.copyfile(_source_file(root, r["mask_path"], "brain mask", r["volume_id"]), mask)
            _write_json(
                image.with_name(image.name.replace(".nii.gz", ".json")),
                {"SkullStripped": False, "SpatialReference": SPACE, "Description": "curated volume " + r["volume_id"]},
            )
            _write_json(
                mask.with_name(mask.name.replace(".nii.gz", ".json")),
                {
                    "Type": "Brain",
                    "Sources": [f"bids::{image.relative_to(tmp).as_posix()}"],
                    "SkullStripBackend": r["skullstrip_backend"],
                },
            )
            scans.append({**r, "filename": image.relative_to(anat.parent).as_posix()})
    stem = anat.parent / f"sub-{sub}_ses-{ses}_scans"
    _write_tsv(stem.with_suffix(".tsv"), SCANS_COLUMNS, scans)
    _write_json(
        stem.with_suffix(".json"),
        {
            c: {"Description": COLUMN_DOCS.get(c, f"QC metric {c} (see docs/architecture.md).")}
            for c in SCANS_COLUMNS[1:]
        },
    )


def _write_dataset_description(tmp: Path, snapshot_id: str, code_version: str | None) -> None:
    _write_json(
        tmp / "dataset_description.json",
        {
            "Name": f"MRI Foundry curated snapshot {snapshot_id}",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": GENERATED_BY,
                    "Version": code_version or "unknown",
                    "Description": f"curation, registration to {SPACE}, skull-strip and QC; snapshot {snapshot_id}",
                }
            ],
            "SnapshotID": snapshot_id,
        },
    )


def _readme(snapshot_id: str, n_volumes: int, n_subjects: int) -> str:
    return (
        f"MRI Foundry snapshot {snapshot_id}: {n_volumes} curated volumes of {n_subjects} subjects.\n\n"
        f"Images are registered to {SPACE} on the model grid (desc-preproc, whole head) with their brain\n"
        "masks (desc-brain<class>_mask). Subject and session labels are keyed pseudonyms; each session's\n"
        "scans.tsv holds the QC metrics and decisions of its volumes.\n"
    )
