"""Header-only scan of a DICOM export: find the MR image series in it and say why the rest is skipped.

A hospital export is an arbitrary tree (or one flat folder) of DICOM files, some gzipped, some with
no extension, mixed with reports, secondary captures, half-copied files and the odd README. The scan
reads only the headers (pixel data stays on disk), groups instances by SeriesInstanceUID whatever the
folder layout, de-duplicates re-sent instances and double exports, and attaches to every series
either nothing (it goes on to classification) or a rejection reason code with a PHI-free explanation
(`reasons`). Every file that joins no series gets a reason code too.

Header parsing is pure Python and holds the GIL, so threads do not help; big exports are read by a
pool of forked processes (`_read_all`), small ones in this process.

A nightly rescan of an unchanged export need not reopen any file: with a `HeaderIndex` (the caller's
store of earlier results, keyed by path, size and modification time) only new or changed files are
read. The index is the caller's (tasks/ keeps it in the warehouse); this module stays storage-free.
"""

from __future__ import annotations

import hashlib
import inspect
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from imaging.dicom.drop import readable_entries
from imaging.dicom.geometry import series_geometry
from imaging.dicom.header import SeriesHeader
from imaging.dicom.reader import RejectedFile, _FileInfo, read_file
from imaging.dicom.reasons import series_rejection

# Below this many files a process pool costs more (fork, pickling results) than it saves.
_PARALLEL_MIN_FILES = 256
_CHUNK = 64


@dataclass(frozen=True)
class SeriesRecord:
    """One series of the export. The raw identifiers are for pseudonymisation only, never persisted.

    `n_instances` counts DICOM instances (files); `n_slices` is slices per volume (a Siemens mosaic
    instance holds a whole volume, an enhanced instance many frames) and `n_volumes` the number of
    volumes (time points, echoes) the series holds.
    """

    series_uid: str
    study_uid: str
    patient_id: str
    files: tuple[Path, ...]
    sop_hash: str
    header: SeriesHeader
    n_instances: int
    rejection: str | None
    rejection_detail: str
    n_slices: int = 0
    n_volumes: int = 1
    transfer_syntaxes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScanResult:
    """`n_read` counts the files opened by this scan; the rest came from the header index."""

    series: tuple[SeriesRecord, ...]
    rejected_files: tuple[RejectedFile, ...]
    n_files: int
    seconds: float
    n_read: int = -1


@dataclass(frozen=True)
class FileStat:
    """A file as the index knows it: a change of size or modification time means "read it again"."""

    path: Path
    size: int
    mtime_ns: int


FileResult = _FileInfo | RejectedFile


class HeaderIndex(Protocol):
    """Earlier scan results, keyed by (path, size, mtime); implemented outside `imaging` (storage)."""

    def lookup(self, files: Sequence[FileStat], version: str) -> dict[Path, FileResult]:
        """The stored result of every file whose path, size, mtime and reader `version` all match."""
        ...

    def update(self, fresh: Sequence[tuple[FileStat, FileResult]], present: Sequence[FileStat], version: str) -> None:
        """Store `fresh` results and forget the files of this source that are no longer `present`."""
        ...


_READER_MODULES = ("tags", "values", "walker", "header", "geometry", "reasons", "reader")


@lru_cache(maxsize=1)
def reader_version() -> str:
    """A hash of the header-reading code: a stored result from other code is read again, not trusted."""
    import importlib

    digest = hashlib.sha256()
    for name in _READER_MODULES:
        digest.update(inspect.getsource(importlib.import_module(f"imaging.dicom.{name}")).encode())
    return digest.hexdigest()[:16]


def _stat(path: Path) -> FileStat:
    try:
        st = path.stat()
    except OSError:
        return FileStat(path, -1, -1)  # never matches a stored entry: read_file reports the error
    return FileStat(path, st.st_size, st.st_mtime_ns)


def _indexable(result: FileResult) -> bool:
    """An I/O error may be transient (a share hiccup): such a file is read again next time."""
    return not (isinstance(result, RejectedFile) and result.reason == "unreadable")


def _read_chunk(paths: Sequence[Path]) -> list[_FileInfo | RejectedFile]:
    return [read_file(p) for p in paths]


def _sop_hash(sop_uids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def _build_series(infos: list[_FileInfo]) -> tuple[SeriesRecord, list[RejectedFile]]:
    """One series from its files, plus the files left out of it (duplicates), deterministically."""
    dropped: list[RejectedFile] = []
    # Same SOPInstanceUID more than once (re-sent, copied into two folders): keep the smallest path.
    by_sop: dict[str, _FileInfo] = {}
    for info in sorted(infos, key=lambda i: str(i.path)):
        kept = by_sop.setdefault(info.sop_uid, info)
        if kept is not info:
            dropped.append(
                RejectedFile(
                    info.path, "duplicate", "same SOPInstanceUID as another file of the series (kept that one)"
                )
            )
    unique = list(by_sop.values())
    # The same acquisition exported twice, as classic and as enhanced MR (Philips keeps the
    # SeriesInstanceUID for both): keep the copy with more images, classic on a tie.
    classic = [i for i in unique if not i.enhanced]
    enhanced = [i for i in unique if i.enhanced]
    if classic and enhanced:
        n_classic = len(classic)
        n_enhanced = sum(i.n_frames for i in enhanced)
        keep, drop, what = (
            (classic, enhanced, "enhanced") if n_classic >= n_enhanced else (enhanced, classic, "classic")
        )
        for info in drop:
            dropped.append(
                RejectedFile(
                    info.path,
                    "duplicate",
                    f"{what} MR copy of a series that is also exported as "
                    f"{'classic' if what == 'enhanced' else 'enhanced'} MR ({n_classic} classic images, "
                    f"{n_enhanced} enhanced frames); the copy with more images is used",
                )
            )
        unique = keep
    kept = sorted(unique, key=lambda i: str(i.path))
    first = kept[0]
    n_frames = sum(i.n_frames for i in kept)
    has_geometry = all(i.has_geometry for i in kept)
    orientations = [o for i in kept for o in i.orientations]
    positions = [p for i in kept for p in i.positions]
    mosaic = first.mosaic_slices if all(i.mosaic_slices == first.mosaic_slices for i in kept) else None
    geometry = series_geometry(orientations, positions, mosaic)
    transfer_syntaxes = tuple(sorted({i.transfer_syntax for i in kept if i.transfer_syntax}))
    reason, detail = series_rejection(
        first.header,
        len(kept),
        n_frames,
        has_geometry,
        geometry.n_orientations,
        n_slices=geometry.n_slices if has_geometry else None,
        geometry_problem=geometry.problem,
        transfer_syntaxes=transfer_syntaxes,
    )
    record = SeriesRecord(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        files=tuple(i.path for i in kept),
        sop_hash=_sop_hash(i.sop_uid for i in kept),
        header=first.header,
        n_instances=len(kept),
        rejection=reason,
        rejection_detail=detail,
        n_slices=geometry.n_slices,
        n_volumes=geometry.n_volumes,
        transfer_syntaxes=transfer_syntaxes,
    )
    return record, dropped


def _list_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    out: list[Path] = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        files = readable_entries(Path(root), dirs, files)  # receiver drop folder: ready studies only
        out.extend(Path(root) / name for name in sorted(files))
    return out


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def _read_all(
    paths: list[Path], workers: int, progress: Callable[[int, int], None] | None
) -> list[_FileInfo | RejectedFile]:
    total = len(paths)
    if workers <= 1 or total < _PARALLEL_MIN_FILES:
        results = []
        for n, p in enumerate(paths, start=1):
            results.append(read_file(p))
            if progress is not None and (n % _CHUNK == 0 or n == total):
                progress(n, total)
        return results
    chunks = [paths[i : i + _CHUNK] for i in range(0, total, _CHUNK)]
    results_by_chunk: dict[int, list[_FileInfo | RejectedFile]] = {}
    done = 0
    # fork, explicitly (3.14 changes the Linux default): forked workers start in milliseconds with
    # pydicom already imported; forkserver/spawn workers re-import it and need a __main__ guard in
    # the caller, and threads gain nothing (parsing holds the GIL). Caveat of fork under a threaded
    # caller (Prefect): a lock held by another thread at fork time stays held in the child; the
    # children only parse files, which keeps that window small, and workers=1 avoids it entirely.
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
        futures = {pool.submit(_read_chunk, chunk): i for i, chunk in enumerate(chunks)}
        for fut in as_completed(futures):
            results_by_chunk[futures[fut]] = fut.result()
            done += len(chunks[futures[fut]])
            if progress is not None:
                progress(done, total)
    return [r for i in range(len(chunks)) for r in results_by_chunk[i]]


def scan_source(
    source: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    index: HeaderIndex | None = None,
) -> ScanResult:
    """Scan every file under `source` (a folder, or one file) and group the DICOM ones into series.

    Args:
        source: export root; any layout (flat, patient/study/series, PACS hash folders).
        workers: processes for header parsing; default: the CPUs this process may use. Parsing is
            pure-Python and GIL-bound, so threads do not help; processes do (see the module notes).
        progress: called as progress(files_done, files_total) while reading.
        index: earlier results by (path, size, mtime); only files it does not know (or knows with another
            size or mtime) are opened, and it is updated with them (deleted files are forgotten).

    Returns:
        Series sorted by (study, series number, UID), with rejections filled in, plus the files
        that could not join a series (or were left out of one as duplicates).
    """
    t0 = time.perf_counter()
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"DICOM source {source} does not exist; pass the export folder (or one file)")
    paths = _list_files(source)
    n_workers = default_workers() if workers is None else workers
    if index is None:
        results = _read_all(paths, n_workers, progress)
        n_read = len(paths)
    else:
        version = reader_version()
        stats = [_stat(p) for p in paths]
        known = index.lookup(stats, version)
        todo = [s for s in stats if s.path not in known]
        fresh = dict(zip((s.path for s in todo), _read_all([s.path for s in todo], n_workers, progress), strict=True))
        results = [known[p] if p in known else fresh[p] for p in paths]
        index.update([(s, fresh[s.path]) for s in todo if _indexable(fresh[s.path])], stats, version)
        n_read = len(todo)
    rejected: list[RejectedFile] = []
    groups: dict[str, list[_FileInfo]] = {}
    for r in results:
        if isinstance(r, RejectedFile):
            rejected.append(r)
        else:
            groups.setdefault(r.series_uid, []).append(r)
    series = []
    for infos in groups.values():
        record, dropped = _build_series(infos)
        series.append(record)
        rejected.extend(dropped)
    series.sort(
        key=lambda s: (s.study_uid, s.header.series_number if s.header.series_number is not None else -1, s.series_uid)
    )
    return ScanResult(
        series=tuple(series),
        rejected_files=tuple(sorted(rejected, key=lambda r: str(r.path))),
        n_files=len(paths),
        seconds=time.perf_counter() - t0,
        n_read=n_read,
    )
