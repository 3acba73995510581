"""Benchmark: the curate flow on a synthetic export with a 1-worker and a 2-worker Dask LocalCluster.

Same export, same run, a fresh warehouse for each cluster size, so the two runs do identical work.
Reported per size (from the flow's own `preprocessing` summary):
- series/min over the preprocessing phase (cluster start-up included, as a user waits for it too);
- busy workers: the units' summed run time over the window from the first unit's start to the last
  one's end (goal ≥ 1.8 of 2: no worker idles on an upstream result);
- wall seconds of the whole flow (scan, record, shards and snapshot included).
The ratio line compares 2 workers against the 1-worker baseline measured in this run.

Usage:
    .venv/bin/python bench/curate_scale.py [--subjects 3] [--preset tiny] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path


def _run(source: Path, warehouse: Path, workers: int) -> dict:
    from flows.curate import curate_flow, dask_runner

    flow = curate_flow.with_options(task_runner=dask_runner(workers=workers))
    t0 = time.perf_counter()
    summary = flow(str(source), str(warehouse), skullstrip="deepbet")
    pre = dict(summary["preprocessing"])
    pre["wall_seconds"] = round(time.perf_counter() - t0, 1)
    pre["snapshot_id"] = summary["snapshot_id"]
    return pre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=3, help="subjects in the synthetic export (3 series each)")
    ap.add_argument("--preset", default="tiny", help="synthetic export preset (tiny: 2.5 mm volumes)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes; the first is the baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MRIFOUNDRY_DEID_KEY", "ef" * 32)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    from tasks.synthetic import make_export

    with tempfile.TemporaryDirectory(prefix="curate_scale_") as tmp:
        export = make_export(Path(tmp) / "export", args.preset, args.seed, args.subjects)
        rows = {n: _run(export.dicom_dir, Path(tmp) / f"wh-{n}", n) for n in args.workers}

    print(f"\ncurate_scale: {args.preset} export, {args.subjects} subjects, {os.cpu_count()} cores")
    print(f"{'workers':>7} {'series':>6} {'failed':>6} {'series/min':>10} {'busy workers':>12} {'wall s':>7}")
    for n, r in rows.items():
        print(
            f"{n:>7} {r['series']:>6} {r['failed']:>6} {r['series_per_minute'] or 0:>10.2f} "
            f"{r['busy_workers'] or 0:>12.2f} {r['wall_seconds']:>7.1f}"
        )
    base = rows[args.workers[0]]
    for n, r in list(rows.items())[1:]:
        if base["series_per_minute"] and r["series_per_minute"]:
            print(
                f"ratio {n} vs {args.workers[0]} workers: {r['series_per_minute'] / base['series_per_minute']:.2f}x "
                f"series/min; busy {r['busy_workers']} of {n} (goal >= {0.9 * n:.1f})"
            )
    snaps = {r["snapshot_id"] for r in rows.values()}
    print(f"same snapshot at every cluster size: {len(snaps) == 1}")


if __name__ == "__main__":
    main()
