"""Benchmark: committing a hospital-scale snapshot (set-based spans) vs the old row-by-row full copy.

Measures, on a fresh manifest in a temporary directory:
    new   : `Manifest.commit_snapshot` of --volumes ids (the first snapshot), then of the next curate
            run's set (+1 % new volumes, 100 removed by a rating), and reading the newest snapshot's
            members back through the `snapshot_volumes` view;
    old   : the replaced commit (one INSERT per member, a full copy per snapshot) on --baseline-volumes
            ids, extrapolated linearly to --volumes (running it on 1.5 M rows takes ~45 minutes).
Goal: the 1.5 M-volume commit in <= 10 s.

Usage:
    .venv/bin/python bench/manifest_scale.py --volumes 1500000
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from warehouse.manifest import Manifest


def volume_ids(n: int, start: int = 0) -> list[str]:
    """Ids shaped like the pipeline's (a prefix and 24 hex digits), deterministic."""
    return [f"vol-{hashlib.blake2b(str(i).encode(), digest_size=12).hexdigest()}" for i in range(start, start + n)]


def old_commit(m: Manifest, ids: list[str]) -> float:
    """Seconds of the commit this replaced: sort, hash, one INSERT per member into a full-copy table."""
    t0 = time.perf_counter()
    ids = sorted(set(ids))
    snap = "snap-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    with m.connect() as con:
        con.execute(
            "CREATE TABLE IF NOT EXISTS old_members "
            "(snapshot_id VARCHAR, volume_id VARCHAR, PRIMARY KEY (snapshot_id, volume_id))"
        )
        con.execute("BEGIN TRANSACTION")
        con.executemany("INSERT OR REPLACE INTO old_members VALUES (?, ?)", [[snap, v] for v in ids])
        con.execute("COMMIT")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=1_500_000)
    ap.add_argument("--baseline-volumes", type=int, default=20_000, help="members the old commit is timed on")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        m = Manifest(Path(d)).init()
        ids = volume_ids(args.volumes)
        t0 = time.perf_counter()
        first, _ = m.commit_snapshot(ids)
        t_first = time.perf_counter() - t0

        grown = ids[100:] + volume_ids(args.volumes // 100, start=args.volumes)  # next curate run
        t0 = time.perf_counter()
        second, created = m.commit_snapshot(grown)
        t_second = time.perf_counter() - t0
        assert created and second != first

        t0 = time.perf_counter()
        n = m.scalar("SELECT count(*) FROM snapshot_volumes WHERE snapshot_id = ?", [second])
        t_read = time.perf_counter() - t0
        assert n == len(grown), (n, len(grown))
        spans = m.count("snapshot_spans")

        baseline = Manifest(Path(d) / "old")
        t_old = old_commit(baseline, volume_ids(args.baseline_volumes))
    old_rate = args.baseline_volumes / t_old
    old_full = args.volumes / old_rate
    print(f"snapshot of {args.volumes:,} volumes")
    print(f"  set-based commit (first snapshot)        : {t_first:8.2f} s")
    print(f"  next curate run (+1 %, -100), delta only : {t_second:8.2f} s")
    print(f"  members of the newest snapshot (view)    : {t_read:8.2f} s ({n:,} rows)")
    print(
        f"  rows stored for both snapshots           : {spans:,} spans "
        f"(full copies would be {args.volumes + len(grown):,})"
    )
    print(
        f"old row-by-row commit: {old_rate:,.0f} rows/s on {args.baseline_volumes:,} -> "
        f"{old_full / 60:.1f} min for {args.volumes:,}"
    )
    print(
        f"ratio old/new (first snapshot): {old_full / t_first:.0f}x; "
        f"goal <= 10 s: {'met' if t_first <= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
