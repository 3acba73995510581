"""Deployments: the only place with schedules and event triggers.

One warehouse, three deployments, all named after the warehouse id (warehouse/identity.py) so that
several warehouses can be served by one Prefect server without replacing each other's deployments:

- `nightly-curate-<id>`: cron in a PACS-friendly window, in the hospital's time zone; re-reads the
  labels CSV (if given) at every run.
- `pretrain-on-snapshot-<id>`: triggered by `mrifoundry.snapshot.committed` whose resource is THIS
  warehouse (`mrifoundry.warehouse.<id>`), emitted when a snapshot brings at least `min_new_volumes`
  new volumes; the event payload carries the snapshot id.
- `evaluate-after-pretrain-<id>`: triggered by `mrifoundry.pretrain.completed` of this warehouse
  (emitted by the pretrain flow with the checkpoint id), never by any other `pretrain` flow run.

Every parameter a run needs is a deployment default, so `prefect deployment run 'pretrain/pretrain-on-snapshot-<id>'`
works by hand without `--param`; the triggers add only what the event knows (snapshot, checkpoint).
Serve them with `mrifoundry serve` against a running `prefect server start` (PREFECT_API_URL set).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.pretrain import pretrain_flow
from tasks.units import PRETRAIN_EVENT, SNAPSHOT_EVENT
from warehouse.identity import resource_id

CURATE, PRETRAIN, EVALUATE = "nightly-curate", "pretrain-on-snapshot", "evaluate-after-pretrain"


@dataclass(frozen=True)
class ServePlan:
    """What `mrifoundry serve` was asked for; None leaves a flow's own default in place."""

    source: str
    warehouse: str
    warehouse_id: str
    cron: str = "30 1 * * *"
    timezone: str = "Europe/Berlin"
    min_new_volumes: int = 50
    labels_csv: str | None = None
    pretrain: dict[str, Any] = field(default_factory=dict)
    """Extra `pretrain` flow parameters (preset, steps or epochs, cooldown policy, from_scratch)."""
    evaluate: dict[str, Any] = field(default_factory=dict)
    """Extra `evaluate` flow parameters."""


def deployment_names(warehouse_id: str) -> dict[str, str]:
    """`flow/deployment` names of one warehouse's deployments, as `prefect deployment run` takes them."""
    return {
        "curate": f"curate/{CURATE}-{warehouse_id}",
        "pretrain": f"pretrain/{PRETRAIN}-{warehouse_id}",
        "evaluate": f"evaluate/{EVALUATE}-{warehouse_id}",
    }


def _checked(flow: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and refuse a parameter the flow does not take (a typo would be silently lost)."""
    params = {k: v for k, v in params.items() if v is not None}
    accepted = set(inspect.signature(flow.fn).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"the {flow.name!r} flow takes no parameter(s) {unknown}; it takes {sorted(accepted)}. "
            "Drop that option from `mrifoundry serve` or update this version of mrifoundry."
        )
    return params


def build_deployments(plan: ServePlan) -> list:
    """The three deployments of one warehouse (built, not yet served)."""
    wid = plan.warehouse_id
    tags = [f"warehouse-{wid}"]
    mine = {"prefect.resource.id": resource_id(wid)}
    curate = curate_flow.to_deployment(
        name=f"{CURATE}-{wid}",
        schedules=[Cron(plan.cron, timezone=plan.timezone)],
        parameters=_checked(
            curate_flow,
            {
                "source": plan.source,
                "warehouse": plan.warehouse,
                "min_new_volumes": plan.min_new_volumes,
                "labels_csv": plan.labels_csv,
            },
        ),
        tags=tags,
        description=f"Curate the night's PACS export into warehouse {wid}.",
    )
    pretrain = pretrain_flow.to_deployment(
        name=f"{PRETRAIN}-{wid}",
        parameters=_checked(pretrain_flow, {"warehouse": plan.warehouse, **plan.pretrain}),
        triggers=[
            DeploymentEventTrigger(
                name=f"snapshot-of-{wid}",
                expect={SNAPSHOT_EVENT},
                match=mine,
                parameters={"snapshot_id": "{{ event.payload.snapshot_id }}"},
            )
        ],
        tags=tags,
        description=f"Pretrain when curation commits a snapshot of warehouse {wid} with enough new volumes.",
    )
    evaluate = evaluate_flow.to_deployment(
        name=f"{EVALUATE}-{wid}",
        parameters=_checked(evaluate_flow, {"warehouse": plan.warehouse, **plan.evaluate}),
        triggers=[
            DeploymentEventTrigger(
                name=f"checkpoint-of-{wid}",
                expect={PRETRAIN_EVENT},
                match=mine,
                parameters={"checkpoint_id": "{{ event.payload.checkpoint_id }}"},
            )
        ],
        tags=tags,
        description=f"Evaluate each new checkpoint of warehouse {wid} beside its parent.",
    )
    return [curate, pretrain, evaluate]


def serve(plan: ServePlan) -> None:
    """Serve the warehouse's deployments from this process (blocks until interrupted)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(plan))
