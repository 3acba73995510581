"""Benchmark flow: generate a labelled cohort, pretrain on its unlabelled pool, evaluate, write the report.

This is the experiment that says whether pretraining helps: the encoder is pretrained only on the
pool (disjoint subjects), then compared with its baselines on fixed patient-level splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prefect import flow, get_run_logger

from flows.evaluate import evaluate_flow
from flows.pretrain import pretrain_flow
from tasks import units
from tasks.evaluation import units as eval_units


@dataclass(frozen=True)
class BenchPreset:
    subjects: int  # labelled + pool
    pool_fraction: float
    pretrain_preset: str
    pretrain_steps: int | None
    eval_preset: str


BENCH_PRESETS: dict[str, BenchPreset] = {
    # 2 CPU cores, <= 30 min: 160 pool subjects (480 volumes) for pretraining, 640 labelled (~120 random-split
    # test subjects, ~160 on the held-out site: at 60 an AUROC interval was +-0.13 wide, too wide to tell
    # a real gain from noise). `tiny_bench`: the tiny network, 5000 steps of 4 volumes (~42 passes over the
    # pool), the recipe bench/tune_recipe.py chose on a cohort of its own with the same 160-subject pool.
    "cpu": BenchPreset(
        subjects=800, pool_fraction=0.2, pretrain_preset="tiny_bench", pretrain_steps=5000, eval_preset="cpu"
    ),
    # One GPU, <= 10 min.
    "small": BenchPreset(
        subjects=2000, pool_fraction=0.5, pretrain_preset="small", pretrain_steps=1500, eval_preset="small"
    ),
    # Tests and smoke runs.
    "tiny": BenchPreset(subjects=40, pool_fraction=0.25, pretrain_preset="tiny", pretrain_steps=2, eval_preset="tiny"),
}


@flow(name="benchmark")
def benchmark_flow(
    warehouse: str, preset: str = "cpu", seed: int = 0, subjects: int | None = None, steps: int | None = None
) -> dict:
    """Cohort -> pretrain (on the pool) -> evaluate -> report; returns the summaries and the result JSON."""
    if preset not in BENCH_PRESETS:
        raise ValueError(f"unknown benchmark preset {preset!r}; valid: {', '.join(BENCH_PRESETS)}")
    p = BENCH_PRESETS[preset]
    log = get_run_logger()
    ctx = units.open_warehouse_task(warehouse)
    corpus = eval_units.bench_corpus_task(ctx, subjects or p.subjects, seed, p.pool_fraction)
    log.info("cohort %s: %d labelled, %d pool subjects", corpus.cohort_id, corpus.n_labelled, corpus.n_pool)
    trained = pretrain_flow(
        warehouse, preset=p.pretrain_preset, snapshot_id=corpus.pool_snapshot_id, steps=steps or p.pretrain_steps
    )
    evaluated = evaluate_flow(warehouse, checkpoint_id=trained["checkpoint_id"], preset=p.eval_preset)
    return {
        "corpus": asdict(corpus),
        "pretrain": {k: v for k, v in trained.items() if k != "losses"},
        "evaluate": evaluated,
        "result": {"tasks": evaluated["tasks"]},
    }
