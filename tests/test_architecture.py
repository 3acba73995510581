"""The layering of docs/architecture.md holds: import-linter contracts from pyproject.toml, SQL only in warehouse/."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    assert n >= 7, f"expected at least the 7 layer contracts in pyproject.toml, found {n}"
    assert f"Contracts: {n} kept, 0 broken" in res.stdout, res.stdout


def test_cli_help_is_fast_and_lists_subcommands():
    """--help must not import prefect/torch: users' scripts call it and it should answer at once."""
    code = (
        "import sys, flows.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('prefect', 'torch', 'ants', 'duckdb') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for sub in ("demo", "curate", "pretrain", "evaluate", "status", "dashboard", "classify", "model-info"):
        assert sub in res.stdout
    assert "HEAVY []" in res.stdout
