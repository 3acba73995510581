"""The whole DAG as Prefect flows on a synthetic export: real DICOM, registration, CNN, DuckDB, torch.

One export and one warehouse are built per session (module fixtures) under one
prefect_test_harness; the tests then read what the flows left behind.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tasks.context import open_warehouse
from warehouse.manifest import Manifest
from warehouse.queries import snapshot_members
from warehouse.shards import ShardReader

STEPS = 6


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from dataclasses import replace

    from synth.export import SynthConfig, generate_export

    # 4 subjects: the smallest export where subject-grouped CV sees both label classes in training.
    return generate_export(tmp_path_factory.mktemp("export"), replace(SynthConfig.preset("tiny"), n_subjects=4))


@pytest.fixture(scope="module")
def truth(export):
    return json.loads(export.truth_json.read_text())


@pytest.fixture(scope="module")
def run(export, prefect_harness, tmp_path_factory):
    """Curate -> pretrain -> evaluate, then curate and pretrain again; capture every log record."""
    from flows.curate import curate_flow
    from flows.pipeline import pipeline_flow
    from flows.pretrain import pretrain_flow

    wh = tmp_path_factory.mktemp("warehouse")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        first = pipeline_flow(str(export.dicom_dir), str(wh), labels_csv=str(export.labels_csv), steps=STEPS)
        second = {
            "curate": curate_flow(str(export.dicom_dir), str(wh), labels_csv=str(export.labels_csv)),
            "pretrain": pretrain_flow(str(wh), steps=STEPS),
        }
    finally:
        root.removeHandler(handler)
    return {"warehouse": wh, "first": first, "second": second, "logs": records}


def test_every_series_is_accounted_for(run, truth):
    m = Manifest(run["warehouse"])
    expected = [s for s in truth["series"]]
    assert m.count("series") == len(expected)
    states = {r["state"] for r in m.query("SELECT DISTINCT state FROM series")}
    assert states <= {"rejected", "skipped", "curated", "failed"}
    by_class = {r["label"]: r["n"] for r in m.query("SELECT label, count(*) n FROM classification GROUP BY label")}
    for label in ("T1w", "T2w", "FLAIR"):
        assert by_class.get(label, 0) == sum(
            1 for s in expected if s["expected_label"] == label and not s.get("expected_rejection")
        ), label


def test_rejections_have_reasons(run, truth):
    m = Manifest(run["warehouse"])
    rejected = m.query("SELECT reason FROM series WHERE state = 'rejected'")
    assert rejected and all(r["reason"] for r in rejected)
    n_expected = sum(1 for s in truth["series"] if s.get("expected_rejection"))
    assert len(rejected) == n_expected
    files = {r["reason"] for r in m.query("SELECT reason FROM rejected_files")}
    assert {b["reason"] for b in truth["broken_files"]} <= files | {"unreadable"}


def test_curated_volumes_have_qc_and_pass_into_shards(run):
    m = Manifest(run["warehouse"])
    vols = m.query("SELECT v.volume_id, v.label, q.decision FROM volumes v JOIN qc q USING (volume_id)")
    assert len(vols) >= 6
    passed = [v for v in vols if v["decision"] == "pass"]
    assert passed, vols
    snap = run["first"]["curate"]["snapshot_id"]
    members = snapshot_members(m, snap)
    assert {r["volume_id"] for r in members} == {v["volume_id"] for v in passed}
    row = members[0]
    vol = ShardReader(run["warehouse"] / row["shard_path"]).read(row["batch_index"])
    assert vol.data.shape == (96, 108, 96) and vol.mask.any()
    assert float(vol.data[vol.mask > 0].mean()) > 0.1


def test_checkpoint_records_snapshot_and_code_version(run):
    import torch

    pre = run["first"]["pretrain"]
    ck = torch.load(pre["checkpoint_path"], map_location="cpu", weights_only=False)
    meta = ck["metadata"]
    assert meta["snapshot_id"] == run["first"]["curate"]["snapshot_id"]
    assert meta["code_version"].startswith("0.1.0")
    assert pre["steps"] == STEPS and np.isfinite(pre["final_loss"])


def test_evaluation_compares_pretrained_and_random(run):
    scores = run["first"]["evaluate"]["scores"]
    encoders = {(s["task"], s["encoder"]) for s in scores}
    # 4 subjects, split by a hash of keyed pseudonyms (a new key per warehouse): the lesion task runs,
    # or a note says in words why it could not (e.g. an empty test split), never a crash.
    notes = run["first"]["evaluate"]["notes"]
    assert {("lesion", "pretrained"), ("lesion", "random_init")} <= encoders or any(
        n.startswith("lesion: not run") for n in notes
    ), notes
    for s in scores:
        if s["metric"] == "auroc":  # a value, or (small n) the reason in words instead of a number
            assert (s["value"] is None and s["note"].startswith("not shown")) or 0.0 <= s["auroc"] <= 1.0
    report = run["first"]["evaluate"]["report"]
    html = Path(report).read_text()
    assert "Volumes by QC decision" in html and "data:image/png;base64" in html


def test_second_run_does_no_work(run):
    first, second = run["first"]["curate"], run["second"]["curate"]
    assert second["series_processed"] == 0
    assert second["series_unchanged"] == first["series_found"]
    assert second["new_shards"] == 0
    assert second["snapshot_id"] == first["snapshot_id"]
    m = Manifest(run["warehouse"])
    assert m.count("snapshots") == 1
    assert m.count("volumes") == len(m.query("SELECT DISTINCT series_key FROM volumes"))
    assert run["second"]["pretrain"]["checkpoint_id"] == run["first"]["pretrain"]["checkpoint_id"]


def test_killed_run_resumes_without_duplicates(run, export, prefect_harness):
    """Simulate a kill after conversion: the series is 'classified' with no QC row; rerun finishes it."""
    from flows.curate import curate_flow

    m = Manifest(run["warehouse"])
    victim = m.query("SELECT series_key, volume_id FROM volumes ORDER BY volume_id LIMIT 1")[0]
    n_vol, n_qc, n_shard_vol = m.count("volumes"), m.count("qc"), m.count("shard_volumes")
    m.execute("DELETE FROM qc WHERE volume_id = ?", [victim["volume_id"]])
    m.execute("UPDATE series SET state = 'classified' WHERE series_key = ?", [victim["series_key"]])
    out = curate_flow(str(export.dicom_dir), str(run["warehouse"]))
    assert out["series_processed"] == 1
    assert (m.count("volumes"), m.count("qc"), m.count("shard_volumes")) == (n_vol, n_qc, n_shard_vol)
    assert m.scalar("SELECT state FROM series WHERE series_key = ?", [victim["series_key"]]) == "curated"


def test_no_phi_anywhere(run, export):
    """No PHI value from the synthetic headers in manifest, shards, derivatives, reports or logs."""
    wh = run["warehouse"]
    phi = [v for v in export.phi_values if len(v) >= 4]
    assert phi
    m = Manifest(wh)
    dump = []
    with m.connect(read_only=True) as con:
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            dump.append(json.dumps(con.execute(f"SELECT * FROM {name}").fetchall(), default=str))
    text = "\n".join(dump)
    blobs = [
        gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        for p in wh.rglob("*")
        if p.is_file() and p.suffix in {".arrow", ".html", ".gz", ".pt", ".json", ".csv"}
    ]
    assert any(b.startswith(b"ARROW1") for b in blobs)
    logs = "\n".join(r.getMessage() for r in run["logs"])
    summaries = json.dumps([run["first"], run["second"]], default=str)
    for value in phi:
        assert value not in text, f"PHI {value!r} in manifest"
        assert value not in logs, f"PHI {value!r} in logs"
        assert value not in summaries, f"PHI {value!r} in flow results"
        for b in blobs:
            assert value.encode() not in b, f"PHI {value!r} in a warehouse file"


def test_pseudonyms_are_keyed(run):
    ctx = open_warehouse(run["warehouse"])
    assert ctx.key_file.exists() and (ctx.key_file.stat().st_mode & 0o077) == 0
    subjects = {r["subject_id"] for r in Manifest(run["warehouse"]).query("SELECT subject_id FROM series")}
    assert all(s.startswith("sub-") for s in subjects)


def test_status_command_reports_the_warehouse(run, capsys):
    from flows.cli import main

    assert main(["status", "--warehouse", str(run["warehouse"]), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in st["series_by_state"]} >= {"curated", "rejected"}
    assert st["latest_checkpoint"]["snapshot_id"] == run["first"]["curate"]["snapshot_id"]
    assert sum(r["n"] for r in st["volumes_by_decision"]) == Manifest(run["warehouse"]).count("volumes")
    assert main(["status", "--warehouse", str(run["warehouse"])]) == 0
    text = capsys.readouterr().out
    assert "Volumes by class and QC decision" in text and "Latest checkpoint: ckpt-" in text


def test_status_on_missing_warehouse_is_a_clear_error(tmp_path, capsys):
    from flows.cli import main

    assert main(["status", "--warehouse", str(tmp_path / "nowhere")]) == 2
    assert "mrifoundry curate" in capsys.readouterr().err
