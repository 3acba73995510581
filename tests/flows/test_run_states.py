"""Run states seen by the next command: a SIGKILLed curate is `interrupted`, a failing flow `failed`.

Real processes: the CLI runs in a subprocess (its own ephemeral Prefect server), is killed with
SIGKILL mid-run, and `mrifoundry status --json` (another process) must report the truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.synthetic import make_export
from warehouse.manifest import Manifest

CLI = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MRIFOUNDRY_DEID_KEY": "ab" * 32}


def _status(wh: Path) -> dict:
    out = subprocess.run(
        [*CLI, "status", "--warehouse", str(wh), "--json"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _count(wh: Path, sql: str) -> int:
    try:
        return int(Manifest(wh).scalar(sql) or 0)
    except Exception:  # the manifest may not exist yet, or be locked for longer than the retry window
        return 0


def test_sigkilled_curate_is_reported_interrupted(tmp_path: Path) -> None:
    export = make_export(tmp_path / "export", preset="tiny", seed=3)
    wh = tmp_path / "wh"
    proc = subprocess.Popen(
        [*CLI, "curate", str(export.dicom_dir), "--warehouse", str(wh), "--skullstrip", "deepbet"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        # Mid-run: the run is recorded and the scan has planned series, but the flow has not finished.
        while time.monotonic() < deadline and proc.poll() is None:
            if _count(wh, "SELECT count(*) FROM runs WHERE status = 'running'") and _count(
                wh, "SELECT count(*) FROM series"
            ):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "curate finished before it could be killed; the test needs a mid-run kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    runs = _status(wh)["runs"]
    assert [(r["flow"], r["status"]) for r in runs] == [("curate", "interrupted")]
    assert "ended without recording an outcome" in runs[0]["error"]


def test_failing_flow_is_reported_failed_with_its_message(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    out = subprocess.run(
        [*CLI, "pretrain", "--warehouse", str(wh)], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 2 and "has no snapshot yet" in out.stderr
    runs = _status(wh)["runs"]
    assert [(r["flow"], r["status"]) for r in runs] == [("pretrain", "failed")]
    assert runs[0]["error"].startswith("LookupError: warehouse") and "has no snapshot yet" in runs[0]["error"]


@pytest.mark.parametrize("flag", ["--help"])
def test_cli_help_lists_every_command_in_the_table(flag: str) -> None:
    from flows.cli import COMMANDS

    out = subprocess.run([*CLI, flag], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name.replace("_", "-") in out.stdout
