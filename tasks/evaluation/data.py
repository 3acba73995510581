"""What evaluation reads: the labelled volumes, their targets and fixed splits, streamed from shards.

A benchmark cohort (`mrifoundry bench-corpus`) stores its splits; a warehouse curated from a
hospital export has labels but no splits, so a deterministic patient-level split is derived from a
hash of the pseudonymised subject id (stable across runs, independent of labels and scanner).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.context import WarehouseContext
from warehouse import cohort as cohort_q
from warehouse.queries import labels as registry_labels

FALLBACK_FRACTIONS = (0.6, 0.2)  # train, val; the rest is test


@dataclass(frozen=True)
class EvalCohort:
    """Labelled subjects of one snapshot: their volumes by modality, targets and splits per scheme."""

    snapshot_id: str
    pool_snapshot_id: str | None
    volumes: dict[str, dict[str, str]]  # subject_id -> {modality: volume_id}
    targets: dict[str, dict[str, Any]]  # subject_id -> {target: value}
    splits: dict[str, dict[str, str]]  # scheme -> {subject_id: split}
    stored_splits: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def subjects(self, scheme: str, split: str, modalities: tuple[str, ...] = ()) -> list[str]:
        """Subjects of a split that have every requested modality, sorted."""
        sp = self.splits.get(scheme, {})
        return sorted(s for s, v in sp.items() if v == split and all(m in self.volumes.get(s, {}) for m in modalities))

    @property
    def modalities(self) -> tuple[str, ...]:
        found = {m for v in self.volumes.values() for m in v}
        return tuple(m for m in ("T1w", "T2w", "FLAIR") if m in found) + tuple(sorted(found - {"T1w", "T2w", "FLAIR"}))


def _hash_split(subject_id: str) -> str:
    u = int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16) / 2**32
    tr, va = FALLBACK_FRACTIONS
    return "train" if u < tr else "val" if u < tr + va else "test"


def load_cohort(ctx: WarehouseContext, checkpoint_snapshot: str | None) -> EvalCohort:
    """The cohort to evaluate on: the generated cohort's labelled snapshot, else the checkpoint's snapshot."""
    m = ctx.manifest
    found = cohort_q.cohort_for_snapshot(m, checkpoint_snapshot) if checkpoint_snapshot else None
    found = found or cohort_q.latest_cohort(m)
    snap = found["labelled_snapshot_id"] if found and found["labelled_snapshot_id"] else checkpoint_snapshot
    if snap is None:
        raise LookupError(
            f"nothing to evaluate in {ctx.root}: run `mrifoundry bench-corpus` or `mrifoundry curate` first"
        )
    members = open_volumes(ctx, snap).members
    targets = cohort_q.subject_targets(m)
    if not targets:
        legacy = registry_labels(m)
        targets = {s: dict(v) for s, v in legacy.items()}
    if not targets:
        raise LookupError(
            "no labels in the manifest: pass --labels CSV to `mrifoundry curate` or run `mrifoundry bench-corpus`"
        )
    volumes: dict[str, dict[str, str]] = {}
    for r in members:
        if r["subject_id"] in targets:
            volumes.setdefault(r["subject_id"], {}).setdefault(r["label"], r["volume_id"])
    if not volumes:
        raise LookupError(f"no volume of snapshot {snap} belongs to a labelled subject")
    splits = {scheme: cohort_q.splits(m, scheme) for scheme in cohort_q.SCHEMES}
    stored = any(splits.values())
    if not stored:
        splits = {"random": {s: _hash_split(s) for s in volumes}}
    return EvalCohort(
        snapshot_id=snap,
        pool_snapshot_id=found["pool_snapshot_id"] if found else None,
        volumes=volumes,
        targets={s: targets[s] for s in volumes},
        splits=splits,
        stored_splits=stored,
    )


def open_volumes(ctx: WarehouseContext, snapshot_id: str, volume_ids: list[str] | None = None):
    """Streaming dataset of a snapshot's volumes (items: volume_id, image [1, 96, 108, 96] in [0, 1], fg)."""
    from tasks.snapshot_data import SnapshotVolumes

    return SnapshotVolumes(ctx, snapshot_id, volume_ids)


def target_arrays(cohort: EvalCohort, subjects: list[str], kind: str, target: str) -> dict[str, np.ndarray]:
    """Targets of `subjects` as arrays: {'y'} for binary/regression, {'time', 'event'} for survival."""
    t = cohort.targets
    if kind == "survival":
        return {
            "time": np.array([t[s]["survival_time"] for s in subjects], float),
            "event": np.array([t[s]["event"] for s in subjects], int),
        }
    dtype = float if kind == "regression" else int
    return {"y": np.array([t[s][target] for s in subjects], dtype=dtype)}


def has_target(cohort: EvalCohort, kind: str, target: str) -> bool:
    key = "survival_time" if kind == "survival" else target
    return any(v.get(key) is not None for v in cohort.targets.values())
