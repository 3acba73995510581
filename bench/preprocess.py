"""Benchmark: seconds per real volume for register + skull-strip + QC, against an older commit, same run.

Conversion is left out: the inputs are the real NIfTIs in ../shared/data/nifti (t1w_chris 0.88 mm,
t2w_head 1×1×2 mm, flair_lesions 1 mm), so the chain starts at ``register_to_mni`` exactly as
``tasks.preprocess`` runs it: register → deepbet (``DeepbetBackend``) → ``compute_metrics`` + ``decide``.

The baseline is the ``imaging/`` package of another commit (default ``BASELINE_REV``, the code before
issue 11's speed-up), unpacked with ``git archive`` into a temporary folder and imported from there by a
worker subprocess; the current tree runs in a second worker. Both workers use the same thread budget
(``--threads``: ITK via ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, torch via set_num_threads, OpenMP/BLAS
via their variables), warm their caches first (templates, the deepbet model, one full pass over the
smallest volume), and alternate (baseline, current, current, baseline, ...) so that a neighbour's load
on a shared machine falls on both. Each worker reports, per volume, the best of its repeats.

Printed: seconds per stage and volume for both (wall clock, and CPU seconds of all threads: on a shared
machine the CPU time is the steadier measure), the ratio, registration sub-steps, and the QC metrics of
both with the largest relative change per metric and both decisions (the speed-up must not change what
QC decides).

Usage:
    .venv/bin/python bench/preprocess.py [--baseline-rev REV] [--threads 2] [--repeat 2]
        [--volumes t1w_chris,t2w_head,flair_lesions] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "nifti"
VOLUMES = {"t1w_chris": "T1w", "t2w_head": "T2w", "flair_lesions": "FLAIR"}
BASELINE_REV = "2a32efb"
"""The last commit before issue 11's preprocessing changes: QC fitted its own N4 field, built the native
head mask with per-slice hole filling and measured the air's margin with scipy's distance transform."""

STAGES = ("register", "skullstrip", "qc", "total")


# ------------------------------------------------------------------------------------------ worker


def _limit_threads(n: int) -> None:
    """Set every thread pool to ``n`` before the heavy libraries start (they read these once)."""
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def _chain(native: Path, contrast: str, out: Path) -> dict:
    """One volume through register → deepbet → QC, timed per stage."""
    from imaging.qc import compute_metrics, decide
    from imaging.register import register_to_mni
    from imaging.skullstrip import DeepbetBackend

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, cpu = [time.perf_counter()], [time.process_time()]

    def lap() -> None:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())

    reg = register_to_mni(native, out, contrast=contrast)
    lap()
    mask = DeepbetBackend().strip(Path(reg.registered_path), out / "mask.nii.gz")
    lap()
    metrics = compute_metrics(
        native, Path(reg.registered_path), mask, Path(reg.fov_path), reg.similarity, reg.fov_coverage
    )
    decision, reasons = decide(metrics, contrast=contrast)
    lap()

    def per_stage(t: list[float]) -> dict[str, float]:
        return {"register": t[1] - t[0], "skullstrip": t[2] - t[1], "qc": t[3] - t[2], "total": t[3] - t[0]}

    return {
        "seconds": per_stage(wall),
        "cpu_seconds": per_stage(cpu),
        "register_steps": dict(reg.step_seconds),
        "metrics": metrics,
        "decision": decision,
        "reasons": list(reasons),
    }


def worker(volumes: list[str], repeat: int, threads: int, workdir: Path) -> dict:
    """Run in a subprocess whose ``imaging`` package is the one under test (see the module doc)."""
    _limit_threads(threads)
    import torch

    import imaging

    torch.set_num_threads(threads)
    from imaging.skullstrip import deepbet_extractor

    deepbet_extractor()
    natives = {}
    for name in volumes:
        natives[name] = workdir / name / "native.nii.gz"
        natives[name].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL_DATA / f"{name}.nii.gz", natives[name])
    warm = min(volumes, key=lambda n: natives[n].stat().st_size)
    _chain(natives[warm], VOLUMES[warm], workdir / "warmup")
    results: dict[str, dict] = {}
    for name in volumes:
        runs = [_chain(natives[name], VOLUMES[name], workdir / name / "out") for _ in range(repeat)]
        best = min(runs, key=lambda r: r["seconds"]["total"])
        results[name] = best
    return {"imaging": str(Path(imaging.__file__).resolve().parent), "volumes": results}


# ------------------------------------------------------------------------------------------ driver


def _run_worker(tree: Path, volumes: list[str], repeat: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mrifoundry-bench-pre-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--volumes",
            ",".join(volumes),
            "--repeat",
            str(repeat),
            "--threads",
            str(threads),
            "--workdir",
            tmp,
            "--json",
            str(out),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"worker for {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    if Path(result["imaging"]) != (tree / "imaging").resolve():
        raise RuntimeError(f"worker imported {result['imaging']}, not {tree / 'imaging'}: check PYTHONPATH")
    return result


def _baseline_tree(rev: str, dest: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "imaging"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode()[-300:]}; pass --baseline-rev REV")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _rel_change(old: float, new: float) -> float:
    if math.isnan(old) and math.isnan(new):
        return 0.0
    if math.isnan(old) or math.isnan(new):
        return math.inf
    if old == new:
        return 0.0
    return abs(new - old) / max(abs(old), 1e-12)


def _best_of(results: list[dict], name: str) -> dict:
    return min((r["volumes"][name] for r in results), key=lambda r: r["seconds"]["total"])


def report(base: list[dict], cur: list[dict], volumes: list[str]) -> dict:
    print(
        f"{'volume':<14}{'stage':<12}{'baseline s':>11}{'current s':>11}{'ratio':>8}{'CPU s base':>12}{'CPU s cur':>11}"
    )
    summary: dict = {"volumes": {}, "metric_max_rel_change": {}, "decisions_equal": True}
    for name in volumes:
        b, c = _best_of(base, name), _best_of(cur, name)
        summary["volumes"][name] = {"baseline": b, "current": c}
        for stage in STAGES:
            bs, cs = b["seconds"][stage], c["seconds"][stage]
            bc, cc = b["cpu_seconds"][stage], c["cpu_seconds"][stage]
            print(f"{name:<14}{stage:<12}{bs:>11.2f}{cs:>11.2f}{bs / cs:>7.2f}x{bc:>12.2f}{cc:>11.2f}")
        steps = ", ".join(f"{k} {v:.2f}" for k, v in c["register_steps"].items())
        print(f"{'':<14}register steps (current): {steps}")
    print(f"\n{'metric':<26}" + "".join(f"{n[:13]:>28}" for n in volumes) + f"{'max rel change':>16}")
    keys = sorted(set().union(*(_best_of(cur, n)["metrics"] for n in volumes)))
    for key in keys:
        cells, worst = [], 0.0
        for name in volumes:
            old = float(_best_of(base, name)["metrics"].get(key, math.nan))
            new = float(_best_of(cur, name)["metrics"].get(key, math.nan))
            worst = max(worst, _rel_change(old, new))
            cells.append(f"{old:>13.4g} -> {new:<11.4g}")
        summary["metric_max_rel_change"][key] = worst
        print(f"{key:<26}" + "".join(f"{c:>28}" for c in cells) + f"{worst:>16.2%}")
    print()
    for name in volumes:
        b, c = _best_of(base, name), _best_of(cur, name)
        same = (b["decision"], b["reasons"]) == (c["decision"], c["reasons"])
        summary["decisions_equal"] &= same
        print(
            f"decision {name:<14} baseline {b['decision']} {b['reasons']}  current {c['decision']} {c['reasons']}"
            f"  {'same' if same else 'CHANGED'}"
        )
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision whose imaging/ is the baseline")
    ap.add_argument("--threads", type=int, default=2, help="threads for ITK, torch and OpenMP in each worker")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per volume and worker (best is kept)")
    ap.add_argument("--rounds", type=int, default=1, help="baseline/current worker pairs (alternating order)")
    ap.add_argument("--volumes", default=",".join(VOLUMES), help="comma-separated names from ../shared/data/nifti")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    volumes = [v for v in args.volumes.split(",") if v]
    unknown = [v for v in volumes if v not in VOLUMES]
    if unknown:
        raise SystemExit(f"unknown volume(s) {unknown}; choose from {', '.join(VOLUMES)}")
    if args.worker:
        result = worker(volumes, args.repeat, args.threads, args.workdir)
        args.json.write_text(json.dumps(result))
        return 0
    missing = [v for v in volumes if not (REAL_DATA / f"{v}.nii.gz").is_file()]
    if missing:
        raise SystemExit(f"no {missing} under {REAL_DATA}; the benchmark needs ../shared/data beside the checkout")
    base, cur = [], []
    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mrifoundry-bench-base-") as tmp:
        tree = _baseline_tree(args.baseline_rev, Path(tmp))
        for i in range(args.rounds):
            order = [("baseline", tree, base), ("current", REPO, cur)]
            for label, root, sink in order if i % 2 == 0 else order[::-1]:
                t0, load0 = time.perf_counter(), os.getloadavg()[0]
                sink.append(_run_worker(root, volumes, args.repeat, args.threads))
                # The 1-minute load average around each worker: a neighbour's load shows which one it hit.
                print(
                    f"[{label} worker, round {i + 1}: {time.perf_counter() - t0:.0f} s, "
                    f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}]",
                    file=sys.stderr,
                )
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, {args.threads} threads per worker, best of {args.repeat} x {args.rounds} runs")
    print(f"baseline {args.baseline_rev}, load average at the start {start_load:.1f}, at the end {load:.1f}\n")
    summary = report(base, cur, volumes)
    if args.json:
        args.json.write_text(json.dumps({"baseline": base, "current": cur, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
