"""`mrifoundry classify SOURCE_DIR` on real exports, and the same labels inside the curation records."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from flows.commands import classify as cli_classify
from imaging.classify import ROW_FIELDS, classify_source, format_rows
from imaging.deid import Pseudonymizer
from imaging.dicom import scan_source
from tasks.context import open_warehouse
from tasks.record import record_scan

PHILIPS_LABELS = {1301: "T1w", 1901: "other", 1903: "other", 2001: "other"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="mrifoundry")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_classify.add_parser(sub)
    args = parser.parse_args(argv)
    code = cli_classify.run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_on_the_gzipped_philips_folder(dicom_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["classify", str(dicom_data / "philips_flat_folder"), "--format", "json"], capsys)
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert {r["series_number"]: r["label"] for r in rows} == PHILIPS_LABELS
    assert set(rows[0]) == set(ROW_FIELDS)
    mprage = next(r for r in rows if r["series_number"] == 1301)
    assert mprage["series_instance_uid"] == "1.3.46.670589.11.45053.5.0.8352.2021090213000458288"
    assert mprage["series_description"] == "ADNI_Sag3D MPRAGE" and mprage["contrast_enhanced"] is False
    assert mprage["confidence"] >= 0.9 and mprage["explanation"].startswith("T1w because ")
    asl = next(r for r in rows if r["series_number"] == 1901)
    assert "asl" in asl["explanation"].lower()


def test_cli_csv_on_all_real_exports(dicom_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["classify", str(dicom_data), "--workers", "2"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(ROW_FIELDS)
    by_desc = {r["series_description"]: r for r in rows}
    assert by_desc["anat-T1w_acq-tfl"]["label"] == "T1w"  # Siemens XA30 enhanced, TI in functional groups
    assert by_desc["3D Ax T1 MP-RAGE_R22"]["label"] == "T1w"  # GE RM\IR
    assert by_desc["ADNI_Sag3D MPRAGE"]["label"] == "T1w"
    assert all(r["label"] == "other" for r in rows if "EPI" in r["series_description"])
    rejected = [r for r in rows if r["rejection"]]
    assert {r["rejection"] for r in rejected} == {"too_few_slices"}  # the 5-slice Siemens mosaics
    assert all("ingest rejected" in r["explanation"] for r in rejected)


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["classify", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and out == "" and "does not exist" in err and "nowhere" in err
    code, _, err = _cli(["classify", str(tmp_path), "--workers", "0"], capsys)
    assert code == 2 and "--workers 0" in err
    with pytest.raises(SystemExit):
        _cli(["classify", str(tmp_path), "--format", "xml"], capsys)
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_rows([], "xml")


def test_the_flow_records_the_same_labels(philips_flat_gunzipped: Path, tmp_path: Path) -> None:
    """What `classify` prints is what the curation flow writes to the manifest."""
    printed = {r.series_number: (r.label, r.confidence, r.explanation) for r in classify_source(philips_flat_gunzipped)}
    ctx = open_warehouse(tmp_path / "wh", run_id="run-test")
    record_scan(ctx, philips_flat_gunzipped, scan_source(philips_flat_gunzipped), Pseudonymizer(bytes(range(32))))
    recorded = ctx.manifest.query(
        "SELECT s.series_number, c.label, c.confidence, c.explanation "
        "FROM series s JOIN classification c USING (series_key)"
    )
    assert {r["series_number"]: (r["label"], r["confidence"], r["explanation"]) for r in recorded} == printed
    assert {n: v[0] for n, v in printed.items()} == PHILIPS_LABELS
