"""The layout of a receiver drop folder, and which of its studies a scan may read yet.

A PACS pushes a study one instance at a time, over minutes, and nothing in DICOM says "that was the
last one". The receiver (`imaging.dicom.receiver`) therefore writes each study into its own folder
and drops a `READY` marker there once no instance has arrived for a quiet period; a scan of the drop
folder reads only ready studies, so curation never converts half a series. The rules live here,
in plain stdlib code, because both sides need them: the receiver writes this layout and the scan
(`imaging.dicom.scan`) prunes its walk with `readable_entries`.

Layout (every name is a hash of a DICOM UID, never a patient name or ID):

    DROP/.mrifoundry-drop                   marks DROP as a receiver drop folder
    DROP/.incoming/                         temporary files, renamed into place when complete
    DROP/study-<h>/READY                    written after the quiet period (JSON: counts only)
    DROP/study-<h>/series-<h>/<h>.dcm       one file per SOP instance
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DROP_MARKER = ".mrifoundry-drop"
INCOMING = ".incoming"
READY = "READY"
STUDY_PREFIX = "study-"
SERIES_PREFIX = "series-"
_HASH_CHARS = 16


def uid_hash(uid: str, chars: int = _HASH_CHARS) -> str:
    """A PHI-free, stable file-name token for a DICOM UID (UIDs carry no name, but paths should
    not carry even those: a hash links the files of one study without revealing its UID)."""
    if not uid or not uid.strip():
        raise ValueError("empty DICOM UID; an instance without Study/Series/SOP Instance UID cannot be filed")
    return hashlib.sha256(b"mrifoundry-drop\0" + uid.strip().encode()).hexdigest()[:chars]


@dataclass(frozen=True)
class InstancePath:
    study_dir: Path
    series_dir: Path
    file: Path


def instance_path(drop: Path, study_uid: str, series_uid: str, sop_uid: str) -> InstancePath:
    """Where an instance lives in the drop folder: study-<h>/series-<h>/<h>.dcm."""
    study_dir = Path(drop) / f"{STUDY_PREFIX}{uid_hash(study_uid)}"
    series_dir = study_dir / f"{SERIES_PREFIX}{uid_hash(series_uid)}"
    return InstancePath(study_dir, series_dir, series_dir / f"{uid_hash(sop_uid, 24)}.dcm")


def init_drop(drop: Path) -> Path:
    """Create the drop folder (and its marker and temp area); returns the temp area."""
    drop = Path(drop)
    (drop / INCOMING).mkdir(parents=True, exist_ok=True)
    marker = drop / DROP_MARKER
    if not marker.exists():
        marker.write_text("mrifoundry receiver drop folder: scans read only study folders holding READY\n")
    return drop / INCOMING


def write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to `path` so that a reader sees either nothing or the whole file.

    The bytes go to a unique file in `tmp_dir` (same file system), are flushed to disk, and the
    file is renamed into place; rename is atomic on POSIX.
    """
    tmp = Path(tmp_dir) / f"{path.name}.{os.getpid()}.{secrets.token_hex(6)}.part"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_drop_folder(path: Path) -> bool:
    return (Path(path) / DROP_MARKER).is_file()


def is_ready(study_dir: Path) -> bool:
    return (Path(study_dir) / READY).is_file()


def mark_ready(study_dir: Path, tmp_dir: Path) -> dict[str, int]:
    """Write the study's READY marker (atomically); returns the counts it records."""
    study_dir = Path(study_dir)
    series = [d for d in study_dir.iterdir() if d.is_dir() and d.name.startswith(SERIES_PREFIX)]
    counts = {"series": len(series), "instances": sum(1 for d in series for f in d.iterdir() if f.suffix == ".dcm")}
    write_atomic(study_dir / READY, (json.dumps(counts) + "\n").encode(), tmp_dir)
    return counts


def pending_studies(drop: Path) -> list[Path]:
    """Study folders of a drop folder that are still receiving (no READY yet)."""
    drop = Path(drop)
    if not drop.is_dir():
        return []
    return sorted(d for d in drop.iterdir() if d.is_dir() and d.name.startswith(STUDY_PREFIX) and not is_ready(d))


def readable_entries(root: Path, dirs: list[str], files: list[str]) -> list[str]:
    """Prune one `os.walk` step for a scan; returns the files of `root` the scan may read.

    Outside a drop folder nothing changes. In a drop folder's root the temp area and every study
    folder without READY are removed from `dirs` (in place, so `os.walk` does not descend); the
    drop marker and READY files are never DICOM and are left out of the files.
    """
    root = Path(root)
    if is_drop_folder(root):
        dirs[:] = [d for d in dirs if d != INCOMING and not (d.startswith(STUDY_PREFIX) and not is_ready(root / d))]
        return [f for f in files if f != DROP_MARKER]
    if root.name.startswith(STUDY_PREFIX) and is_drop_folder(root.parent):
        if not is_ready(root):  # the scan was pointed at one study folder that is still arriving
            dirs[:] = []
            return []
        return [f for f in files if f != READY]
    return files
