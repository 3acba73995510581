"""Pretraining flow: latest (or given) snapshot -> JEPA-MoE checkpoint recorded in the manifest.

One process by default; `nproc_per_node` / `nnodes` / `rdzv_endpoint` run the same training as a
torchrun DDP job (tasks/train.py launches it, docs/training.md). `cooldown_steps` chains the linear
cooldown phase after the main phase, and the flow then reports the cooled-down checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger

from tasks import units
from tasks.artifacts import pretrain_markdown
from tasks.lifecycle import run_lifecycle
from tasks.train import Launch


@flow(name="pretrain")
def pretrain_flow(
    warehouse: str,
    preset: str = "tiny",
    snapshot_id: str | None = None,
    steps: int | None = None,
    run_id: str | None = None,
    epochs: float | None = None,
    phase: str = "main",
    init_from: str | None = None,
    cooldown_steps: int | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    num_workers: int | None = None,
    from_scratch: bool | None = None,
) -> dict:
    """Pretrain on a snapshot; resumes a killed run and does not repeat a finished one.

    `phase="cooldown"` with `init_from` (a main-phase checkpoint path or id) runs only the cooldown;
    `cooldown_steps` > 0 runs it right after the main phase. `from_scratch=False` (what the triggered
    retrain of `mrifoundry serve` passes) continues the main phase from the warehouse's latest
    main-phase checkpoint of `preset`; None or True trains anew. The flow ends by announcing the
    checkpoint (`mrifoundry.pretrain.completed` of this warehouse, which triggers its evaluation).
    """
    log = get_run_logger()
    launch = Launch(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    params = {"preset": preset, "snapshot_id": snapshot_id, "steps": steps, "epochs": epochs, "phase": phase}
    params |= {"world_size": launch.world_size, "cooldown_steps": cooldown_steps, "from_scratch": from_scratch}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with run_lifecycle(ctx.manifest, ctx.run_id, "pretrain", params) as run:
        job = {"launch": launch, "num_workers": num_workers}
        job = {**job, "from_scratch": from_scratch is not False}
        out = units.pretrain_task(
            ctx, preset, snapshot_id, steps, epochs=epochs, phase=phase, init_from=init_from, **job
        )
        main_id = out.checkpoint_id
        if phase == "main" and cooldown_steps:
            out = units.pretrain_task(
                ctx,
                preset,
                out.snapshot_id,
                cooldown_steps,
                phase="cooldown",
                init_from=str(out.checkpoint_path),
                **job,
            )
        summary = {k: (str(v) if k == "checkpoint_path" else v) for k, v in asdict(out).items()}
        summary["main_checkpoint_id"] = main_id
        run.summary = summary
    log.info(
        "checkpoint %s (%s) after %d steps on %d process(es): loss %.4f -> %.4f",
        out.checkpoint_id,
        out.phase,
        out.steps,
        out.world_size,
        out.first_loss,
        out.final_loss,
    )
    units.publish_summary_task(ctx, "pretrain-summary", pretrain_markdown(summary))
    units.announce_checkpoint_task(ctx, out.checkpoint_id, out.snapshot_id, out.preset)
    return summary
