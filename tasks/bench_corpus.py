"""Write a generated benchmark cohort (synth.cohort) into a warehouse: shards, manifest, splits, labels.

The cohort skips DICOM and curation entirely: volumes are born on the model grid, skull-stripped, so
they go straight into shards with a QC 'pass' row. Two snapshots are committed: the labelled
subjects (what evaluation reads) and then the unlabelled pool (committed last, so it is the latest
snapshot and `mrifoundry pretrain` trains on it by default). Rerunning with the same size and seed
writes the same shard bytes, hence the same ids: nothing is duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.cohort import CohortConfig, SubjectSpec, draw_subjects, render_subject
from synth.cohort_atlas import grid_atlas
from tasks.context import WarehouseContext
from warehouse import cohort as cohort_q
from warehouse.manifest import now
from warehouse.shards import ShardVolume, write_shard

log = logging.getLogger("mrifoundry.bench_corpus")
SUBJECTS_PER_SHARD = 8


@dataclass(frozen=True)
class BenchCorpus:
    cohort_id: str
    n_subjects: int
    n_labelled: int
    n_pool: int
    n_volumes: int
    n_shards: int
    labelled_snapshot_id: str | None
    pool_snapshot_id: str | None
    split_counts: dict[str, dict[str, int]]
    seconds: float


def _write_chunk(cfg: CohortConfig, specs: Sequence[SubjectSpec], shards_dir: str) -> dict[str, Any]:
    """Render a few subjects and write them as one shard (runs in a worker process)."""
    atlas = grid_atlas()
    vols, loads = [], {}
    for spec in specs:
        sv = render_subject(spec, cfg, atlas)
        loads[spec.subject_id] = sv.lesion_load_ml
        for contrast, img in sv.images.items():
            vols.append(
                ShardVolume(
                    volume_id=f"{spec.subject_id}-{contrast}",
                    subject_id=spec.subject_id,
                    label=contrast,
                    data=img.astype(np.float16),
                    mask=sv.mask,
                    spacing=(atlas.spacing,) * 3,
                    affine=atlas.affine,
                )
            )
    info = write_shard(vols, Path(shards_dir))
    return {
        "shard_id": info.shard_id,
        "path": str(info.path),
        "bytes": info.bytes,
        "volumes": [(v.volume_id, v.subject_id, v.label) for v in vols],
        "lesion_load_ml": loads,
    }


def _chunks(specs: list[SubjectSpec], size: int) -> list[list[SubjectSpec]]:
    return [specs[i : i + size] for i in range(0, len(specs), size)]


def write_bench_corpus(ctx: WarehouseContext, cfg: CohortConfig, workers: int | None = None) -> BenchCorpus:
    """Generate `cfg` and record it in the warehouse; returns counts and the two snapshot ids.

    A cohort already recorded with the same configuration is not generated again (its shards are
    content-addressed, so regenerating would only rewrite identical bytes).
    """
    t0 = time.perf_counter()
    done = _recorded(ctx, cfg)
    if done is not None:
        return done
    specs = draw_subjects(cfg)
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    chunks = _chunks(specs, SUBJECTS_PER_SHARD)
    if workers == 1 or len(chunks) == 1:
        results = [_write_chunk(cfg, c, str(ctx.shards_dir)) for c in chunks]
    else:
        import multiprocessing as mp

        # spawn, not fork: the caller may be a Prefect flow with live threads (fork could deadlock).
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_write_chunk, cfg, c, str(ctx.shards_dir)) for c in chunks]
            results = [f.result() for f in futures]
    _record(ctx, cfg, specs, results)
    m = ctx.manifest
    by_role: dict[str, list[str]] = {"labelled": [], "pool": []}
    role = {s.subject_id: s.role for s in specs}
    for r in results:
        for vid, sid, _ in r["volumes"]:
            by_role[role[sid]].append(vid)
    # Labelled first, pool last: the pool becomes the latest snapshot, which pretraining picks.
    lab_snap = m.commit_snapshot(by_role["labelled"])[0] if by_role["labelled"] else None
    pool_snap = m.commit_snapshot(by_role["pool"])[0] if by_role["pool"] else None
    cohort_id = _cohort_id(cfg)
    n_lab = sum(s.role == "labelled" for s in specs)
    m.upsert(
        "cohorts",
        [
            {
                "cohort_id": cohort_id,
                "seed": cfg.seed,
                "n_labelled": n_lab,
                "n_pool": len(specs) - n_lab,
                "labelled_snapshot_id": lab_snap,
                "pool_snapshot_id": pool_snap,
                "config_json": json.dumps(asdict(cfg)),
                "created_at": now(),
            }
        ],
    )
    counts: dict[str, dict[str, int]] = {}
    for s in specs:
        for scheme, split in s.split.items():
            counts.setdefault(scheme, {}).setdefault(split, 0)
            counts[scheme][split] += 1
    out = BenchCorpus(
        cohort_id=cohort_id,
        n_subjects=len(specs),
        n_labelled=n_lab,
        n_pool=len(specs) - n_lab,
        n_volumes=sum(len(r["volumes"]) for r in results),
        n_shards=len(results),
        labelled_snapshot_id=lab_snap,
        pool_snapshot_id=pool_snap,
        split_counts=counts,
        seconds=time.perf_counter() - t0,
    )
    log.info(
        "bench corpus %s: %d subjects, %d volumes in %.1f s", cohort_id, out.n_subjects, out.n_volumes, out.seconds
    )
    return out


def _recorded(ctx: WarehouseContext, cfg: CohortConfig) -> BenchCorpus | None:
    m = ctx.manifest
    row = cohort_q.cohort_by_id(m, _cohort_id(cfg))
    if row is None or row["config_json"] != json.dumps(asdict(cfg)):
        return None
    counts: dict[str, dict[str, int]] = {}
    for r in cohort_q.split_counts(m):
        counts.setdefault(r["scheme"], {})[r["split"]] = int(r["n_subjects"])
    n_vol = cohort_q.snapshot_size(m, row["labelled_snapshot_id"]) + cohort_q.snapshot_size(m, row["pool_snapshot_id"])
    if n_vol != (row["n_labelled"] + row["n_pool"]) * len(cfg.contrasts):
        return None  # incomplete (a crash between shards and snapshots): generate again
    return BenchCorpus(
        cohort_id=row["cohort_id"],
        n_subjects=row["n_labelled"] + row["n_pool"],
        n_labelled=row["n_labelled"],
        n_pool=row["n_pool"],
        n_volumes=n_vol,
        n_shards=0,
        labelled_snapshot_id=row["labelled_snapshot_id"],
        pool_snapshot_id=row["pool_snapshot_id"],
        split_counts=counts,
        seconds=0.0,
    )


def _cohort_id(cfg: CohortConfig) -> str:
    return f"cohort-{cfg.seed}-{cfg.n_subjects}"


def _record(ctx: WarehouseContext, cfg: CohortConfig, specs: list[SubjectSpec], results: list[dict]) -> None:
    m, ts = ctx.manifest, now()
    site = {s.subject_id: f"site-{s.site}" for s in specs}
    loads = {sid: ml for r in results for sid, ml in r["lesion_load_ml"].items()}
    m.upsert(
        "shards",
        [
            {
                "shard_id": r["shard_id"],
                "path": ctx.rel(Path(r["path"])),
                "n_volumes": len(r["volumes"]),
                "bytes": r["bytes"],
                "created_at": ts,
            }
            for r in results
        ],
    )
    m.upsert(
        "shard_volumes",
        [
            {"volume_id": v[0], "shard_id": r["shard_id"], "batch_index": i}
            for r in results
            for i, v in enumerate(r["volumes"])
        ],
    )
    vol_rows = [
        {
            "volume_id": vid,
            "subject_id": sid,
            "label": label,
            "manufacturer": site[sid],
            "model_name": "synthetic",
            "updated_at": ts,
        }
        for r in results
        for vid, sid, label in r["volumes"]
    ]
    m.upsert("volumes", vol_rows)
    m.upsert("qc", [{"volume_id": v["volume_id"], "decision": "pass", "updated_at": ts} for v in vol_rows])
    m.upsert(
        "labels",
        [
            {
                "subject_id": s.subject_id,
                "lesion": s.lesion,
                "enlarged_ventricles": s.enlarged_ventricles,
                "age": s.age,
                "lesion_count": s.lesion_count,
                "lesion_load_ml": loads[s.subject_id],
                "survival_time": s.survival_time,
                "event": s.event,
                "updated_at": ts,
            }
            for s in specs
            if s.role == "labelled"
        ],
    )
    m.upsert(
        "subject_splits",
        [
            {"scheme": scheme, "subject_id": s.subject_id, "split": split, "site": site[s.subject_id], "updated_at": ts}
            for s in specs
            for scheme, split in s.split.items()
        ],
    )
