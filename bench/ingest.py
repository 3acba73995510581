"""Benchmark: header scan speed of `imaging.dicom.scan_source` beside two baselines, same files, one run.

Baselines:
- naive: a single-process loop of `pydicom.dcmread(path)` (what a first script would do);
- dcm2niix: the PyPI `dcm2niix` binary writing BIDS sidecars only (`-b o`), which parses every
  header in C and is the speed to aim for.

Default input: the 662 real Philips files of ../shared/data/dicom/philips_flat_folder, inflated into
a temporary folder (dcm2niix does not read .dcm.gz); the project's scan is also timed on the .dcm.gz
originals. Every timing is the best of `--repeat` runs after one warm-up read of all files, because
the machine is shared and the page cache must not favour whoever runs second.

No-op rescan (issue 11): the same files linked under new names into a ``--rescan-files``-file export
(10,000 by default, 16 folders), scanned twice through a warehouse's header index
(``tasks.scan_index.scan_with_index``): the first scan reads every header and fills the index, the
second finds every file unchanged and opens none. Goal: the second ≤ 10 % of the first. A plain
``scan_source`` of the same export (no index) is timed too, for the index's own cost.

Usage:
    .venv/bin/python bench/ingest.py [--source DIR] [--repeat 3] [--workers N] [--rescan-files 10000]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from imaging.convert import dcm2niix_binary
from imaging.dicom import default_workers, scan_source

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "philips_flat_folder"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _naive(files: list[Path]) -> None:
    for p in files:
        pydicom.dcmread(p)


def _dcm2niix(folder: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [dcm2niix_binary(), "-b", "o", "-z", "n", "-v", "0", "-f", "%s_%p", "-o", str(out), str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not list(out.glob("*.json")):
        raise RuntimeError(f"dcm2niix failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")


def _big_export(originals: list[Path], n_files: int, out: Path) -> None:
    """``n_files`` names for the given files (hard links where the filesystem allows, else copies)."""
    for i in range(n_files):
        src = originals[i % len(originals)]
        folder = out / f"batch{i // len(originals):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"{i:06d}_{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def rescan(originals: list[Path], n_files: int, workers: int, tmp: Path) -> None:
    from tasks.context import open_warehouse
    from tasks.scan_index import scan_with_index

    export = tmp / "big_export"
    _big_export(originals, n_files, export)
    for p in export.rglob("*"):  # page cache warm for every run below
        if p.is_file():
            p.read_bytes()
    os.environ.setdefault("MRIFOUNDRY_DEID_KEY", "5a" * 32)
    ctx = open_warehouse(tmp / "warehouse")
    t0 = time.perf_counter()
    plain = scan_source(export, workers=workers)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = scan_with_index(ctx, export, workers=workers)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = scan_with_index(ctx, export, workers=workers)
    t_noop = time.perf_counter() - t0
    assert first.n_read == plain.n_files == n_files and second.n_read == 0, (first.n_read, second.n_read)
    assert len(second.series) == len(plain.series) and len(second.rejected_files) == len(plain.rejected_files)
    print(f"\nno-op rescan of a {n_files}-file export ({workers} worker(s), page cache warm):")
    print(f"  plain scan_source (no index)          {t_plain:7.2f} s")
    print(f"  first scan through the header index   {t_first:7.2f} s  ({first.n_read} files read)")
    print(f"  no-op rescan through the header index {t_noop:7.2f} s  ({second.n_read} files read)")
    print(f"  no-op / first: {t_noop / t_first:.1%} (goal <= 10 %)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="DICOM folder (.dcm or .dcm.gz)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    ap.add_argument("--workers", type=int, default=None, help="scan processes (default: CPUs available)")
    ap.add_argument("--rescan-files", type=int, default=10_000, help="export size of the no-op rescan (0: skip)")
    ap.add_argument("--rescan-only", action="store_true", help="only the no-op rescan benchmark")
    args = ap.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"no DICOM folder at {args.source}; pass --source DIR")
    workers = args.workers or default_workers()
    if args.rescan_only:
        with tempfile.TemporaryDirectory(prefix="mrifoundry-bench-rescan-") as tmp:
            rescan(_files(args.source), args.rescan_files, workers, Path(tmp))
        return 0
    with tempfile.TemporaryDirectory(prefix="mrifoundry-bench-ingest-") as tmp:
        plain = Path(tmp) / "dicom"
        plain.mkdir()
        originals = _files(args.source)
        gzipped = 0
        for i, src in enumerate(originals):
            with open(src, "rb") as f:
                data = f.read()
            if data[:2] == b"\x1f\x8b":
                data, gzipped = gzip.decompress(data), gzipped + 1
            (plain / f"{i:06d}.dcm").write_bytes(data)
        files = _files(plain)
        n = len(files)
        for p in files:  # warm the page cache for everyone
            p.read_bytes()
        series = scan_source(plain, workers=workers).series
        results = {
            f"scan_source, {workers} worker(s)": _best(lambda: scan_source(plain, workers=workers), args.repeat),
            "scan_source, 1 worker": _best(lambda: scan_source(plain, workers=1), args.repeat),
            "naive pydicom.dcmread loop": _best(lambda: _naive(files), args.repeat),
            "dcm2niix -b o (sidecars only)": _best(lambda: _dcm2niix(plain, Path(tmp) / "out"), args.repeat),
        }
        gz_rate = None
        if gzipped:
            gz_rate = len(originals) / _best(lambda: scan_source(args.source, workers=workers), args.repeat)
    print(f"{n} files ({gzipped} of them .dcm.gz in the source), {len(series)} series, {os.cpu_count()} CPUs")
    print(f"best of {args.repeat} runs each, page cache warm\n")
    rates = {name: n / seconds for name, seconds in results.items()}
    width = max(len(k) for k in rates)
    for name, rate in rates.items():
        print(f"  {name:<{width}} {rate:>9.0f} files/s")
    if gz_rate is not None:
        print(f"  {'scan_source on the .dcm.gz originals':<{width}} {gz_rate:>9.0f} files/s")
    ours = rates[f"scan_source, {workers} worker(s)"]
    print(f"\n  scan_source / naive pydicom: {ours / rates['naive pydicom.dcmread loop']:.1f}x")
    print(f"  dcm2niix / scan_source:      {rates['dcm2niix -b o (sidecars only)'] / ours:.1f}x")
    if args.rescan_files:
        with tempfile.TemporaryDirectory(prefix="mrifoundry-bench-rescan-") as tmp:
            rescan(_files(args.source), args.rescan_files, workers, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
