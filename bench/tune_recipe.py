"""Choose the benchmark's pretraining recipe on a tuning cohort of its own, never on the benchmark's.

`mrifoundry benchmark` reports on the cohort drawn with seed 0. Choosing its step count or feature
readout by looking at that cohort's test split would make its intervals mean nothing, so the choice is
made here, on a cohort drawn with another seed (same generator, same sizes: other subjects, other
noise, other lesions), whose whole labelled set may be read.

One pretraining run is extended step by step (warm starts of the main phase: weights, EMA target and
AdamW moments carry over, with the preset's short lr warmup again), and after each stage the
frozen-feature protocols (`tune` evaluation preset: linear and attentive probes) score pretrained vs
random init for each readout. Per task the paired difference is turned into a z-score (difference /
bootstrap standard error, positive = pretrained better), and a recipe's score is the mean z over tasks:
unit-free, so AUROC, MAE and C-index count alike. The run behind the `tiny_bench` preset and its numbers:
docs/evaluation.md, docs/results/tune-2026-11-30/.

Usage:
    .venv/bin/python bench/tune_recipe.py --warehouse /tmp/tune --seed 1 --steps 1000,2000,3000 --json a.json
    .venv/bin/python bench/tune_recipe.py --warehouse /tmp/tune --seed 1 --ema 0.996 --steps 1000,2000,3000
    .venv/bin/python bench/tune_recipe.py ... --ema 0.996 --start-at 3000 --steps 4000,5000   # extend
    .venv/bin/python bench/tune_recipe.py ... --rescore --steps 1000,2000   # after an evaluation change
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np


def z_scores(tasks: list[dict]) -> dict[str, float]:
    """Per task, pretrained minus random init over its bootstrap standard error (95 % CI width / 3.92)."""
    out = {}
    for t in tasks:
        d = t["paired_difference"].get("random_init")
        if not d or d["value"] is None or d["ci"][0] is None:
            continue
        se = (d["ci"][1] - d["ci"][0]) / 3.92
        out[t["task"]] = d["value"] / se if se > 0 else 0.0
    return out


def evaluate_readouts(ctx, checkpoint_id: str, regions: list[int]) -> dict[int, list[dict]]:
    """Score one checkpoint under each readout; features are extracted once, at the largest readout."""
    from tasks.evaluation.config import get_eval_preset
    from tasks.evaluation.features import FeatureBank
    from tasks.evaluation.protocols import default_tasks
    from tasks.evaluation.runner import prepare, run_protocol

    cfg = replace(get_eval_preset("tune"), pool_regions=max(regions))
    state = prepare(ctx, checkpoint_id, cfg)
    full = state.bank
    width = state.model_cfg.enc_width
    # readout() puts the global mean first: the mean-only readout is the first `width` columns of the encoders'
    mean_only = {m: (v[:, :width] if m in full.tokens else v) for m, v in full.pooled.items()}
    out = {}
    for r in regions:
        pooled = full.pooled if r == max(regions) else mean_only  # main() allows only 1 and one r > 1
        state.bank = FeatureBank(full.index, pooled, full.tokens, full.small)
        state.cfg = replace(cfg, pool_regions=r)
        results = [run_protocol(state, spec) for spec in default_tasks(state.cohort, state.cfg)]
        out[r] = [res.as_json() for res in results if res is not None]
    return out


def stages(ctx, args: argparse.Namespace, preset: str, pool: str, steps: list[int]):
    """(cumulative steps, checkpoint id) at each requested step count: trained now, or (--rescore) read
    back from the chain of warm starts an earlier run of this script left in the warehouse."""
    if args.rescore:
        from warehouse.lineage import latest_main_checkpoint, lineage

        head = latest_main_checkpoint(ctx.manifest, preset)
        if head is None:
            raise SystemExit(f"--rescore: no {preset} checkpoint in {args.warehouse}; run without --rescore first")
        total = 0
        for c in reversed(lineage(ctx.manifest, head["checkpoint_id"])):  # oldest first
            total += c["steps"]
            if total in steps:
                yield total, c["checkpoint_id"]
        return
    from tasks.train import pretrain

    done = args.start_at
    for total in (s for s in steps if s > done):
        t0 = time.perf_counter()
        out = pretrain(ctx, preset, pool, total - done, from_scratch=done == 0)
        done = total
        print(f"pretrained to step {total} ({time.perf_counter() - t0:.0f} s, loss {out.final_loss:.3f})", flush=True)
        yield total, out.checkpoint_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", required=True, help="a warehouse for the tuning cohort (created if missing)")
    ap.add_argument("--seed", type=int, default=1, help="cohort seed; 0 is the benchmark's own, so not allowed")
    ap.add_argument(
        "--subjects",
        type=int,
        default=480,
        help="labelled + pool subjects; a third is the pool (480: the cpu benchmark's 160-subject pool)",
    )
    ap.add_argument("--preset", default="tiny_bench", help="pretraining preset")
    ap.add_argument("--steps", default="300,1000,2000,3000", help="cumulative step counts to score, ascending")
    ap.add_argument("--ema", type=float, default=None, help="override the preset's EMA (a derived preset name)")
    ap.add_argument(
        "--start-at",
        type=int,
        default=0,
        help="steps the warehouse's latest checkpoint of this "
        "preset already has: the first stage warm-starts from it (extend an earlier tuning run)",
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="train nothing: score the checkpoints an earlier run "
        "left (after an evaluation change), at the --steps they reached",
    )
    ap.add_argument("--regions", default="1,2", help="readouts to score: 1 = global mean, r = mean + r³ blocks")
    ap.add_argument("--json", default=None, help="write every task's numbers here")
    args = ap.parse_args()
    if args.seed == 0:
        raise SystemExit("--seed 0 is the benchmark cohort itself; tune on another seed (e.g. --seed 1)")
    steps = [int(s) for s in args.steps.split(",")]
    regions = sorted(int(r) for r in args.regions.split(","))
    if any(r not in (1, regions[-1]) for r in regions):
        raise SystemExit(f"--regions {args.regions}: 1 and one r > 1 at most (they share one feature pass)")
    if steps != sorted(steps) or steps[0] < 1:
        raise SystemExit(f"--steps {args.steps}: give ascending positive cumulative step counts")

    from synth.cohort import CohortConfig
    from tasks.bench_corpus import write_bench_corpus
    from tasks.context import open_warehouse

    preset = args.preset
    if args.ema is not None:  # a derived preset, registered in this process (training runs in it)
        from model.presets import PRESETS, Preset

        base = PRESETS[args.preset]
        preset = f"{args.preset}-ema{args.ema:g}"
        PRESETS[preset] = Preset(base.model, replace(base.train, ema=args.ema))
    ctx = open_warehouse(args.warehouse)
    corpus = write_bench_corpus(ctx, CohortConfig(n_subjects=args.subjects, seed=args.seed, pool_fraction=1 / 3))
    print(f"tuning cohort {corpus.cohort_id}: {corpus.n_labelled} labelled, {corpus.n_pool} pool subjects", flush=True)
    rows = []
    for total, checkpoint_id in stages(ctx, args, preset, corpus.pool_snapshot_id, steps):
        for r, tasks in evaluate_readouts(ctx, checkpoint_id, regions).items():
            z = z_scores(tasks)
            mean_z = float(np.mean(list(z.values()))) if z else None  # None: every task withheld (small n)
            row = {"steps": total, "regions": r, "mean_z": mean_z, "z": z}
            rows.append(row | {"checkpoint_id": checkpoint_id, "tasks": tasks})
            cells = "  ".join(f"{k} {v:+.2f}" for k, v in z.items())
            shown = "n/a (too few test subjects)" if mean_z is None else f"{mean_z:+.2f}"
            print(f"  steps {total:5d} regions {r}: mean z {shown} | {cells}", flush=True)
    if not rows:
        raise SystemExit(f"--steps {args.steps}: nothing above --start-at {args.start_at}")
    scored = [r for r in rows if r["mean_z"] is not None]
    best = max(scored, key=lambda r: r["mean_z"]) if scored else None
    if best is None:
        print("chosen: none (no task had enough test subjects for an interval; use a larger --subjects)")
    else:
        print(f"chosen: steps {best['steps']}, regions {best['regions']} (mean z {best['mean_z']:+.2f})")
    if args.json:
        with open(args.json, "w") as f:
            summary = {"cohort": corpus.cohort_id, "seed": args.seed, "preset": preset}
            json.dump(summary | {"rows": rows, "chosen": best}, f, indent=1)


if __name__ == "__main__":
    main()
