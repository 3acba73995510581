"""Benchmark: random-access volume reads from Arrow shards vs nibabel .nii.gz, same run, same data.

Prints volumes/s for both and the ratio. Usage:
    .venv/bin/python bench/shard_loader.py [--volumes 32] [--reads 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from warehouse.shards import ShardReader, ShardVolume, write_shard

GRID = (96, 108, 96)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=32)
    ap.add_argument("--reads", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        vols = []
        for i in range(args.volumes):
            # smooth-ish content so gzip has realistic work (pure noise would not compress at all)
            base = rng.random((12, 14, 12)).astype(np.float32)
            data = np.kron(base, np.ones((8, 8, 8), np.float32))[: GRID[0], : GRID[1], : GRID[2]]
            data += 0.01 * rng.standard_normal(GRID).astype(np.float32)
            mask = (data > 0.3).astype(np.uint8)
            vols.append(ShardVolume(f"v{i}", "s", "T1w", data.astype(np.float16), mask, (1.7, 1.7, 1.7), np.eye(4)))
            img = nib.Nifti1Image(data.astype(np.float32), np.eye(4))
            nib.save(img, root / f"v{i}.nii.gz")
        info = write_shard(vols, root / "shards")
        order = rng.integers(0, args.volumes, size=args.reads)

        t0 = time.perf_counter()
        for i in order:
            np.asarray(nib.load(root / f"v{i}.nii.gz").get_fdata(dtype=np.float32))
        t_nib = time.perf_counter() - t0

        reader = ShardReader(info.path)
        t0 = time.perf_counter()
        for i in order:
            reader.read(int(i)).data.astype(np.float32)
        t_shard = time.perf_counter() - t0

    print(f"volumes {args.volumes} of {GRID}, random reads {args.reads}")
    print(f"nibabel .nii.gz : {args.reads / t_nib:8.1f} volumes/s")
    print(f"arrow shard     : {args.reads / t_shard:8.1f} volumes/s")
    print(f"ratio shard/nibabel: {t_nib / t_shard:.1f}x")


if __name__ == "__main__":
    main()
