"""bench/tune_recipe.py end to end on a small tuning cohort: stages, readouts, the JSON, --rescore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "bench" / "tune_recipe.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_tune_recipe_trains_in_stages_scores_each_readout_and_rescores_the_same(tmp_path):
    wh, out = tmp_path / "wh", tmp_path / "tune.json"
    common = ["--warehouse", str(wh), "--seed", "3", "--subjects", "40", "--preset", "tiny"]
    first = _run(*common, "--regions", "1,2", "--steps", "1,3", "--json", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["steps"], r["regions"]) for r in rows] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert rows[0]["checkpoint_id"] != rows[2]["checkpoint_id"]  # the second stage is a new (warm-started) model
    assert {t["task"] for t in rows[0]["tasks"]} >= {"lesion", "enlarged_ventricles", "age"}
    assert "chosen:" in first.stdout
    again = _run(*common, "--regions", "1", "--steps", "3", "--rescore", "--json", str(out))  # no training
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads(out.read_text())["rows"]
    assert [r["checkpoint_id"] for r in rescored] == [rows[2]["checkpoint_id"]]  # read back from the chain
    assert rescored[0]["tasks"] == rows[2]["tasks"]  # same frozen features, same seeded heads


def test_tune_recipe_refuses_the_benchmark_cohort(tmp_path):
    res = _run("--warehouse", str(tmp_path / "wh"), "--seed", "0")
    assert res.returncode != 0 and "--seed 0 is the benchmark cohort" in res.stderr
