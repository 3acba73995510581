"""No PHI in any stored or logged path: names, IDs and dates planted in folder AND file names.

A PACS export may be laid out as ``MUELLER_HANS_19450101/PID12345678/1945-01-01/MUELLER_HANS_0001.dcm``.
The curate flow must store and log only pseudonymised path components (extensions kept). The fast
sweep curates an export of such names holding only series of class "other" and broken files (no
preprocessing, seconds); the slow one keeps its T1w, so shards and reports exist too.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from imaging.deid import Pseudonymizer
from tasks.record import WorkItem, _extension, _relpath, redact_paths
from warehouse.manifest import Manifest

KEY = "ab" * 32
PLANTED = ("MUELLER", "HANS", "19450101", "1945-01-01", "PID12345678", "Hauptstrasse")
"""Surname, given name, birth date (two spellings), a patient ID and a street: none may appear anywhere."""


def _p() -> Pseudonymizer:
    return Pseudonymizer(bytes.fromhex(KEY))


# ------------------------------------------------------------------------------------------- units


def test_every_component_is_pseudonymised_and_the_extension_kept(tmp_path: Path) -> None:
    source = tmp_path / "export"
    deep = source / "MUELLER_HANS_19450101" / "PID12345678" / "1945-01-01"
    a, b = deep / "MUELLER_HANS_broken.dcm", deep / "MUELLER_HANS_0002.dcm.gz"
    ra, rb = _relpath(a, source, _p()), _relpath(b, source, _p())
    for rel in (ra, rb):
        assert not any(x in rel for x in PLANTED), rel
        parts = rel.split("/")
        assert len(parts) == 4 and all(x.startswith("dir-") for x in parts[:3]) and parts[3].startswith("file-")
    assert ra.endswith(".dcm") and rb.endswith(".dcm.gz")
    assert ra.rsplit("/", 1)[0] == rb.rsplit("/", 1)[0]  # one folder, one token chain
    assert ra != rb and ra == _relpath(a, source, _p())  # distinct files, stable pseudonyms
    assert _relpath(a, source, Pseudonymizer(b"k" * 32)) != ra  # keyed
    # A suffix that is not a known extension may itself be PHI: it goes with the name.
    assert _extension("MUELLER.HANS") == "" and _extension("scan.19450101") == "" and _extension("IM0001") == ""
    assert _extension("x.DCM") == ".dcm" and _extension("report.19450101.txt") == ".txt"
    outside = _relpath(tmp_path / "elsewhere" / "MUELLER_HANS.dcm", source, _p())
    assert "MUELLER" not in outside and outside.endswith(".dcm")


def test_failure_details_and_logs_carry_no_source_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A converter error quoting the file (full path or bare name) is redacted before log and manifest."""
    from tasks.context import open_warehouse
    from tasks.preprocess import record_failure

    source = tmp_path / "MUELLER_HANS_19450101"
    f = source / "PID12345678" / "MUELLER_HANS_0001.dcm"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "deid.key").write_text(KEY)
    os.chmod(tmp_path / "wh" / "deid.key", 0o600)
    ctx = open_warehouse(tmp_path / "wh")
    item = WorkItem("ser-1", "sub-1", "ses-1", "T1w", "ACME", "M1", "h", (f,), source=source)
    message = (
        f"ConversionError: cannot stage the input files: FileNotFoundError: [Errno 2] No such file: '{f}'; "
        f"also MUELLER_HANS_0001.dcm in PID12345678 under {source}"
    )
    assert "MUELLER" not in redact_paths(message, item, _p())
    with caplog.at_level(logging.WARNING, logger="mrifoundry.preprocess"):
        record_failure(ctx, item, "conversion_failed", message)
    logged = caplog.text
    (row,) = Manifest(ctx.root).query("SELECT detail FROM series WHERE series_key = 'ser-1'") or [{"detail": None}]
    stored = row["detail"] or ""
    for value in PLANTED[:5]:
        assert value not in logged and value not in stored, value
    assert "file-" in logged and "conversion_failed" in logged


# ---------------------------------------------------------------------------------------- the sweep


def _planted_export(root: Path, keep_t1w: bool, real: Path) -> Path:
    """An export under PHI-named folders with PHI file names, a broken file and a report.

    Fast: the real Philips pCASL, its source images and the B0 map (series 1901, 1903, 2001: class
    "other", no preprocessing). Slow: the T1w, T2w and FLAIR of a synthetic one-subject export, so that a
    volume is curated, sharded and reported.
    """
    source = root / "MUELLER_HANS_19450101"
    if keep_t1w:
        from tasks.synthetic import make_export

        export = make_export(root / "gen", preset="tiny", seed=3, subjects=1)
        files = sorted(p for p in export.dicom_dir.rglob("*") if p.is_file())
        base = export.dicom_dir
    else:
        base = real / "dicom" / "philips_flat_folder"
        files = sorted(p for p in base.iterdir() if not p.name.startswith("1301_"))
    for n, path in enumerate(files, start=1):
        rel = path.relative_to(base)
        sub = "_".join(rel.parts[:-1]) or path.name.split("_")[0]
        target = source / f"PID12345678_{sub}" / "1945-01-01"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / f"MUELLER_HANS_{n:04d}{''.join(path.suffixes)}")
    misc = source / "PID12345678_misc"
    misc.mkdir(parents=True, exist_ok=True)
    (misc / "MUELLER_HANS_broken.dcm").write_bytes(b"DICM" + os.urandom(64))
    (misc / "Hauptstrasse_12.txt").write_text("not an image\n")
    with gzip.open(misc / "MUELLER_HANS_cut.dcm.gz", "wb") as f:
        f.write(b"\0" * 10)
    return source


def _sweep(source: Path, prefect_harness, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict:
    from flows.cli import main
    from flows.curate import curate_flow, dask_runner

    wh = tmp_path / "warehouse"
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old = os.environ.get("MRIFOUNDRY_DEID_KEY")
    os.environ["MRIFOUNDRY_DEID_KEY"] = KEY
    try:
        flow = curate_flow.with_options(task_runner=dask_runner(workers=1))
        summary = flow(str(source), str(wh), skullstrip="deepbet")
        capsys.readouterr()
        assert main(["failures", "--warehouse", str(wh), "--json"]) == 0
        failures = capsys.readouterr().out
        assert main(["status", "--warehouse", str(wh)]) == 0
        status = capsys.readouterr().out
    finally:
        root.removeHandler(handler)
        if old is None:
            os.environ.pop("MRIFOUNDRY_DEID_KEY")
        else:
            os.environ["MRIFOUNDRY_DEID_KEY"] = old
    dump = []
    with Manifest(wh).connect(read_only=True) as con:
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            dump.append(json.dumps(con.execute(f"SELECT * FROM {name}").fetchall(), default=str))
    files = [p for p in wh.rglob("*") if p.is_file()]
    blobs = [
        gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        for p in files
        if p.suffix in {".arrow", ".html", ".gz", ".json", ".csv", ".md", ".txt"}
    ]
    texts = {
        "manifest": "\n".join(dump),
        "logs": "\n".join(r.getMessage() for r in records),
        "summary": json.dumps(summary, default=str),
        "failures": failures,
        "status": status,
        "warehouse file names": "\n".join(str(p.relative_to(wh)) for p in files),
    }
    for value in PLANTED:
        for where, text in texts.items():
            assert value not in text, f"{value!r} in {where}"
        for b in blobs:
            assert value.encode() not in b, f"{value!r} in a warehouse file"
    return {"warehouse": wh, "failures": failures, "files": files}


def test_no_planted_phi_in_manifest_logs_or_listings(prefect_harness, tmp_path: Path, capsys, shared_data) -> None:
    source = _planted_export(tmp_path / "src", keep_t1w=False, real=shared_data)
    assert sum("MUELLER_HANS" in p.name for p in source.rglob("*.dcm.gz")) > 400
    out = _sweep(source, prefect_harness, tmp_path, capsys)
    rows = Manifest(out["warehouse"]).query("SELECT relpath FROM rejected_files")
    assert rows
    for r in rows:  # every folder level and the file a token of its own
        *folders, name = r["relpath"].split("/")
        assert folders and all(f.startswith("dir-") for f in folders) and name.startswith("file-"), r
    assert any(r["relpath"].endswith(".dcm") for r in rows) and any(r["relpath"].endswith(".txt") for r in rows)
    assert "file-" in out["failures"]


@pytest.mark.slow
def test_no_planted_phi_with_a_curated_volume(prefect_harness, tmp_path: Path, capsys, shared_data) -> None:
    source = _planted_export(tmp_path / "src", keep_t1w=True, real=shared_data)
    out = _sweep(source, prefect_harness, tmp_path, capsys)
    assert any(p.suffix == ".arrow" for p in out["files"])  # a shard was written and swept


def test_a_rescan_replaces_the_sources_old_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written before file names were pseudonymised (or of files since deleted) do not survive."""
    from imaging.dicom import scan_source
    from tasks.context import open_warehouse
    from tasks.record import record_scan, source_id

    monkeypatch.setenv("MRIFOUNDRY_DEID_KEY", KEY)
    source = tmp_path / "export"
    (source / "PID12345678").mkdir(parents=True)
    (source / "PID12345678" / "MUELLER_HANS_broken.dcm").write_bytes(b"DICM" + b"\1" * 40)
    ctx = open_warehouse(tmp_path / "wh")
    m = ctx.manifest
    old = {"source_id": source_id(source), "reason": "not_dicom", "detail": "", "run_id": "old"}
    m.upsert("rejected_files", [{**old, "relpath": "dir-0123456789abcdef/MUELLER_HANS_broken.dcm"}])
    other = {**old, "source_id": "src-other", "relpath": "dir-x/file-y.dcm"}
    m.upsert("rejected_files", [other])
    record_scan(ctx, source, scan_source(source, workers=1), _p())
    rows = m.query("SELECT source_id, relpath FROM rejected_files ORDER BY source_id")
    assert len(rows) == 2 and not any("MUELLER" in r["relpath"] for r in rows)
    assert {"source_id": "src-other", "relpath": "dir-x/file-y.dcm"} in rows  # other sources untouched
