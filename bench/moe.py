"""Benchmark: MoE forward+backward, tokens sorted by expert + grouped matmul vs a per-expert loop.

Both implementations live in model/moe.py (`impl="grouped"`, `impl="loop"`) and share weights here,
so the only difference is how the routed experts are computed. Same run, same tokens, same routing;
prints tokens/s of each and the ratio (goal on an H100 in bf16: grouped >= 2x loop). The loop path
also pays a host sync per layer (`.tolist()` of the group sizes), which is part of what is measured.

Usage:
    .venv/bin/python bench/moe.py                        # CPU, base layer sizes, 2048 tokens
    .venv/bin/python bench/moe.py --device cuda --bf16   # GPU (bf16 autocast, CUTLASS grouped GEMM)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from model.moe import MoE


def make_pair(args: argparse.Namespace, device: torch.device) -> dict[str, MoE]:
    """Two MoE layers with identical weights, one per implementation."""
    torch.manual_seed(0)
    grouped = MoE(args.dim, args.hidden, args.experts, args.shared, args.top_k, impl="grouped").to(device)
    loop = MoE(args.dim, args.hidden, args.experts, args.shared, args.top_k, impl="loop").to(device)
    loop.load_state_dict(grouped.state_dict())
    return {"grouped": grouped.train(), "loop": loop.train()}


def fwd_bwd_seconds(moe: MoE, x: torch.Tensor, autocast: contextlib.AbstractContextManager) -> float:
    """Wall seconds of one forward+backward (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    moe.zero_grad(set_to_none=True)
    sync()
    t0 = time.perf_counter()
    with autocast:
        y = moe(x)
    y.float().square().mean().backward()
    sync()
    moe.counts.zero_()
    return time.perf_counter() - t0


def interleaved_medians(
    layers: dict[str, MoE], x: torch.Tensor, repeats: int, warmup: int, autocast: contextlib.AbstractContextManager
) -> dict[str, float]:
    """Median seconds per implementation, alternating them round by round.

    Alternating (and flipping the order every round) exposes both to the same background load, which
    on a shared machine moves single timings by 2-5x; the ratio of medians is then meaningful.
    """
    times: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for i in range(warmup + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            t = fwd_bwd_seconds(layers[name], x, autocast)
            if i >= warmup:
                times[name].append(t)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per call (base: 48 x 3 x 144 = 20736/GPU)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--shared", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (the training setting on GPU)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    layers = make_pair(args, device)
    x = torch.randn(args.tokens, args.dim, device=device, requires_grad=True)
    with torch.no_grad(), autocast:
        diff = (layers["grouped"](x).float() - layers["loop"](x).float()).abs().max().item()
    for moe in layers.values():
        moe.counts.zero_()

    seconds = interleaved_medians(layers, x, args.repeats, args.warmup, autocast)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"MoE layer {args.dim}->{args.hidden}->{args.dim}, {args.experts} routed + {args.shared} shared, ", end="")
    print(f"top-{args.top_k}, {args.tokens} tokens, {'bf16' if args.bf16 else 'fp32'} on {name}")
    print(f"max |grouped - loop| output difference: {diff:.2e}; medians of {args.repeats} interleaved rounds")
    for impl, s in seconds.items():
        print(f"{impl:8s}: {args.tokens / s:12,.0f} tokens/s  (fwd+bwd {s * 1e3:8.2f} ms)")
    print(f"ratio grouped/loop: {seconds['loop'] / seconds['grouped']:.2f}x")


if __name__ == "__main__":
    main()
