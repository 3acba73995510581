"""The run summaries people read in the Prefect UI: what each one must say."""

from __future__ import annotations

from tasks.artifacts import curation_markdown, evaluation_markdown, pretrain_markdown, table


def test_curation_summary_counts_rejects_outliers_and_dashboard_link(monkeypatch):
    monkeypatch.setenv("MRIFOUNDRY_DASHBOARD_URL", "https://qc.example.org")
    md = curation_markdown(
        {
            "files_scanned": 120,
            "series_found": 9,
            "series_rejected": 2,
            "rejections": {"rejected:localizer": 1, "rejected:derived": 1},
            "rejected_files": {"not_dicom": 3},
            "volumes_by_decision": [("T1w", "pass", 4), ("FLAIR", "review", 1)],
            "qc_reasons": {"low_snr": 1},
            "snapshot_id": "snap-1",
        },
        outliers=2,
    )
    assert "| files scanned | 120 |" in md
    assert "| rejected:localizer | 1 |" in md and "| not_dicom | 3 |" in md
    assert "| FLAIR | review | 1 |" in md and "| low_snr | 1 |" in md
    assert "**2** volume(s) sent to review as outliers" in md
    assert "(https://qc.example.org)" in md


def test_pretrain_summary_names_checkpoint_parent_loss_and_balance():
    md = pretrain_markdown(
        {
            "checkpoint_id": "ckpt-b",
            "parent_checkpoint_id": "ckpt-a",
            "first_loss": 1.5,
            "final_loss": 0.75,
            "minvio": -0.25,
            "maxvio": 0.5,
        }
    )
    assert "| checkpoint | ckpt-b |" in md and "| parent checkpoint | ckpt-a |" in md
    assert "| loss, last step | 0.75 |" in md and "| MaxVio (last step, highest layer) | 0.5 |" in md
    assert "trained from scratch" in pretrain_markdown({"checkpoint_id": "ckpt-a"})


def test_evaluation_summary_says_what_was_not_evaluated():
    md = evaluation_markdown(
        [{"task": "lesion", "encoder": "pretrained", "metric": "auroc", "value": 0.8, "ci_low": 0.6, "ci_high": 0.9}],
        ["survival: not run, the train split holds a single class"],
        "/wh/reports/run.html",
        "ckpt-b",
        comparison=["lesion: better than its parent"],
    )
    assert "| lesion | pretrained | auroc | 0.8 | [0.6, 0.9] |" in md
    assert "## Not evaluated" in md and "single class" in md
    assert "better than its parent" in md and "/wh/reports/run.html" in md
    assert table(("a",), []) == "_none_"
