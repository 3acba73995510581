"""Pretraining on a warehouse snapshot, in this process or as a torchrun job: spec -> checkpoint row.

`pretrain(ctx, ...)` is what the flow calls. It resolves the snapshot and the run's directory, then
either trains here (one process: the demo, tests, a laptop) or starts `torch.distributed.run` with
`tasks.pretrain_worker` as the program (several processes on this machine, or one share of a
multi-node job joined through a rendezvous endpoint). Either way every process runs `run_training`:
it streams its slice of every batch from the snapshot's shards (tasks.snapshot_data), and global rank
0 writes the checkpoint, the `checkpoints` row and `result.json`, which the launching process reads.

The checkpoint directory is keyed by preset and snapshot (cooldowns also by the checkpoint they start
from), and training resumes from `last.pt`, so a killed run continues where it stopped and a finished
one is not repeated. See docs/training.md for launching across machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.context import WarehouseContext, code_version
from tasks.progress import fmt_duration
from warehouse.lineage import checkpoint_by_path, checkpoint_row, latest_main_checkpoint
from warehouse.manifest import now
from warehouse.queries import latest_snapshot
from warehouse.shards import ShardReader
from warehouse.snapshots import snapshot_member_table

log = logging.getLogger("mrifoundry.train")
PHASES = ("main", "cooldown")
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class PretrainOutcome:
    checkpoint_id: str
    checkpoint_path: Path
    snapshot_id: str
    preset: str
    steps: int
    first_loss: float
    final_loss: float
    losses: tuple[float, ...]
    skipped_steps: int
    seconds: float
    n_volumes: int
    phase: str = "main"
    world_size: int = 1
    parent_checkpoint_id: str | None = None  # what it continued from (warm start, cooldown); None: scratch
    snapshots_seen: tuple[str, ...] = ()  # every snapshot in its lineage, oldest first
    minvio: float | None = None  # MoE load balance at the last step: lowest MinVio over layers
    maxvio: float | None = None  # ... and highest MaxVio


@dataclass(frozen=True)
class TrainSpec:
    """Everything a training process needs (JSON round-trip: it travels to torchrun workers as a file)."""

    warehouse: str
    run_id: str
    preset: str
    snapshot_id: str
    out_dir: str
    phase: str = "main"
    steps: int | None = None  # overrides the phase's steps (main: steps, cooldown: cooldown_steps)
    epochs: float | None = None  # or: passes over the snapshot, rounded up to whole global batches
    init_from: str | None = None  # the main-phase checkpoint a cooldown or a warm-started main phase starts from
    batch_size: int | None = None
    num_workers: int | None = None
    parent_checkpoint_id: str | None = None
    snapshots_seen: list[str] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Launch:
    """How many processes: `nproc_per_node` on each of `nnodes` machines meeting at `rdzv_endpoint`."""

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (any one node); needed when nnodes > 1

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError(f"--nproc-per-node {self.nproc_per_node} and --nnodes {self.nnodes} must be >= 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (a port on one of the nodes, the same on "
                "every node) so the machines can find each other"
            )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def load_snapshot_arrays(
    ctx: WarehouseContext, snapshot_id: str, limit: int | None = None
) -> tuple[list[dict], list[np.ndarray]]:
    """Members of a snapshot (the first `limit` of them) and their volumes as float32 arrays.

    Only for a handful of volumes (report mosaics): training and evaluation stream through
    tasks.snapshot_data.SnapshotVolumes instead of loading a snapshot into memory.
    """
    table = snapshot_member_table(ctx.manifest, snapshot_id)
    members = (table if limit is None else table.slice(0, limit)).to_pylist()
    readers: dict[str, ShardReader] = {}
    arrays = []
    for row in members:
        reader = readers.setdefault(row["shard_path"], ShardReader(ctx.abs(row["shard_path"])))
        arrays.append(reader.read(row["batch_index"]).data.astype(np.float32))
    return members, arrays


def resolve_snapshot(ctx: WarehouseContext, snapshot_id: str | None) -> str:
    snap = snapshot_id or latest_snapshot(ctx.manifest)
    if snap is None:
        raise LookupError(
            f"warehouse {ctx.root} has no snapshot yet: run `mrifoundry curate SOURCE --warehouse {ctx.root}` "
            "and make sure some volumes pass QC"
        )
    return snap


def pretrain(
    ctx: WarehouseContext,
    preset: str = "tiny",
    snapshot_id: str | None = None,
    steps: int | None = None,
    *,
    epochs: float | None = None,
    phase: str = "main",
    init_from: str | Path | None = None,
    launch: Launch | None = None,
    num_workers: int | None = None,
    from_scratch: bool = True,
) -> PretrainOutcome:
    """Pretrain (or cool down) on a snapshot; resumes a killed run and does not repeat a finished one.

    Args:
        ctx: the warehouse.
        preset: model preset (tiny, small, base).
        snapshot_id: default the latest snapshot.
        steps: optimizer steps of the phase (default: the preset's); exclusive with `epochs`.
        epochs: passes over the snapshot instead of steps.
        phase: "main" or "cooldown" (linear lr decay from a main-phase checkpoint, `init_from`).
        init_from: the main-phase checkpoint a cooldown starts from (a path, or a checkpoint id).
        launch: processes and machines; default one process, here.
        num_workers: DataLoader workers per process (default: the preset's).
        from_scratch: False continues the main phase from the warehouse's latest main-phase checkpoint
            of `preset` (warm start: model, EMA, routing biases, AdamW moments, a fresh lr warmup, in a
            directory of its own); True, or no such checkpoint, starts anew.
    """
    from model.presets import get_preset

    get_preset(preset)  # fail on a bad name before anything starts
    if phase not in PHASES:
        raise ValueError(f"--phase {phase!r} must be one of {PHASES}")
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if epochs is not None and epochs <= 0:
        raise ValueError(f"--epochs must be > 0, got {epochs}")
    launch = launch or Launch()
    snap = resolve_snapshot(ctx, snapshot_id)
    out_dir = ctx.checkpoints_dir / f"{preset}-{snap}"
    init = None
    if phase == "cooldown":
        if init_from is None:
            raise ValueError("--phase cooldown needs --from CHECKPOINT (a main-phase last.pt or a checkpoint id)")
        init = str(_checkpoint_path(ctx, init_from))
        out_dir = out_dir.with_name(f"{out_dir.name}-cooldown-{hashlib.sha256(init.encode()).hexdigest()[:8]}")
        inside = Path(init).is_relative_to(ctx.root.resolve())  # a file elsewhere has no row, no lineage
        parent = checkpoint_by_path(ctx.manifest, ctx.rel(Path(init))) if inside else None
    elif init_from is not None:
        raise ValueError("--from is only for --phase cooldown")
    else:
        parent = None if from_scratch else latest_main_checkpoint(ctx.manifest, preset)
        if parent is not None:
            init = str(ctx.abs(parent["path"]).resolve())
            out_dir = out_dir.with_name(f"{out_dir.name}-from-{parent['checkpoint_id'].removeprefix('ckpt-')[:8]}")
            log.info("warm start from %s (snapshot %s)", parent["checkpoint_id"], parent["snapshot_id"])
    seen = list((parent or {}).get("snapshots_seen") or ([parent["snapshot_id"]] if parent else []))
    spec = TrainSpec(
        warehouse=str(ctx.root),
        run_id=ctx.run_id,
        preset=preset,
        snapshot_id=snap,
        out_dir=str(out_dir),
        phase=phase,
        steps=steps,
        epochs=epochs,
        init_from=init,
        num_workers=num_workers,
        parent_checkpoint_id=(parent or {}).get("checkpoint_id"),
        snapshots_seen=seen + ([snap] if snap not in seen else []),
    )
    log.info("pretraining %s (%s) on snapshot %s with %d process(es)", preset, phase, snap, launch.world_size)
    if launch.world_size == 1:
        return run_training(ctx, spec)
    return _launch_torchrun(spec, launch)


def run_training(ctx: WarehouseContext, spec: TrainSpec) -> PretrainOutcome:
    """One training process (of one, or of a torchrun job): stream the snapshot, train, record on rank 0."""
    from model.distributed import barrier, current_world
    from model.presets import get_preset
    from model.sampler import steps_for_epochs
    from model.train import cooldown, train
    from tasks.snapshot_data import SnapshotVolumes

    world = current_world()
    dataset = SnapshotVolumes(ctx, spec.snapshot_id)
    model_cfg, train_cfg = get_preset(spec.preset)
    overrides: dict = {}
    if spec.batch_size is not None:
        overrides["batch_size"] = spec.batch_size
    if spec.num_workers is not None:
        overrides["num_workers"] = spec.num_workers
    train_cfg = dataclasses.replace(train_cfg, **overrides)
    steps = spec.steps
    if spec.epochs is not None:
        steps = steps_for_epochs(spec.epochs, len(dataset), train_cfg.batch_size, world.world_size)
    if steps is not None:
        train_cfg = dataclasses.replace(train_cfg, **{"steps" if spec.phase == "main" else "cooldown_steps": steps})
    metadata = {
        "snapshot_id": spec.snapshot_id,
        "n_volumes": len(dataset),
        "code_version": code_version(),
        "preset": spec.preset,
        "world_size": world.world_size,
        "run_id": spec.run_id,
    }
    out_dir = Path(spec.out_dir)
    metadata |= {"parent_checkpoint_id": spec.parent_checkpoint_id, "snapshots_seen": spec.snapshots_seen}
    last: dict = {}  # the last step's record (MinVio/MaxVio for the summary)
    tty = sys.stderr.isatty()
    common = {"metadata": metadata, "resume": True, "progress": world.is_main and tty}
    total = train_cfg.steps if spec.phase == "main" else train_cfg.cooldown_steps
    common["log"] = last.update if tty else ProgressLog(total, spec.phase, last)
    if spec.phase == "main":
        init = None if spec.init_from is None else Path(spec.init_from)
        result = train(model_cfg, train_cfg, dataset, out_dir, init_from=init, **common)
    else:
        result = cooldown(model_cfg, train_cfg, dataset, out_dir, init_from=Path(spec.init_from or ""), **common)
    losses = tuple(float(x) for x in result.losses)
    key = f"{spec.preset}:{spec.snapshot_id}:{result.steps}"
    if spec.phase == "cooldown":
        key = f"{key}:cooldown:{spec.init_from}"
    elif spec.parent_checkpoint_id is not None:  # a warm start is another model than the scratch run
        key = f"{key}:from:{spec.parent_checkpoint_id}"
    outcome = PretrainOutcome(
        checkpoint_id="ckpt-" + hashlib.sha256(key.encode()).hexdigest()[:16],
        checkpoint_path=Path(result.checkpoint_path),
        snapshot_id=spec.snapshot_id,
        preset=spec.preset,
        steps=result.steps,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=float(result.final_loss),
        losses=losses,
        skipped_steps=result.skipped_steps,
        seconds=result.seconds,
        n_volumes=len(dataset),
        phase=spec.phase,
        world_size=world.world_size,
        parent_checkpoint_id=spec.parent_checkpoint_id,
        snapshots_seen=tuple(spec.snapshots_seen or [spec.snapshot_id]),
        minvio=last.get("minvio"),
        maxvio=last.get("maxvio"),
    )
    if world.is_main:
        _record_checkpoint(ctx, outcome)
        _write_result(out_dir / RESULT_FILE, outcome)
    barrier(world)  # the launcher reads result.json once every process is done
    return outcome


class ProgressLog:
    """Step, loss and ETA in the log at most every `every_s` seconds, when no progress bar can draw.

    The tqdm bar only draws on a terminal; under Prefect, cron or a redirected `mrifoundry benchmark` a
    pretraining run would otherwise say nothing for its whole length (the 2-core benchmark: ~15 min).
    It also keeps the last record for the outcome, as the plain callback did.
    """

    def __init__(self, total: int, phase: str, last: dict, every_s: float = 30.0, clock=time.monotonic) -> None:
        self.total, self.phase, self.last, self.every_s, self.clock = total, phase, last, every_s, clock
        self.t0: float | None = None
        self.step0 = 0
        self.shown = float("-inf")

    def __call__(self, record: dict) -> None:
        self.last.update(record)
        now, step = self.clock(), int(record["step"])
        if self.t0 is None:  # a resumed run starts mid-way: rate from the steps run here
            self.t0, self.step0, self.shown = now, step, now
        if now - self.shown < self.every_s and step < self.total:
            return
        self.shown = now
        rate = (step - self.step0) / max(now - self.t0, 1e-9)
        left = max(self.total - step, 0)
        eta = "0s" if left == 0 else fmt_duration(left / rate) if rate > 0 else "-"
        log.info(
            "pretraining (%s) step %d/%d (%.0f %%), loss %.4f, %.2f steps/s, ETA %s",
            self.phase,
            step,
            self.total,
            100.0 * step / max(self.total, 1),
            record["loss"],
            rate,
            eta,
        )


def _record_checkpoint(ctx: WarehouseContext, out: PretrainOutcome) -> None:
    ctx.manifest.upsert(
        "checkpoints",
        [
            {
                "checkpoint_id": out.checkpoint_id,
                "run_id": ctx.run_id,
                "snapshot_id": out.snapshot_id,
                "preset": out.preset,
                "path": ctx.rel(out.checkpoint_path),
                "steps": out.steps,
                "final_loss": float(out.final_loss),
                "code_version": code_version(),
                "created_at": now(),
                "phase": out.phase,
                "parent_checkpoint_id": out.parent_checkpoint_id,
                "snapshots_seen": list(out.snapshots_seen),
            }
        ],
    )


def _write_result(path: Path, out: PretrainOutcome) -> None:
    data = dataclasses.asdict(out) | {"checkpoint_path": str(out.checkpoint_path)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_result(path: Path) -> PretrainOutcome:
    data = json.loads(path.read_text())
    data["checkpoint_path"] = Path(data["checkpoint_path"])
    data["losses"] = tuple(data["losses"])
    data["snapshots_seen"] = tuple(data.get("snapshots_seen") or ())
    return PretrainOutcome(**data)


def _checkpoint_path(ctx: WarehouseContext, ref: str | Path) -> Path:
    """A checkpoint file from a path or a `checkpoints` row id."""
    path = Path(ref)
    if path.is_file():
        return path.resolve()
    row = checkpoint_row(ctx.manifest, str(ref))
    if row is not None:
        return ctx.abs(row["path"]).resolve()
    raise FileNotFoundError(
        f"--from {ref}: neither a checkpoint file nor a checkpoint id of {ctx.root}; `mrifoundry status` shows "
        "the latest checkpoint"
    )


def torchrun_command(spec_path: Path, launch: Launch, job_id: str) -> list[str]:
    """The `torch.distributed.run` command line that starts this node's share of the job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.nnodes == 1 and launch.rdzv_endpoint is None:
        cmd.append("--standalone")  # a free local port, no endpoint to agree on
    else:
        cmd += [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={job_id}",
        ]
    return [*cmd, "-m", "tasks.pretrain_worker", "--spec", str(spec_path)]


def _launch_torchrun(spec: TrainSpec, launch: Launch) -> PretrainOutcome:
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)  # never report a previous run's result
    spec_path = out_dir / f"spec-{spec.run_id}.json"
    spec_path.write_text(spec.to_json())
    job_id = hashlib.sha256(spec.out_dir.encode()).hexdigest()[:12]
    cmd = torchrun_command(spec_path, launch, job_id)
    log.info("starting %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(_threads_per_process(launch)))}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with status {proc.returncode}; its processes' errors are above. The run resumes from "
            f"{out_dir / 'last.pt'} when started again with the same processes"
        )
    if not result_path.exists():  # another node held global rank 0 and its file is not shared with this one
        raise FileNotFoundError(
            f"the job finished but {result_path} is missing: global rank 0 ran on another node; put the warehouse "
            "on storage every node shares"
        )
    return _read_result(result_path)


def _threads_per_process(launch: Launch) -> int:
    return max(1, (os.cpu_count() or 1) // launch.nproc_per_node)
