"""Deployments carry the nightly schedule and the event triggers (built, not served)."""

from __future__ import annotations

from flows.deployments import build_deployments
from tasks.units import SNAPSHOT_EVENT


def test_deployments_schedule_and_triggers():
    curate, pretrain, evaluate = build_deployments(
        "/drop", "/wh", cron="15 2 * * *", timezone="Europe/Zurich", min_new_volumes=25
    )
    assert curate.name == "nightly-curate"
    sched = curate.schedules[0].schedule
    assert sched.cron == "15 2 * * *" and sched.timezone == "Europe/Zurich"
    assert curate.parameters == {"source": "/drop", "warehouse": "/wh", "min_new_volumes": 25}
    (trigger,) = pretrain.triggers
    assert trigger.expect == {SNAPSHOT_EVENT}
    assert trigger.parameters["snapshot_id"] == "{{ event.payload.snapshot_id }}"
    (after,) = evaluate.triggers
    assert after.expect == {"prefect.flow-run.Completed"}
    assert after.parameters == {"warehouse": "/wh"}
