"""Benchmark: tokens/s and model FLOPs utilisation (MFU) of one JEPA-MoE training step.

The step is `model.train.train_step` (forward, backward, clip, AdamW, MoE bias update) plus the EMA
update: exactly what the training loop runs, minus data loading (DataLoader workers overlap it).

MFU = model FLOPs per second / peak FLOPs per second of the device.
    model FLOPs: analytic, `model.flops.train_step_flops` (6 x active parameters x tokens for the
        trained networks, 2 x for the forward-only EMA target, plus the attention score terms);
    peak on CUDA: the dense bf16 tensor-core peak of the device from its data sheet (H100 SXM 989
        TFLOP/s; override with --peak-tflops), the usual MFU denominator;
    peak on CPU: a large matmul measured in the same run, in the same dtype and threads, interleaved
        with the training steps so both see the same background load (a shared machine moves single
        timings by 2-5x, ratios much less).

On CPU the base preset runs at a reduced depth (encoder 2 blocks with one MoE block, predictor 2
blocks, the base widths, token grid and masks) unless --full; per-block efficiency is what MFU
measures, so the reduction changes the absolute step time, not what the ratio means.

Usage:
    .venv/bin/python bench/train_step.py                               # CPU, reduced base, fp32
    .venv/bin/python bench/train_step.py --device cuda --bf16 --compile --batch 48   # H100: goal MFU >= 35 %
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch

from model.config import ModelConfig
from model.data import blob_volume
from model.distributed import World
from model.flops import train_step_flops
from model.jepa import JEPA
from model.masks import MaskCollator
from model.presets import count_parameters, get_preset
from model.train import build_optimizer, train_step

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
BF16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H200": 989.0, "H100 PCIe": 756.0, "A100": 312.0}


def cuda_peak_tflops(device: torch.device) -> float:
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops
    raise SystemExit(f"no bf16 peak known for {name!r}; pass --peak-tflops from the device's data sheet")


def reduced(cfg: ModelConfig) -> ModelConfig:
    """Base widths, grid and masks; 2 encoder blocks (the second a MoE block) and 2 predictor blocks."""
    return dataclasses.replace(cfg, enc_depth=2, moe_layers=(1,) if cfg.use_moe else (), pred_depth=2)


def make_batch(cfg: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A MaskCollator batch of synthetic brain-like volumes (a few distinct ones, cycled)."""
    volumes = [torch.from_numpy(blob_volume(seed))[None] for seed in range(min(batch, 4))]
    items = [{"image": volumes[i % len(volumes)]} for i in range(batch)]
    return {k: v.to(device) for k, v in MaskCollator(cfg, seed=0)(items, step=0).items()}


def matmul_seconds(n: int, dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync()
    t0 = time.perf_counter()
    a @ b
    sync()
    return time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--full", action="store_true", help="full depth on CPU too (default: reduced on CPU)")
    ap.add_argument("--batch", type=int, default=0, help="samples per step (default: 1 on CPU, the preset's on GPU)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (the training setting on GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model forward")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="override the peak used for MFU")
    ap.add_argument("--matmul-n", type=int, default=2048, help="matrix size of the CPU peak measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model_cfg, train_cfg = get_preset(args.preset)
    if device.type == "cpu" and not args.full:
        model_cfg = reduced(model_cfg)
    batch_size = args.batch or (1 if device.type == "cpu" else train_cfg.batch_size)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.compile and not args.bf16 and model_cfg.use_moe and model_cfg.moe_impl == "grouped":
        raise SystemExit("--compile needs --bf16: torch.compile only traces F.grouped_mm (the MoE experts) in bf16")

    torch.manual_seed(0)
    model = JEPA(model_cfg).to(device).train()
    optimizer = build_optimizer(model, train_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    batch = make_batch(model_cfg, batch_size, device)

    def step() -> float:
        sync()
        t0 = time.perf_counter()
        out = train_step(forward, model, optimizer, params, batch, train_cfg.lr, train_cfg.grad_clip, autocast, World())
        model.ema_update(train_cfg.ema)
        sync()
        if not out.applied:
            raise SystemExit(f"step was skipped (loss {out.values['loss']}, grad norm {out.grad_norm})")
        return time.perf_counter() - t0

    t_compile = sum(step() for _ in range(args.warmup))
    step_times, matmul_times = [], []
    for _ in range(args.steps):  # interleaved: the CPU peak sees the same background load as the steps
        step_times.append(step())
        if device.type == "cpu":
            matmul_times.append(matmul_seconds(args.matmul_n, dtype, device))
    t_step = statistics.median(step_times)

    flops = train_step_flops(model_cfg)
    model_flops_per_s = flops.total * batch_size / t_step
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif device.type == "cuda":
        peak, peak_source = (
            cuda_peak_tflops(device) * 1e12,
            f"bf16 dense data-sheet peak of {torch.cuda.get_device_name()}",
        )
    else:
        peak = 2 * args.matmul_n**3 / statistics.median(matmul_times)
        peak_source = f"{args.matmul_n}^3 {str(dtype).removeprefix('torch.')} matmul measured in this run"

    n = count_parameters(model_cfg)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    depth = " (reduced depth)" if model_cfg.enc_depth != get_preset(args.preset).model.enc_depth else ""
    precision = ("bf16" if args.bf16 else "fp32") + (", compiled" if args.compile else "")
    print(
        f"preset {args.preset}{depth}: encoder {model_cfg.enc_width}x{model_cfg.enc_depth} "
        f"({n.encoder_active / 1e6:.1f} M active of {n.encoder_total / 1e6:.1f} M), predictor "
        f"{model_cfg.pred_width}x{model_cfg.pred_depth}, batch {batch_size}, {precision} on {where}"
    )
    tokens_per_s, samples_per_s = batch_size * model_cfg.n_tokens / t_step, batch_size / t_step
    share = {k: v / flops.total for k, v in dataclasses.asdict(flops).items()}
    print(f"step time       : {t_step * 1e3:10.1f} ms  (median of {args.steps}; warmup/compile {t_compile:.1f} s)")
    print(f"throughput      : {tokens_per_s:10,.0f} tokens/s  ({samples_per_s:.2f} samples/s)")
    print(
        f"model FLOPs/step: {flops.total * batch_size / 1e9:10.1f} GFLOP  "
        f"(target encoder {share['target_encoder']:.0%}, "
        f"context encoder {share['context_encoder']:.0%}, predictor {share['predictor']:.0%})"
    )
    print(f"achieved        : {model_flops_per_s / 1e12:10.3f} TFLOP/s")
    print(f"peak            : {peak / 1e12:10.3f} TFLOP/s  ({peak_source})")
    print(f"MFU             : {model_flops_per_s / peak:10.1%}")


if __name__ == "__main__":
    main()
