"""A served chain finishes on a warehouse without labels: evaluate says what it could not do, and why."""

from __future__ import annotations

from tests.tasks.snapshot_fixture import small_warehouse


def test_evaluate_without_labels_completes_and_says_why(prefect_harness, tmp_path):
    from flows.evaluate import evaluate_flow
    from tasks.train import pretrain
    from warehouse.runs import run_row

    ctx = small_warehouse(tmp_path / "wh", n=4)
    ctx.manifest.execute("DELETE FROM labels")
    ck = pretrain(ctx, "tiny", steps=1)
    out = evaluate_flow(str(ctx.root), checkpoint_id=ck.checkpoint_id, run_id="run-eval")
    assert out["tasks"] == [] and "no labels" in out["notes"][0] and "--labels" in out["notes"][0]
    assert run_row(ctx.manifest, "run-eval")["status"] == "completed"
