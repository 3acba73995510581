"""Benchmark: batched device augmentation (model/augment.py) vs the per-sample MONAI pipeline it replaced.

Both start from the same prepared volumes (grid-fitted, percentile-scaled, 96x108x96) and apply the
same augmentations with the same distributions: flips on each axis, bias field, gamma, Gaussian
noise, intensity shift. Neither side includes reading, scaling or the foreground map (the loader
worker does those once per sample either way). Rounds alternate between the two on the same thread
count so both see the same background load; the ratio is of the medians. On a shared machine
the wall-clock rates move with other people's load (printed, as the 1-minute load average before
and after); the rates per CPU-second of this process are printed too, as a steadier second view
(with more than one thread they count OpenMP's spin-waiting as well).
With more than one torch thread, augment_batch's CPU schedule spreads the samples over the threads,
one intra-op thread each (model/augment.py says why); MONAI's ops split over the threads as usual.

Usage:
    .venv/bin/python bench/augment.py                       # CPU, torch's default thread count
    .venv/bin/python bench/augment.py --threads 1           # one core each
    .venv/bin/python bench/augment.py --device cuda --batch 48   # the GPU schedule (baseline stays on CPU)
Goal on CPU: >= 10x the samples/s of the MONAI pipeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from model.augment import AugmentConfig, augment_batch, draw_params
from model.data import blob_volume, prepare_volume


def monai_pipeline():
    """The old per-sample chain (model/data.py, VolumeDataset(train=True)), without the foreground map."""
    from monai import transforms as mt

    spatial = mt.Compose([mt.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)])
    intensity = mt.Compose(
        [
            mt.RandBiasField(prob=0.5, coeff_range=(0.0, 0.1), degree=3),
            mt.RandAdjustContrast(prob=0.5, gamma=(0.6, 1.5)),
            mt.RandGaussianNoise(prob=0.5, mean=0.0, std=0.1),
            mt.RandShiftIntensity(prob=0.5, offsets=0.1),
        ]
    )

    def run(image: torch.Tensor, draw: int) -> torch.Tensor:
        spatial.set_random_state(seed=2 * draw)
        intensity.set_random_state(seed=2 * draw + 1)
        out = intensity(spatial(image))
        return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(np.asarray(out))

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="samples per batched call (and per MONAI round)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both (default: torch's)")
    ap.add_argument("--device", default="cpu", help="where the batched augmentation runs (cpu, cuda)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    volumes = [prepare_volume(blob_volume(seed)) for seed in range(4)]  # [1, X, Y, Z] each, in [0, 1]
    batch = torch.stack([volumes[i % 4] for i in range(args.batch)]).to(device)  # [B, 1, X, Y, Z]
    cfg, monai = AugmentConfig(), monai_pipeline()

    def batched(r: int) -> tuple[float, float]:
        params = draw_params(cfg, seed=0, positions=range(r * args.batch, (r + 1) * args.batch))
        images = batch.clone()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        augment_batch(images, params, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    def per_sample(r: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.batch):
            monai(volumes[i % 4], r * args.batch + i)
        return time.perf_counter() - t0, time.process_time() - c0

    batched(0), per_sample(0)  # warm-up: imports, allocator, MONAI's lazy set-up, the noise bank
    load_before = os.getloadavg()[0]
    new, old = [], []
    for r in range(1, args.rounds + 1):
        new.append(batched(r))
        old.append(per_sample(r))
    load_after = os.getloadavg()[0]
    new_rate, old_rate = (args.batch / statistics.median(t for t, _ in runs) for runs in (new, old))
    new_cpu, old_cpu = (args.batch / statistics.median(c for _, c in runs) for runs in (new, old))
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.rounds} rounds, volumes 96x108x96")
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs")
    print(f"per-sample MONAI (CPU)        : {old_rate:8.1f} samples/s  ({old_cpu:7.1f} per CPU-second)")
    print(f"batched augment_batch ({device.type:4}) : {new_rate:8.1f} samples/s  ({new_cpu:7.1f} per CPU-second)")
    print(f"ratio: {new_rate / old_rate:.1f}x (goal on CPU >= 10x); per CPU-second {new_cpu / old_cpu:.1f}x")


if __name__ == "__main__":
    main()
