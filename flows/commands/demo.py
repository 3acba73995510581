"""`mrifoundry demo`: a synthetic hospital export through the whole DAG, then a readable summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = subparsers.add_parser("demo", help="generate a synthetic hospital export and run the whole DAG on it")
    d.add_argument(
        "--out",
        type=Path,
        default=Path("var/demo"),
        help="output directory (default var/demo); the warehouse is OUT/warehouse",
    )
    d.add_argument("--synth-preset", default="demo", help="size of the synthetic export: tiny, demo, large")
    d.add_argument("--preset", default="tiny", help="model preset for pretraining (default tiny: CPU, minutes)")
    d.add_argument("--steps", type=int, default=None, help="override the preset's number of training steps")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic export")
    d.set_defaults(handler=run)
    return d


def run(args: argparse.Namespace) -> int:
    from flows.pipeline import demo_flow

    t0 = time.perf_counter()
    result = demo_flow(
        out=str(args.out),
        synth_preset=args.synth_preset,
        preset=args.preset,
        steps=args.steps,
        seed=args.seed,
    )
    print_demo_summary(result, time.perf_counter() - t0)
    return 0


def print_demo_summary(result: dict[str, Any], seconds: float) -> None:
    cur, pre, ev = result["curate"], result["pretrain"], result["evaluate"]
    wh = Path(cur["warehouse"])
    print("\n" + "=" * 72)
    print(f"MRI Foundry demo finished in {seconds / 60:.1f} min")
    print(f"  manifest:   {wh / 'manifest.duckdb'}")
    print(f"  shards:     {wh / 'shards'} (snapshot {cur['snapshot_id']}, {cur['snapshot_volumes']} volumes)")
    print(f"  checkpoint: {pre['checkpoint_path']}")
    print(f"  report:     {ev['report']}")
    if ev.get("evaluation_report"):
        print(f"  evaluation: {ev['evaluation_report']}")
    print(f"Series found per class: {cur['series_by_class']}")
    print(f"Series rejected: {cur['rejections']}; skipped files: {cur['rejected_files']}")
    kept: dict[str, dict[str, int]] = {}
    for label, decision, n in cur["volumes_by_decision"]:
        kept.setdefault(label, {})[decision] = n
    print(f"Volumes by class and QC decision: {kept}")
    if cur["qc_reasons"]:
        print(f"QC reasons: {cur['qc_reasons']}")
    print(
        f"Pretraining ({pre['preset']}): {pre['steps']} steps, loss {pre['first_loss']:.4f} -> {pre['final_loss']:.4f}"
    )
    print_evaluation(ev)
    print("=" * 72)


def print_evaluation(ev: dict[str, Any]) -> None:
    """Evaluation in words: a number only where the test set supports an interval, else the reason."""
    shown = [s for s in ev["scores"] if s["value"] is not None and not s["encoder"].startswith("pretrained_minus_")]
    if not shown:
        reasons = sorted({s["note"] for s in ev["scores"] if s.get("note")}) or list(ev.get("notes", []))
        print("Evaluation: no number is shown, the labelled test set is too small for an interval to mean anything:")
        for r in reasons[:3]:
            print(f"  - {r}")
        print("  Run `mrifoundry benchmark --warehouse DIR` for a cohort large enough to tell.")
        return
    for line in ev.get("verdict", []):
        print(f"Evaluation: {line}")
    for s in shown:
        if s["encoder"] == "pretrained":
            print(
                f"  {s['task']:<24} {s['metric']:<11} pretrained {s['value']:.3f} "
                f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] ({s['n_subjects']} test subjects)"
            )
