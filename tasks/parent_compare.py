"""Is the retrained model better than the one it continued from? The new checkpoint beside its parent.

Both frozen encoders are run over the SAME cohort (the new checkpoint's), and every linear-probe task
is fitted on the same train split, selected on the same val split and scored on the same test
subjects; the paired subject bootstrap then gives new-minus-parent with a 95% interval. The verdict
is "better" only when that interval lies above zero; it never crashes on a small cohort, it says why
it could not compare instead. Built from the public functions of tasks.evaluation (issue 10).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.context import WarehouseContext
from warehouse.lineage import checkpoint_row, latest_cooldown_of
from warehouse.manifest import now

log = logging.getLogger("mrifoundry.evaluate")
METHOD = "pretrained_minus_parent"


@dataclass(frozen=True)
class ParentComparison:
    checkpoint_id: str
    parent_checkpoint_id: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per task: difference, CI, verdict
    words: list[str] = field(default_factory=list)  # what a person reads


def _verdict(metric: str, value: float | None, ci: tuple[float, float] | None, note: str | None) -> str:
    if value is None:
        return f"not compared ({note or 'too few test subjects'})"
    if ci is None:
        return f"difference {value:+.3f} in {metric}, no interval: not better"
    if ci[0] > 0:
        return f"better: {metric} {value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    if ci[1] < 0:
        return f"worse: {metric} {value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return f"not better: {metric} {value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] includes 0"


def previous_model(m, ck: dict[str, Any]) -> dict[str, Any] | None:
    """What the checkpoint should beat: its parent; for a cooled-down checkpoint, the model the previous
    retrain delivered (the cooldown of its main checkpoint's parent, else that parent), not the main
    checkpoint it was cooled from."""
    parent = checkpoint_row(m, ck["parent_checkpoint_id"]) if ck.get("parent_checkpoint_id") else None
    if parent is None or ck.get("phase") != "cooldown":
        return parent
    grand = checkpoint_row(m, parent["parent_checkpoint_id"]) if parent.get("parent_checkpoint_id") else None
    if grand is None:
        return None
    return latest_cooldown_of(m, grand["checkpoint_id"]) or grand


def _pooled(bank, name: str, d) -> Any:
    if "all" in d.rows:
        return bank.pooled[name][d.rows["all"]]
    import torch

    return torch.cat([bank.pooled[name][r] for r in d.rows.values()], dim=1)


def compare_with_parent(ctx: WarehouseContext, checkpoint_id: str, preset: str = "tiny") -> ParentComparison:
    """New checkpoint vs its parent on the new checkpoint's cohort and splits (linear probes)."""
    from model.checkpoint import load_encoder
    from tasks.evaluation import stats
    from tasks.evaluation.config import get_eval_preset
    from tasks.evaluation.data import load_cohort
    from tasks.evaluation.features import extract_bank
    from tasks.evaluation.heads import select_and_score
    from tasks.evaluation.protocols import default_tasks, split_data

    m = ctx.manifest
    ck = checkpoint_row(m, checkpoint_id)
    if ck is None:
        raise LookupError(f"no checkpoint {checkpoint_id} in {ctx.root}")
    parent = previous_model(m, ck)
    parent_id = None if parent is None else parent["checkpoint_id"]
    if parent is None:
        return ParentComparison(checkpoint_id, None, words=["trained from scratch: no earlier model to compare with"])
    if not ctx.abs(parent["path"]).is_file():
        return ParentComparison(checkpoint_id, parent_id, words=[f"parent {parent_id}: its checkpoint file is gone"])
    try:
        cohort = load_cohort(ctx, ck["snapshot_id"])
    except LookupError as err:
        return ParentComparison(checkpoint_id, parent_id, words=[f"not compared with parent {parent_id}: {err}"])
    cfg = get_eval_preset(preset)
    new_enc, mcfg = load_encoder(ctx.abs(ck["path"]))
    old_enc, _ = load_encoder(ctx.abs(parent["path"]))
    bank = extract_bank(ctx, cohort, {"new": new_enc.eval(), "parent": old_enc.eval()}, None, cfg, tuple(mcfg.grid))
    rows, words = [], [f"against {parent_id}, the model it builds on (same cohort, splits and linear probes):"]
    for spec in default_tasks(cohort, cfg):
        if spec.protocol != "linear":
            continue
        tr, va, te = (split_data(cohort, bank, spec, s) for s in ("train", "val", "test"))
        metric = stats.METRICS[spec.kind]
        why = None
        if min(len(tr.subjects), len(va.subjects), len(te.subjects)) == 0:
            why = f"train/val/test have {len(tr.subjects)}/{len(va.subjects)}/{len(te.subjects)} subjects"
        elif spec.kind in ("binary", "multiclass") and len(np.unique(tr.target["y"])) < 2:
            why = "the train split holds a single class"
        if why is not None:
            rows.append({"task": spec.name, "metric": metric, "value": None, "ci_low": None, "ci_high": None})
            words.append(f"- {spec.name}: not compared ({why})")
            continue
        preds = {
            name: select_and_score(
                spec.kind, (_pooled(bank, name, tr), tr.target), (_pooled(bank, name, va), va.target),
                _pooled(bank, name, te), cfg,
            ).test_scores
            for name in ("new", "parent")
        }  # fmt: skip
        subjects = np.unique(te.groups)
        rows_of = {s: np.flatnonzero(te.groups == s) for s in subjects}
        draws = stats.resamples(len(subjects), cfg.n_boot, cfg.seed)
        idx = [np.concatenate([rows_of[subjects[j]] for j in d]) if len(d) else np.zeros(0, int) for d in draws]
        d = stats.paired_difference(metric, te.target, preds["new"], preds["parent"], idx)
        rows.append(
            {
                "task": spec.name,
                "metric": metric,
                "value": d.value,
                "ci_low": d.ci[0] if d.ci else None,
                "ci_high": d.ci[1] if d.ci else None,
                "n_subjects": len(subjects),
                "note": d.note,
            }
        )
        words.append(f"- {spec.name}: {_verdict(metric, d.value, d.ci, d.note)} ({len(subjects)} test subjects)")
    if len(words) == 1:
        words.append("- no linear-probe task this cohort's labels allow")
    _persist(ctx, checkpoint_id, rows, words)
    return ParentComparison(checkpoint_id, parent_id, rows, words)


def _persist(ctx: WarehouseContext, checkpoint_id: str, rows: list[dict], words: list[str]) -> None:
    """As evaluation rows (`pretrained_minus_parent`), beside the run's other paired differences."""
    ts = now()
    notes = {w.split(":")[0].lstrip("- "): w for w in words[1:]}
    ctx.manifest.upsert(
        "evaluations",
        [
            {
                "run_id": ctx.run_id,
                "checkpoint_id": checkpoint_id,
                "task": r["task"],
                "encoder": METHOD,
                "metric": f"{r['metric']}_difference",
                "value": r["value"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n_subjects": r.get("n_subjects"),
                "n_volumes": None,
                "note": notes.get(r["task"]),
                "created_at": ts,
            }
            for r in rows
        ],
    )
