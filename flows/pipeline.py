"""End-to-end flows: curate -> pretrain -> evaluate, and the demo on a synthetic export."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.pretrain import pretrain_flow
from tasks import units


@flow(name="pipeline")
def pipeline_flow(
    source: str,
    warehouse: str,
    labels_csv: str | None = None,
    preset: str = "tiny",
    steps: int | None = None,
    skullstrip: str = "auto",
) -> dict:
    """The whole DAG on one export: each stage is its own subflow, visible in the Prefect UI."""
    curated = curate_flow(source, warehouse, skullstrip=skullstrip, labels_csv=labels_csv)
    trained = pretrain_flow(warehouse, preset=preset, steps=steps)
    evaluated = evaluate_flow(warehouse, checkpoint_id=trained["checkpoint_id"])
    return {"curate": curated, "pretrain": trained, "evaluate": evaluated}


# The tiny preset's own default (a few dozen steps) is for tests; the demo trains long enough for
# the loss curve in the report to mean something while staying within a few minutes on 2 cores.
DEMO_STEPS = 150


@flow(name="demo")
def demo_flow(
    out: str = "var/demo",
    synth_preset: str = "demo",
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Generate a synthetic hospital export under OUT/export and run the whole DAG into OUT/warehouse."""
    log = get_run_logger()
    out_dir = Path(out).resolve()
    export = units.synth_task(str(out_dir / "export"), synth_preset, seed)
    log.info("synthetic export: %s series in %s files", export["n_series"], export["n_files"])
    steps = DEMO_STEPS if steps is None and preset == "tiny" else steps
    result = pipeline_flow(
        export["dicom_dir"],
        str(out_dir / "warehouse"),
        labels_csv=export["labels_csv"],
        preset=preset,
        steps=steps,
    )
    result["export"] = export
    return result
