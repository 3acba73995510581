"""Evaluate a checkpoint: frozen features once, every task through its protocol, paired statistics, rows.

Order: load the cohort and its fixed splits -> pretrain the CNN-MAE baseline on the unlabelled
pool -> one streaming feature pass (pretrained, random-init with an independent seed, handcrafted,
CNN-MAE) -> per task: fit on train, select on val, score test once -> scratch CNN and fine-tuning
-> subject-bootstrap estimates and paired differences -> manifest rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tasks.context import WarehouseContext
from tasks.evaluation import stats
from tasks.evaluation.config import EvalConfig, get_eval_preset
from tasks.evaluation.data import EvalCohort, load_cohort
from tasks.evaluation.features import FeatureBank, extract_bank
from tasks.evaluation.protocols import (
    SplitData,
    TaskSpec,
    default_tasks,
    fewshot_subset,
    run_frozen,
    split_data,
)
from tasks.evaluation.training import finetune_encoder, pretrain_cnn_mae, scratch_scores, train_scratch_cnn
from warehouse import cohort as cohort_q
from warehouse.manifest import now
from warehouse.queries import latest_checkpoint

log = logging.getLogger("mrifoundry.evaluate")
BASELINES = ("random_init", "scratch_cnn", "handcrafted", "cnn_mae")


@dataclass(frozen=True)
class TaskResult:
    task: str
    kind: str
    metric: str
    protocol: str
    scheme: str
    n_test: int
    results: dict[str, stats.Estimate]
    differences: dict[str, stats.Estimate]
    curves: dict[str, Any] = field(default_factory=dict)  # test targets and scores (ROC curves), extra metrics

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "results": {k: v.as_json() for k, v in self.results.items()},
            "paired_difference": {k: v.as_json() for k, v in self.differences.items()},
        }


@dataclass(frozen=True)
class EvaluationOutcome:
    checkpoint_id: str
    snapshot_id: str
    tasks: tuple[TaskResult, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    pretraining: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"tasks": [t.as_json() for t in self.tasks]}

    @property
    def scores(self) -> list[dict[str, Any]]:
        """Flat rows (one per task and method), for logs, the demo summary and the Prefect artifact."""
        rows = []
        for t in self.tasks:
            for method, e in t.results.items():
                rows.append(_row(t, method, e))
            for base, e in t.differences.items():
                rows.append(_row(t, f"pretrained_minus_{base}", e))
        return rows

    def across_tasks(self) -> dict[str, dict]:
        """Mean and spread of each paired difference across tasks (metrics differ; read as a tally)."""
        out = {}
        for base in BASELINES:
            vals = [t.differences[base].value for t in self.tasks if base in t.differences]
            above = sum(1 for t in self.tasks if base in t.differences and (t.differences[base].ci or (0, 0))[0] > 0)
            out[base] = {**stats.spread(vals), "tasks_ci_above_zero": above}
        return out


def _row(t: TaskResult, method: str, e: stats.Estimate) -> dict[str, Any]:
    return {
        "task": t.task,
        "encoder": method,
        "metric": t.metric if not method.startswith("pretrained_minus_") else f"{t.metric}_difference",
        "value": e.value,
        "auroc": e.value if t.metric == "auroc" and not method.startswith("pretrained_minus_") else None,
        "ci_low": e.ci[0] if e.ci else None,
        "ci_high": e.ci[1] if e.ci else None,
        "n_subjects": e.n_subjects,
        "note": e.note,
    }


def _checkpoint(ctx: WarehouseContext, checkpoint_id: str | None) -> dict[str, Any]:
    m = ctx.manifest
    ck = latest_checkpoint(m) if checkpoint_id is None else cohort_q.checkpoint_by_id(m, checkpoint_id)
    if ck is None:
        raise LookupError(f"no checkpoint {checkpoint_id or ''} in {ctx.root}: run `mrifoundry pretrain` first")
    return ck


def _encoders(ctx: WarehouseContext, ck: dict, cfg: EvalConfig) -> tuple[dict[str, torch.nn.Module], Any]:
    from model.checkpoint import load_encoder
    from model.encoder import build_encoder

    pretrained, mcfg = load_encoder(ctx.abs(ck["path"]))
    state = torch.get_rng_state()
    torch.manual_seed(cfg.random_init_seed)  # not the pretraining seed: a genuinely different init
    random_init = build_encoder(mcfg).eval()
    torch.set_rng_state(state)
    dev = torch.device(cfg.device)
    return {"pretrained": pretrained.to(dev), "random_init": random_init.to(dev)}, mcfg


@dataclass
class EvalState:
    """Everything the protocol tasks share: loaded once, then each task reads it (plain data + tensors)."""

    ctx: WarehouseContext
    cfg: EvalConfig
    checkpoint: dict[str, Any]
    cohort: EvalCohort
    bank: FeatureBank
    encoders: dict[str, torch.nn.Module]
    model_cfg: Any
    started: float
    cnn_mae_losses: list[float] = field(default_factory=list)
    scratch_cache: dict[tuple, torch.nn.Module] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare(ctx: WarehouseContext, checkpoint_id: str | None = None, preset: str | EvalConfig = "tiny") -> EvalState:
    """Checkpoint, cohort and splits, the CNN-MAE baseline, then one streaming feature pass."""
    t0 = time.perf_counter()
    cfg = get_eval_preset(preset) if isinstance(preset, str) else preset
    ck = _checkpoint(ctx, checkpoint_id)
    cohort = load_cohort(ctx, ck["snapshot_id"])
    encoders, mcfg = _encoders(ctx, ck, cfg)
    pool = cohort.pool_snapshot_id or ck["snapshot_id"]
    cnn_mae = pretrain_cnn_mae(ctx, pool, cfg) if cfg.run_cnn_mae else None
    bank = extract_bank(ctx, cohort, encoders, cnn_mae, cfg, tuple(mcfg.grid))
    log.info("features of %d volumes in %.0f s", len(bank.index), time.perf_counter() - t0)
    notes = [] if cohort.stored_splits else ["no stored splits: a hash of the subject id split subjects 60/20/20"]
    return EvalState(ctx, cfg, ck, cohort, bank, encoders, mcfg, t0, getattr(cnn_mae, "mae_losses", []), notes=notes)


def run_protocol(state: EvalState, spec: TaskSpec) -> TaskResult | None:
    """One task: fit on train, select on val, score test once; None (with a note) when it cannot run."""
    cohort, bank, cfg = state.cohort, state.bank, state.cfg
    tr, va, te = (split_data(cohort, bank, spec, s) for s in ("train", "val", "test"))
    if spec.protocol == "fewshot":
        sub = fewshot_subset(tr, spec.k or 0, cfg.seed)
        if sub is None:
            state.notes.append(f"{spec.name}: the train split has fewer than {spec.k} subjects of a class; skipped")
            return None
        tr = sub
    if min(len(tr.subjects), len(va.subjects), len(te.subjects)) == 0 or len(np.unique(tr.groups)) < 2:
        n = f"{len(tr.subjects)}/{len(va.subjects)}/{len(te.subjects)}"
        state.notes.append(f"{spec.name}: not run, train/val/test splits have {n} subjects")
        return None
    if spec.kind in ("binary", "multiclass") and len(np.unique(tr.target["y"])) < 2:
        state.notes.append(f"{spec.name}: not run, the train split holds a single class")
        return None
    preds = _run_task(
        state.ctx, cohort, bank, state.encoders, state.model_cfg, spec, tr, va, te, cfg, state.scratch_cache
    )
    log.info("task %s done (%.0f s)", spec.name, time.perf_counter() - state.started)
    return _score(spec, te, preds, cfg)


def finish(state: EvalState, results: list[TaskResult | None]) -> EvaluationOutcome:
    """Collect the task results and write the evaluation rows to the manifest."""
    out = EvaluationOutcome(
        checkpoint_id=state.checkpoint["checkpoint_id"],
        snapshot_id=state.cohort.snapshot_id,
        tasks=tuple(r for r in results if r is not None),
        seconds=time.perf_counter() - state.started,
        notes=tuple(state.notes),
        pretraining={"cnn_mae_losses": state.cnn_mae_losses},
    )
    _persist(state.ctx, out)
    return out


def evaluate(
    ctx: WarehouseContext,
    checkpoint_id: str | None = None,
    preset: str | EvalConfig = "tiny",
    tasks: list[TaskSpec] | None = None,
) -> EvaluationOutcome:
    """prepare -> every protocol -> finish, in one call (the flow runs the same steps as Prefect tasks)."""
    state = prepare(ctx, checkpoint_id, preset)
    specs = tasks if tasks is not None else default_tasks(state.cohort, state.cfg)
    return finish(state, [run_protocol(state, spec) for spec in specs])


def _run_task(
    ctx,
    cohort: EvalCohort,
    bank,
    encoders,
    mcfg,
    spec: TaskSpec,
    tr: SplitData,
    va: SplitData,
    te: SplitData,
    cfg: EvalConfig,
    cache,
) -> dict[str, np.ndarray]:
    if spec.protocol == "finetune":
        mod = spec.modalities[0]
        ids = [[cohort.volumes[s][mod] for s in d.subjects] for d in (tr, va, te)]
        preds = {
            name: finetune_encoder(
                ctx,
                cohort.snapshot_id,
                enc,
                mcfg.enc_width,
                (ids[0], tr.target["y"]),
                (ids[1], va.target["y"]),
                ids[2],
                cfg,
            )
            for name, enc in encoders.items()
        }
    else:
        preds = run_frozen(bank, spec, tr, va, te, cfg)
    if cfg.run_scratch_cnn:
        key = (spec.target, spec.modalities if spec.target == "modality" else spec.modalities[-1:], len(tr.subjects))
        if key not in cache:
            rows = [d.rows.get("all", d.rows.get(key[1][0])) for d in (tr, va)]
            cache[key] = train_scratch_cnn(
                spec.kind, bank.small[rows[0]], tr.target, bank.small[rows[1]], va.target, cfg
            )
        rows_te = te.rows.get("all", te.rows.get(key[1][0]))
        preds["scratch_cnn"] = scratch_scores(cache[key], spec.kind, bank.small[rows_te])
    return preds


def _score(spec: TaskSpec, te: SplitData, preds: dict[str, np.ndarray], cfg: EvalConfig) -> TaskResult:
    metric = stats.METRICS[spec.kind]
    subjects = np.unique(te.groups)
    rows_of = {s: np.flatnonzero(te.groups == s) for s in subjects}
    draws = stats.resamples(len(subjects), cfg.n_boot, cfg.seed)
    idx = [np.concatenate([rows_of[subjects[j]] for j in d]) if len(d) else np.zeros(0, int) for d in draws]
    results = {
        m: replace(stats.estimate(metric, te.target, p, idx), n_subjects=len(subjects)) for m, p in preds.items()
    }
    diffs = {}
    if "pretrained" in preds:
        for base in BASELINES:
            if base in preds:
                d = stats.paired_difference(metric, te.target, preds["pretrained"], preds[base], idx)
                diffs[base] = replace(d, n_subjects=len(subjects))
    curves: dict[str, Any] = {"target": {k: v.tolist() for k, v in te.target.items()}}
    if spec.kind in ("binary", "survival", "regression"):
        curves["scores"] = {m: np.asarray(p).tolist() for m, p in preds.items()}
    if spec.kind == "regression":
        curves["r2"] = {m: stats.r2(te.target["y"], p) for m, p in preds.items()}
    return TaskResult(spec.name, spec.kind, metric, spec.protocol, spec.scheme, len(subjects), results, diffs, curves)


def _persist(ctx: WarehouseContext, out: EvaluationOutcome) -> None:
    ts = now()
    rows = [
        {
            "run_id": ctx.run_id,
            "checkpoint_id": out.checkpoint_id,
            "task": r["task"],
            "encoder": r["encoder"],
            "metric": r["metric"],
            "value": r["value"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
            "n_subjects": r["n_subjects"],
            "n_volumes": None,
            "note": r["note"],
            "created_at": ts,
        }
        for r in out.scores
    ]
    ctx.manifest.upsert("evaluations", rows)
