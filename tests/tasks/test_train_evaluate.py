"""Pretrain and evaluate tasks on a small warehouse built directly from synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.context import open_warehouse
from tasks.evaluate import evaluate
from tasks.train import pretrain
from warehouse.shards import ShardVolume, write_shard


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    from model.data import blob_volume

    ctx = open_warehouse(tmp_path_factory.mktemp("wh"), run_id="run-test")
    m = ctx.manifest
    vols = []
    for i in range(8):
        data = blob_volume(i)
        if i % 2:  # "lesion": a bright blob the probe can find
            data[40:52, 50:62, 40:52] = data.max() * 1.5
        vols.append(
            ShardVolume(
                f"vol-{i}",
                f"sub-{i}",
                "T1w",
                data.astype(np.float16),
                (data > 0).astype(np.uint8),
                (1.8, 1.8, 1.8),
                np.eye(4),
            )
        )
    info = write_shard(vols, ctx.shards_dir)
    m.upsert("shards", [{"shard_id": info.shard_id, "path": ctx.rel(info.path), "n_volumes": 8}])
    m.upsert(
        "shard_volumes",
        [{"volume_id": v.volume_id, "shard_id": info.shard_id, "batch_index": i} for i, v in enumerate(vols)],
    )
    m.upsert("volumes", [{"volume_id": v.volume_id, "subject_id": v.subject_id, "label": "T1w"} for v in vols])
    m.upsert("qc", [{"volume_id": v.volume_id, "decision": "pass"} for v in vols])
    m.upsert(
        "labels", [{"subject_id": f"sub-{i}", "lesion": i % 2, "enlarged_ventricles": int(i < 4)} for i in range(8)]
    )
    m.commit_snapshot([v.volume_id for v in vols])
    return ctx


def test_pretrain_records_checkpoint_and_resumes_without_retraining(warehouse):
    torch.set_num_threads(1)
    first = pretrain(warehouse, preset="tiny", steps=3)
    assert first.steps == 3 and len(first.losses) == 3 and np.isfinite(first.final_loss)
    again = pretrain(warehouse, preset="tiny", steps=3)
    assert again.checkpoint_id == first.checkpoint_id and again.losses == first.losses
    assert warehouse.manifest.count("checkpoints") == 1
    more = pretrain(warehouse, preset="tiny", steps=5)
    assert more.steps == 5 and more.losses[:3] == first.losses


def test_pretrain_without_snapshot_explains(tmp_path):
    with pytest.raises(LookupError, match="mrifoundry curate"):
        pretrain(open_warehouse(tmp_path), steps=1)


def test_evaluate_on_eight_subjects_explains_instead_of_a_number(warehouse):
    from dataclasses import replace

    from tasks.evaluation.config import get_eval_preset

    pretrain(warehouse, preset="tiny", steps=3)
    cfg = replace(get_eval_preset("tiny"), run_cnn_mae=False, run_finetune=False, run_scratch_cnn=False, n_boot=20)
    out = evaluate(warehouse, preset=cfg)
    assert {r["encoder"] for r in out.scores if r["task"] == "lesion"} >= {"pretrained", "random_init", "handcrafted"}
    for r in out.scores:  # 8 subjects: every number is withheld, with the reason in words
        assert r["value"] is None and r["note"].startswith("not shown")
    assert warehouse.manifest.count("evaluations") == len(out.scores)
