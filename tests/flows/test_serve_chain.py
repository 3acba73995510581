"""Done-when of issue 13: curation -> triggered retraining -> triggered evaluation, on a real Prefect
server, for one of two warehouses served side by side; the other warehouse's deployments never run.

What runs: `prefect server start` (SQLite, loopback, its own PREFECT_HOME), two `mrifoundry serve`
processes (warehouse A reads a tiny synthetic export with its labels CSV; warehouse B an empty drop
folder), one manual run of A's nightly-curate deployment; then the test waits for A's pretrain run
(started by A's snapshot event) and A's evaluate run (started by A's checkpoint event) to complete.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.live_server import live_server, stop  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2
DEADLINE_S = 1500
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _serve(server, source: Path, warehouse: Path, log: Path, labels: Path | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--source", str(source), "--warehouse", str(warehouse)]
    cmd += ["--preset", "tiny", "--steps", str(STEPS), "--min-new-volumes", "1", "--cron", "0 3 1 1 *"]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=server.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _runs_of(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _logs(client, run) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return "\n".join(f"{lg.level} {lg.message}" for lg in logs)[-6000:]


def test_curate_triggers_pretrain_then_evaluate_of_its_own_warehouse_only(live_server, tmp_path):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import deployment_names
    from tasks.context import open_warehouse
    from tasks.synthetic import make_export
    from warehouse.identity import read_warehouse_id

    t0 = time.monotonic()
    export = make_export(tmp_path / "export", preset="tiny")
    empty = tmp_path / "drop-b"
    empty.mkdir()
    wid = {}
    for name in ("a", "b"):
        wid[name] = read_warehouse_id(open_warehouse(tmp_path / f"wh-{name}").manifest)
    assert wid["a"] != wid["b"]
    procs = [
        _serve(live_server, export.dicom_dir, tmp_path / "wh-a", tmp_path / "serve-a.log", export.labels_csv),
        _serve(live_server, empty, tmp_path / "wh-b", tmp_path / "serve-b.log", None),
    ]
    timings = {"export": time.monotonic() - t0}
    try:
        with temporary_settings({PREFECT_API_URL: live_server.api_url}), get_client(sync_client=True) as client:
            deps: dict[tuple[str, str], object] = {}
            while len(deps) < 6:
                for name in ("a", "b"):
                    for flow, full in deployment_names(wid[name]).items():
                        if (name, flow) not in deps:
                            with contextlib.suppress(ObjectNotFound):  # not registered yet
                                deps[(name, flow)] = client.read_deployment_by_name(full)
                for p, log in zip(procs, ("serve-a.log", "serve-b.log"), strict=True):
                    if p.poll() is not None:
                        pytest.fail(f"serve exited with {p.returncode}:\n{(tmp_path / log).read_text()[-3000:]}")
                assert time.monotonic() - t0 < 300, f"deployments not served in 300 s; have {sorted(deps)}"
                time.sleep(1)
            timings["served"] = time.monotonic() - t0

            client.create_flow_run_from_deployment(deps[("a", "curate")].id)
            done: dict[str, object] = {}
            while len(done) < 3:
                for flow in ("curate", "pretrain", "evaluate"):
                    runs = _runs_of(client, deps[("a", flow)].id)
                    assert len(runs) <= 1, f"{flow} of warehouse A ran {len(runs)} times"
                    if runs and runs[0].state_type.value in FINAL and flow not in done:
                        run = runs[0]
                        assert run.state_type.value == "COMPLETED", (
                            f"{flow} ended {run.state_name}:\n{_logs(client, run)}"
                        )
                        done[flow] = run
                        timings[flow] = time.monotonic() - t0
                assert time.monotonic() - t0 < DEADLINE_S, f"chain not done in {DEADLINE_S} s; done: {sorted(done)}"
                time.sleep(2)

            # The evaluation ran on the checkpoint that A's pretraining announced.
            assert done["pretrain"].parameters["snapshot_id"].startswith("snap-")
            assert done["evaluate"].parameters["checkpoint_id"].startswith("ckpt-")
            assert done["evaluate"].parameters["warehouse"] == str((tmp_path / "wh-a").resolve())
            # Warehouse B: served all along, never started.
            for flow in ("curate", "pretrain", "evaluate"):
                assert _runs_of(client, deps[("b", flow)].id) == [], f"warehouse B's {flow} ran"
            # Each run left its summary under a stable per-warehouse key.
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            for kind in ("curation-summary", "pretrain-summary", "evaluation-summary"):
                key = f"{kind}-{wid['a']}"
                arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
                assert arts and arts[0].type == "markdown", key
                assert not client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{kind}-{wid['b']}"]))
                )
    finally:
        for p in procs:
            stop(p)
    print("issue-13 chain timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
