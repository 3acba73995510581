"""Benchmark: the real training loop streaming from a synthetic snapshot: tokens/s, MFU, data wait.

Unlike bench/train_step.py (one step on a batch already on the device), this runs `model.train.train`
exactly as `mrifoundry pretrain` does: DataLoader workers read and scale volumes from the snapshot's
memory-mapped shards and draw masks, the batch is augmented on the device, then the step. From the
loop's own per-step log it reports, over the steps after --warmup (compilation happens there):
    tokens/s and MFU (analytic model FLOPs, model/flops.py, over the data-sheet bf16 peak on CUDA or
        a matmul measured in this run on CPU), the baseline being the device's peak;
    data wait share = time blocked on the DataLoader / wall time of the steps (goal <= 5 %);
    augmentation share = host time launching the device augmentation / wall time.
The snapshot is written by `mrifoundry bench-corpus` (reused when --warehouse already holds one).

Usage (GPU; not run on the 2-core CPU machine this was written on):
    .venv/bin/python bench/train_stream.py --device cuda --preset base --batch 48 --bf16 --compile \
        --workers 8 --steps 30 --warmup 10 --subjects 400
CPU smoke run:
    .venv/bin/python bench/train_stream.py --device cpu --preset tiny --batch 2 --steps 4 --warmup 1 --subjects 10
Goal (H100-class GPU, base, bf16, compiled, batch 48): MFU >= 35 % with data wait <= 5 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    from train_step import cuda_peak_tflops, matmul_seconds

    from model.flops import train_step_flops
    from model.presets import get_preset
    from model.train import train
    from tasks.context import WarehouseContext
    from tasks.snapshot_data import SnapshotVolumes
    from warehouse.queries import latest_snapshot

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=48, help="samples per step per process")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, worker start-up)")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    ap.add_argument("--bf16", action="store_true", help="(CUDA training always runs under bf16 autocast)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--subjects", type=int, default=400, help="bench-corpus size when it has to be written")
    ap.add_argument("--warehouse", type=Path, default=None, help="existing/kept warehouse (default: a temp dir)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not args.bf16:
        print("note: CUDA training runs under bf16 autocast regardless of --bf16")
    with tempfile.TemporaryDirectory() as tmp:
        wh = args.warehouse or Path(tmp) / "wh"
        if not (wh / "manifest.duckdb").exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "flows.cli", "bench-corpus", "--subjects", str(args.subjects)]
            subprocess.run([*cmd, "--warehouse", str(wh)], cwd=ROOT, check=True, capture_output=True)
            print(f"bench-corpus --subjects {args.subjects}: {time.perf_counter() - t0:.0f} s")
        ctx = WarehouseContext(root=wh.resolve(), run_id="bench")
        dataset = SnapshotVolumes(ctx, latest_snapshot(ctx.manifest))
        model_cfg, train_cfg = get_preset(args.preset)
        total = args.warmup + args.steps
        train_cfg = dataclasses.replace(
            train_cfg,
            batch_size=args.batch,
            steps=total,
            num_workers=args.workers,
            device=args.device,
            compile=args.compile,
            checkpoint_every=10**9,
        )
        records: list[dict] = []
        t0 = time.perf_counter()
        train(model_cfg, train_cfg, dataset, Path(tmp) / "run", metadata={"bench": True}, log=records.append,
              progress=False)  # fmt: skip
        wall = time.perf_counter() - t0
    timed = records[args.warmup :]
    seconds = [r["data_seconds"] + r["augment_seconds"] + r["step_seconds"] for r in timed]
    t_step = statistics.median(seconds)
    flops = train_step_flops(model_cfg).total * args.batch
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    elif device.type == "cuda":
        peak = cuda_peak_tflops(device) * 1e12
    else:
        peak = 2 * 2048**3 / matmul_seconds(2048, torch.float32, device)
    data_share = sum(r["data_seconds"] for r in timed) / sum(seconds)
    aug_share = sum(r["augment_seconds"] for r in timed) / sum(seconds)
    print(f"preset {args.preset}, batch {args.batch}, {args.workers} workers, snapshot {len(dataset)} volumes, "
          f"{'compiled' if args.compile else 'eager'} on {device}; {total} steps in {wall:.0f} s")  # fmt: skip
    print(f"step (median of {len(timed)}): {t_step * 1e3:.1f} ms")
    print(f"throughput: {args.batch * model_cfg.n_tokens / t_step:,.0f} tokens/s ({args.batch / t_step:.1f} samples/s)")
    print(f"MFU: {flops / t_step / peak:.1%} of {peak / 1e12:.2f} TFLOP/s (goal >= 35 % on GPU)")
    print(f"data wait: {data_share:.1%} of step time (goal <= 5 %); augmentation launch: {aug_share:.1%}")
    skipped = sum(r["skipped"] for r in timed)
    if skipped:
        print(f"warning: {skipped:.0f} timed steps were skipped (non-finite loss)")


if __name__ == "__main__":
    main()
