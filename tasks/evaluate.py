"""Frozen-encoder probes on the downstream labels, pretrained encoder beside a random one.

With a handful of subjects a single held-out split is mostly noise, so the probe is fitted in
subject-grouped cross-validation (no subject in train and test at once) and AUROC is computed on
the pooled out-of-fold scores, with a subject-level bootstrap 95% interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tasks.context import WarehouseContext
from tasks.train import load_snapshot_arrays
from warehouse.manifest import now
from warehouse.queries import labels as load_labels
from warehouse.queries import latest_checkpoint

log = logging.getLogger("mrifoundry.evaluate")
TASKS = ("lesion", "enlarged_ventricles")


@dataclass(frozen=True)
class ProbeScore:
    task: str
    encoder: str  # "pretrained" | "random_init"
    auroc: float
    ci_low: float
    ci_high: float
    n_subjects: int
    n_volumes: int


@dataclass(frozen=True)
class EvaluationOutcome:
    checkpoint_id: str
    scores: tuple[ProbeScore, ...]

    def get(self, task: str, encoder: str) -> ProbeScore:
        return next(s for s in self.scores if s.task == task and s.encoder == encoder)


def grouped_folds(groups: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Assign whole subjects to k folds, spreading positive and negative subjects evenly."""
    rng = np.random.default_rng(seed)
    subj = np.unique(groups)
    subj_y = np.array([y[groups == s].max() for s in subj])
    fold_of: dict[str, int] = {}
    for cls in (0, 1):
        members = subj[subj_y == cls]
        rng.shuffle(members)
        for i, s in enumerate(members):
            fold_of[s] = i % k
    return [np.flatnonzero([fold_of[g] == f for g in groups]) for f in range(k)]


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


def bootstrap_ci(y: np.ndarray, s: np.ndarray, groups: np.ndarray, n: int = 500, seed: int = 0) -> tuple[float, float]:
    """Subject-level bootstrap (resample subjects, keep all their volumes)."""
    rng = np.random.default_rng(seed)
    subj = np.unique(groups)
    idx_of = {g: np.flatnonzero(groups == g) for g in subj}
    vals = []
    for _ in range(n):
        pick = np.concatenate([idx_of[g] for g in rng.choice(subj, size=len(subj), replace=True)])
        if len(np.unique(y[pick])) == 2:
            vals.append(auroc(y[pick], s[pick]))
    if not vals:
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def cross_validated_scores(feats, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold probe scores for every volume."""
    import torch

    from model.probes import fit_logistic_probe

    k = int(min(5, len(np.unique(groups))))
    out = np.full(len(y), np.nan)
    for test_idx in grouped_folds(groups, y, k, seed):
        train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
        if len(np.unique(y[train_idx])) < 2 or len(test_idx) == 0:
            continue
        probe = fit_logistic_probe(feats[train_idx], torch.as_tensor(y[train_idx]), weight_decay=1e-2, seed=seed)
        out[test_idx] = probe.scores(feats[test_idx]).numpy()
    return out


def evaluate(ctx: WarehouseContext, checkpoint_id: str | None = None, seed: int = 0) -> EvaluationOutcome:
    import torch

    from model.data import VolumeDataset
    from model.encoder import build_encoder
    from model.probes import extract_features
    from model.train import load_encoder

    m = ctx.manifest
    ck = (
        latest_checkpoint(m)
        if checkpoint_id is None
        else next(iter(m.query("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])), None)
    )
    if ck is None:
        raise LookupError(f"no checkpoint {checkpoint_id or ''} in {ctx.root}: run `mrifoundry pretrain` first")
    lab = load_labels(m)
    if not lab:
        raise LookupError("no labels in the manifest: pass --labels CSV to `mrifoundry curate`")
    members, arrays = load_snapshot_arrays(ctx, ck["snapshot_id"])
    keep = [i for i, r in enumerate(members) if r["subject_id"] in lab]
    if not keep:
        raise LookupError("no curated volume belongs to a labelled subject")
    groups = np.array([members[i]["subject_id"] for i in keep])
    ds = VolumeDataset([arrays[i] for i in keep], train=False, seed=seed)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])  # [N, 1, D, H, W]

    encoder, cfg = load_encoder(ctx.abs(ck["path"]))
    torch.manual_seed(seed)
    random_encoder = build_encoder(cfg).eval()
    feats = {
        "pretrained": extract_features(encoder, images, batch_size=4),
        "random_init": extract_features(random_encoder, images, batch_size=4),
    }
    scores = []
    for task in TASKS:
        y = np.array([lab[g][task] for g in groups], dtype=np.int64)
        if len(np.unique(y)) < 2:
            log.warning("task %s has a single class among labelled subjects; skipped", task)
            continue
        for name, f in feats.items():
            s = cross_validated_scores(f, y, groups, seed)
            ok = ~np.isnan(s)
            a = auroc(y[ok], s[ok])
            lo, hi = bootstrap_ci(y[ok], s[ok], groups[ok], seed=seed)
            scores.append(ProbeScore(task, name, a, lo, hi, len(np.unique(groups)), int(ok.sum())))
    m.upsert(
        "evaluations",
        [
            {
                "run_id": ctx.run_id,
                "checkpoint_id": ck["checkpoint_id"],
                "task": s.task,
                "encoder": s.encoder,
                "metric": "auroc_cv",
                "value": s.auroc,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "n_subjects": s.n_subjects,
                "n_volumes": s.n_volumes,
                "created_at": now(),
            }
            for s in scores
        ],
    )
    return EvaluationOutcome(ck["checkpoint_id"], tuple(scores))
