"""Benchmark: peak memory of `mrifoundry pretrain --steps 5` on a snapshot of N and of 10*N volumes.

Each warehouse is written by `mrifoundry bench-corpus --subjects S` (synthetic volumes straight into
shards + manifest; pretraining reads its latest snapshot, the unlabelled pool: about 1.2 volumes
per subject). The pretrain command runs in a fresh process; its peak RSS (and that of any torchrun
workers it starts, which are its descendants) is read from getrusage. Streaming from the shards,
the larger snapshot should cost no more memory (goal: ratio <= 1.2); the replaced loader held every
member as float32 in RAM (3.8 MiB each) before step 1.

Usage:
    .venv/bin/python bench/train_memory.py                      # 20 and 200 subjects, tiny preset
    .venv/bin/python bench/train_memory.py --subjects 40 --nproc-per-node 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB_PER_VOLUME_IN_RAM = 96 * 108 * 96 * 4 / 2**20  # what the old loader held per member (float32)

MEASURE = """
import json, resource, sys
from flows.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def corpus(warehouse: Path, subjects: int, workers: int) -> dict:
    if not (warehouse / "manifest.duckdb").exists():
        cmd = [sys.executable, "-m", "flows.cli", "bench-corpus", "--subjects", str(subjects)]
        cmd += ["--warehouse", str(warehouse), "--workers", str(workers)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    from warehouse.manifest import Manifest
    from warehouse.queries import latest_snapshot

    m = Manifest(warehouse)
    snap = latest_snapshot(m)
    return {"snapshot": snap, "n_volumes": m.scalar("SELECT n_volumes FROM snapshots WHERE snapshot_id = ?", [snap])}


def peak_rss(warehouse: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-c", MEASURE, "pretrain", "--warehouse", str(warehouse), "--preset", args.preset]
    cmd += ["--steps", str(args.steps), "--nproc-per-node", str(args.nproc_per_node)]
    t0 = time.perf_counter()
    # A loaded machine can take longer than Prefect's default 20 s to start its temporary server.
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"pretrain failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out | {"seconds": time.perf_counter() - t0, "peak_mib": max(out["self_mib"], out["children_mib"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20, help="N: the small warehouse's subjects (10*N for the large)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="bench-corpus generator processes")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the warehouses in this directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        rows = []
        for subjects in (args.subjects, 10 * args.subjects):
            wh = base / f"bench-{subjects}"
            info = corpus(wh, subjects, args.workers)
            rows.append({"subjects": subjects, **info, **peak_rss(wh, args)})
    small, large = rows
    for r in rows:
        print(
            f"{r['subjects']:5d} subjects, snapshot of {r['n_volumes']:5d} volumes: peak RSS {r['peak_mib']:7.1f} MiB "
            f"(pretrain process {r['self_mib']:.1f}, largest child {r['children_mib']:.1f}), {r['seconds']:.0f} s; "
            f"loading it as before would hold {r['n_volumes'] * MIB_PER_VOLUME_IN_RAM:.0f} MiB of volumes"
        )
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"ratio peak RSS 10N/N: {ratio:.3f} (goal <= 1.2; snapshot {large['n_volumes'] / small['n_volumes']:.1f}x)")


if __name__ == "__main__":
    main()
