"""Deployments of one warehouse: schedule, parameters, triggers that match only that warehouse; `serve`'s
options and refusal without a server; the bundled `prefect` CLI against the bundled server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cli import build_parser
from flows.deployments import ServePlan, build_deployments, deployment_names
from tasks.units import PRETRAIN_EVENT, SNAPSHOT_EVENT
from tests.flows.live_server import live_server  # noqa: F401  (session fixture)
from warehouse.identity import ensure_warehouse_id, read_warehouse_id, resource_id


def _plan(wid: str, **kw) -> ServePlan:
    base = {"source": "/drop", "warehouse": f"/wh-{wid}", "warehouse_id": wid}
    return ServePlan(**{**base, **kw})


def test_deployments_schedule_parameters_and_triggers():
    curate, pretrain, evaluate = build_deployments(
        _plan(
            "0123456789ab",
            cron="15 2 * * *",
            timezone="Europe/Zurich",
            min_new_volumes=25,
            labels_csv="/registry.csv",
            pretrain={"preset": "small", "steps": 40},
        )
    )
    assert curate.name == "nightly-curate-0123456789ab"
    sched = curate.schedules[0].schedule
    assert sched.cron == "15 2 * * *" and sched.timezone == "Europe/Zurich"
    assert curate.parameters == {
        "source": "/drop",
        "warehouse": "/wh-0123456789ab",
        "min_new_volumes": 25,
        "labels_csv": "/registry.csv",
    }
    # Every parameter a run needs is a default, so a run by hand needs no --param.
    assert pretrain.parameters == {"warehouse": "/wh-0123456789ab", "preset": "small", "steps": 40}
    assert evaluate.parameters == {"warehouse": "/wh-0123456789ab"}
    (trigger,) = pretrain.triggers
    assert trigger.expect == {SNAPSHOT_EVENT}
    assert _match(trigger) == {"prefect.resource.id": "mrifoundry.warehouse.0123456789ab"}
    assert trigger.parameters == {"snapshot_id": "{{ event.payload.snapshot_id }}"}
    (after,) = evaluate.triggers
    assert after.expect == {PRETRAIN_EVENT}  # this warehouse's own event, not any pretrain flow run
    assert after.parameters == {"checkpoint_id": "{{ event.payload.checkpoint_id }}"}


def _match(trigger) -> dict:
    m = trigger.match
    return dict(getattr(m, "root", m))


def test_two_warehouses_never_share_a_deployment_or_a_trigger():
    a = build_deployments(_plan("aaaaaaaaaaaa"))
    b = build_deployments(_plan("bbbbbbbbbbbb"))
    assert not {d.name for d in a} & {d.name for d in b}
    for mine, theirs in ((a, "bbbbbbbbbbbb"), (b, "aaaaaaaaaaaa")):
        for d in mine[1:]:
            (t,) = d.triggers
            assert _match(t)["prefect.resource.id"] != resource_id(theirs)
            assert _match(t)["prefect.resource.id"].startswith("mrifoundry.warehouse.")
    assert deployment_names("aaaaaaaaaaaa")["pretrain"] == "pretrain/pretrain-on-snapshot-aaaaaaaaaaaa"


def test_an_option_the_flow_does_not_take_is_refused():
    with pytest.raises(ValueError, match="no parameter.*'bogus_option'"):
        build_deployments(_plan("0123456789ab", pretrain={"bogus_option": 3}))


def test_warehouse_id_is_made_once_random_and_path_free(tmp_path):
    from tasks.context import open_warehouse

    one = open_warehouse(tmp_path / "ward-a")
    wid = read_warehouse_id(one.manifest)
    assert wid is not None and len(wid) == 12 and "ward" not in wid
    assert ensure_warehouse_id(open_warehouse(tmp_path / "ward-a").manifest) == wid  # stable across opens
    assert ensure_warehouse_id(open_warehouse(tmp_path / "ward-b").manifest) != wid


def test_serve_help_lists_every_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["serve"].format_help()
    for opt in (
        "--preset",
        "--steps",
        "--epochs",
        "--cooldown-steps",
        "--from-scratch",
        "--eval-preset",
        "--labels",
        "--min-new-volumes",
        "--cron",
        "--timezone",
    ):
        assert opt in text, opt


def test_serve_refuses_without_a_server(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "ph")}
    p = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", "--source", str(tmp_path), "--warehouse", str(tmp_path / "wh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert "PREFECT_API_URL" in p.stderr and "prefect server start" in p.stderr
    assert not (tmp_path / "wh").exists()  # refused before touching anything


def test_prefect_cli_lists_served_deployments(live_server, tmp_path):  # noqa: F811
    """The bundled `prefect` CLI against the bundled server (fastapi 0.151+ made these answer 422)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wid = "cafe01234567"
    with temporary_settings({PREFECT_API_URL: live_server.api_url}):
        for d in build_deployments(_plan(wid, warehouse=str(tmp_path))):
            d.apply()
    ls = live_server.cli("deployment", "ls")
    assert ls.returncode == 0, ls.stdout + ls.stderr
    for name in deployment_names(wid).values():
        assert name.split("/")[1] in ls.stdout, ls.stdout
    autos = live_server.cli("automation", "ls")
    assert autos.returncode == 0, autos.stdout + autos.stderr
    assert f"snapshot-of-{wid}" in autos.stdout and f"checkpoint-of-{wid}" in autos.stdout
    runs = live_server.cli("flow-run", "ls")
    assert runs.returncode == 0, runs.stdout + runs.stderr


def test_serve_options_become_flow_parameters():
    from flows.commands.serve import plan_from_args

    argv = ["serve", "--source", "/drop", "--warehouse", "/wh", "--preset", "small", "--epochs", "3"]
    args = build_parser().parse_args([*argv, "--cooldown-steps", "5", "--labels", "/reg.csv"])
    curate, pretrain, evaluate = build_deployments(plan_from_args(args, "0123456789ab"))
    assert pretrain.parameters == {
        "warehouse": "/wh",
        "preset": "small",
        "epochs": 3.0,
        "cooldown_steps": 5,
        "from_scratch": False,  # a triggered retrain continues from the latest checkpoint by default
    }
    assert curate.parameters["labels_csv"] == "/reg.csv"
    scratch = build_parser().parse_args([*argv, "--from-scratch"])
    assert build_deployments(plan_from_args(scratch, "0123456789ab"))[1].parameters["from_scratch"] is True
    with pytest.raises(SystemExit):  # --steps and --epochs exclude each other
        build_parser().parse_args([*argv, "--steps", "4"])
    with pytest.raises(ValueError, match="--min-new-volumes 0"):
        plan_from_args(build_parser().parse_args([*argv, "--min-new-volumes", "0"]), "0123456789ab")


def test_pretrain_cli_warm_start_reaches_the_flow(monkeypatch):
    import flows.pretrain
    from flows.commands import pretrain as cmd

    seen = {}
    monkeypatch.setattr(flows.pretrain, "pretrain_flow", lambda *a, **kw: seen.update(kw) or {"checkpoint_id": "c"})
    cmd.run(build_parser().parse_args(["pretrain", "--warehouse", "/wh", "--warm-start"]))
    assert seen["from_scratch"] is False
    cmd.run(build_parser().parse_args(["pretrain", "--warehouse", "/wh"]))
    assert seen["from_scratch"] is None  # by hand: a fresh model unless asked
