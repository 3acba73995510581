"""Done-when of issue 13: curation -> triggered retraining -> triggered evaluation, on a real Prefect
server, for one of two warehouses served side by side; the other warehouse's deployments never run.

What runs: `prefect server start` (SQLite, loopback, its own PREFECT_HOME), two `mrifoundry serve`
processes (warehouse A reads a tiny synthetic export with its labels CSV; warehouse B an empty drop
folder), one manual run of A's nightly-curate deployment; then the test waits for A's pretrain run
(started by A's snapshot event) and A's evaluate run (started by A's checkpoint event) to complete.
Then a second night: new studies in A's drop folder; the retrain continues from night 1's checkpoint
(lineage, snapshots seen) and the evaluation compares the new checkpoint with it. B never runs.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.parent_compare import METHOD
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


def _chain(client, deps, n: int, timings: dict, t0: float) -> dict:
    """Run A's curate by hand (the n-th time) and wait for the n-th pretrain and evaluate it triggers."""
    client.create_flow_run_from_deployment(deps[("a", "curate")].id)
    done: dict[str, object] = {}
    while len(done) < 3:
        for flow in ("curate", "pretrain", "evaluate"):
            runs = _runs_of(client, deps[("a", flow)].id)
            assert len(runs) <= n, f"{flow} of warehouse A ran {len(runs)} times in round {n}"
            final = [r for r in runs if r.state_type.value in FINAL]
            if len(final) == n and flow not in done:
                run = max(final, key=lambda r: r.expected_start_time)
                assert run.state_type.value == "COMPLETED", f"{flow} ended {run.state_name}:\n{_logs(client, run)}"
                done[flow] = run
                timings[f"{flow}-{n}"] = time.monotonic() - t0
        assert time.monotonic() - t0 < DEADLINE_S * n, f"round {n} not done; done: {sorted(done)}"
        time.sleep(2)
    return done


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

            done = _chain(client, deps, 1, timings, t0)
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

            # Night 2: new studies arrive; the retrain continues from night 1's model, and the evaluation
            # compares the two on the same cohort and splits.
            make_export(export.dicom_dir / "night-2", preset="tiny", seed=1)
            again = _chain(client, deps, 2, timings, t0)
            for flow in ("curate", "pretrain", "evaluate"):
                assert _runs_of(client, deps[("b", flow)].id) == [], f"warehouse B's {flow} ran"
    finally:
        for p in procs:
            stop(p)
    from warehouse.lineage import lineage
    from warehouse.manifest import Manifest

    m = Manifest(tmp_path / "wh-a")
    new_ck = again["evaluate"].parameters["checkpoint_id"]
    chain = lineage(m, new_ck)
    assert [r["checkpoint_id"] for r in chain] == [new_ck, done["evaluate"].parameters["checkpoint_id"]]
    assert list(chain[0]["snapshots_seen"]) == [
        done["pretrain"].parameters["snapshot_id"],
        again["pretrain"].parameters["snapshot_id"],
    ]
    compared = m.query("SELECT task FROM evaluations WHERE checkpoint_id = ? AND encoder = ?", [new_ck, METHOD])
    assert compared, "the night-2 evaluation did not compare its checkpoint with night 1's"
    print("issue-13 chain timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
