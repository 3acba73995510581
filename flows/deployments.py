"""Deployments: the only place with schedules and event triggers.

- `nightly-curate`: cron in a PACS-friendly window, in the hospital's time zone.
- `pretrain-on-snapshot`: triggered by the `mrifoundry.snapshot.committed` event that the curate
  flow emits when a snapshot with at least `min_new_volumes` new volumes is committed; the event
  payload carries the snapshot id.
- `evaluate-after-pretrain`: triggered when a `pretrain` flow run completes.

Serve them with `mrifoundry serve --source DIR --warehouse DIR` against a running `prefect server start`
(set PREFECT_API_URL); schedules and triggers need a persistent server, not the ephemeral one.
"""

from __future__ import annotations

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.pretrain import pretrain_flow
from tasks.units import SNAPSHOT_EVENT


def build_deployments(
    source: str,
    warehouse: str,
    cron: str = "30 1 * * *",
    timezone: str = "Europe/Berlin",
    min_new_volumes: int = 50,
    preset: str = "tiny",
) -> list:
    curate = curate_flow.to_deployment(
        name="nightly-curate",
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"source": source, "warehouse": warehouse, "min_new_volumes": min_new_volumes},
        description="Curate the night's PACS export into the warehouse.",
    )
    pretrain = pretrain_flow.to_deployment(
        name="pretrain-on-snapshot",
        triggers=[
            DeploymentEventTrigger(
                expect={SNAPSHOT_EVENT},
                parameters={
                    "warehouse": warehouse,
                    "preset": preset,
                    "snapshot_id": "{{ event.payload.snapshot_id }}",
                },
            )
        ],
        description="Pretrain when curation commits a snapshot with enough new volumes.",
    )
    evaluate = evaluate_flow.to_deployment(
        name="evaluate-after-pretrain",
        triggers=[
            DeploymentEventTrigger(
                expect={"prefect.flow-run.Completed"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": "pretrain"},
                parameters={"warehouse": warehouse},
            )
        ],
        description="Evaluate the newest checkpoint once pretraining completes.",
    )
    return [curate, pretrain, evaluate]


def serve(source: str, warehouse: str, **kwargs) -> None:
    """Serve all deployments from this process (blocks)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(source, warehouse, **kwargs))
