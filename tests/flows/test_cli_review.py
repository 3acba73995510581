"""`mrifoundry review list|set` on a warehouse holding a real series the classifier is unsure about."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from flows.cli import main
from imaging.deid import Pseudonymizer
from imaging.dicom import scan_source
from tasks.context import open_warehouse
from tasks.record import record_scan
from tasks.review import REVIEW_STATE, pending_reviews, review_label
from warehouse.manifest import Manifest

KEY = bytes(range(32))


@pytest.fixture()
def warehouse(philips_flat_gunzipped: Path, tmp_path: Path) -> tuple[Path, str]:
    """The real Philips export with its MPRAGE described as "T2 sag": physics and keywords clash."""
    scan = scan_source(philips_flat_gunzipped, workers=1)
    series = tuple(
        dataclasses.replace(s, header=dataclasses.replace(s.header, series_description="T2 sag"))
        if s.header.series_number == 1301
        else s
        for s in scan.series
    )
    ctx = open_warehouse(tmp_path / "wh", run_id="run-1")
    record_scan(ctx, philips_flat_gunzipped, dataclasses.replace(scan, series=series), Pseudonymizer(KEY))
    uid = next(s.series_uid for s in scan.series if s.header.series_number == 1301)
    return tmp_path / "wh", Pseudonymizer(KEY).series(uid)


def test_list_then_set_then_list(warehouse: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    wh, key = warehouse
    assert main(["review", "list", "--warehouse", str(wh), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["series_key"] == key and item["auto_label"] == "T1w" and item["series_number"] == 1301
    assert "physics says T1w" in item["explanation"]
    assert main(["review", "list", "--warehouse", str(wh)]) == 0
    table = capsys.readouterr().out
    assert "Series waiting for class review: 1" in table and key in table and "T2 sag" not in table

    assert main(["review", "set", key, "--label", "t1w", "--reviewer", "dr r", "--warehouse", str(wh)]) == 0
    assert f"{key}: T1w (by dr r)" in capsys.readouterr().out
    m = Manifest(wh)
    assert review_label(m, key).label == "T1w" and pending_reviews(m) == []  # type: ignore[union-attr]
    assert m.scalar("SELECT state FROM series WHERE series_key = ?", [key]) == REVIEW_STATE
    assert main(["review", "list", "--warehouse", str(wh), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_bad_label_and_unknown_series_exit_2_with_the_reason(
    warehouse: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    wh, key = warehouse
    assert main(["review", "set", key, "--label", "T3w", "--reviewer", "r", "--warehouse", str(wh)]) == 2
    assert "unknown sequence class 'T3w'" in capsys.readouterr().err
    assert main(["review", "set", "ser-nope", "--label", "T1w", "--reviewer", "r", "--warehouse", str(wh)]) == 2
    assert "no series 'ser-nope'" in capsys.readouterr().err
    assert main(["review", "list", "--warehouse", str(wh / "missing")]) == 2
    assert "no warehouse" in capsys.readouterr().err
    assert Manifest(wh).count("class_reviews") == 0
