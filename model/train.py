"""The pretraining loop: AdamW, warmup-then-constant LR with a separate cooldown phase, EMA target,
MoE balancing, exact resume, data parallelism.

One step: a loader worker builds batch `step` (a pure function of seed and step, see batches.py and
sampler.py; under DDP each rank builds its slice of the global batch: read + scale, augmentation
parameters, masks) -> to the device -> batched augmentation there (augment.py) -> forward under bf16
autocast on CUDA -> backward (DDP averages gradients) -> clip to 1.0 -> skip the step if the global
loss or the gradient norm is not finite -> AdamW -> update the MoE routing biases from this step's
counts, summed over ranks -> EMA the target. A skipped step consumes its batch but not the lr
schedule: the rate follows the number of applied updates.

Two phases, each with its own out_dir: `train` (main: warmup then constant lr, extendable at will)
and `cooldown` (starts from a main checkpoint's weights, EMA target, routing biases and AdamW moments,
decays lr linearly to `final_lr`, draws a fresh data/mask stream). `out_dir/last.pt` is rewritten
atomically every `checkpoint_every` steps and at the end (checkpoint.py lists its contents); a run
restarted on the same out_dir continues bit-for-bit as if never stopped.

Logged every step (the `log` callback on rank 0, and the progress bar): loss, lr, grad norm,
MinVio/MaxVio per MoE layer and their extremes, target feature std (collapse guard), seconds spent
waiting for data, augmenting and computing, samples/s and tokens/s. The checkpoint keeps a
downsampled curve of loss, lr, MinVio and MaxVio (history.py) that a warm start or a cooldown
continues, so the report can plot the whole lineage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from model import checkpoint as ckpt
from model.augment import AUGMENT_PRESETS, augment_batch, split_params
from model.batches import StepBatches
from model.checkpoint import load_encoder
from model.config import ModelConfig, TrainConfig
from model.distributed import World, all_reduce_mean, barrier, current_world, device_for, wrap_ddp
from model.history import StepHistory
from model.jepa import JEPA, check_collapse
from model.masks import MaskCollator, derive_seed
from model.sampler import StreamPosition

__all__ = [
    "StepBatches",
    "StepOutput",
    "TrainResult",
    "build_optimizer",
    "cooldown",
    "load_encoder",
    "train",
    "train_step",
]

MAIN, COOLDOWN = "main", "cooldown"
# TrainConfig fields that may differ between a run and its resumption without changing that phase's maths.
_FREE_ALWAYS = frozenset({"steps", "checkpoint_every", "num_workers", "device", "compile", "collapse_std"})
_FREE_IN_MAIN = _FREE_ALWAYS | {"cooldown_steps", "final_lr"}
_FREE_IN_COOLDOWN = _FREE_ALWAYS | {"warmup_steps", "start_lr"}


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train` or `cooldown`.

    `steps` and `losses` count from step 0 of the phase across resumptions (a skipped step's loss is
    NaN/inf; losses are means over all ranks); `final_loss` is the last finite loss; `seconds` is the
    wall time of this call only.
    """

    steps: int
    final_loss: float
    losses: tuple[float, ...]
    checkpoint_path: Path
    skipped_steps: int
    seconds: float


@dataclass(frozen=True)
class _Phase:
    name: str
    steps: int
    stream_seed: int  # seeds the data order, augmentations and masks of this phase
    lr_at: Callable[[int], float]
    free_fields: frozenset[str]


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset: Sequence,
    out_dir: Path,
    *,
    metadata: dict,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
    init_from: Path | None = None,
) -> TrainResult:
    """Main phase: pretrain a JEPA on `dataset` until `train_cfg.steps`, resuming from `out_dir/last.pt`.

    Under torchrun (a process group initialised, see distributed.py) every rank calls this with the
    same arguments; each trains on its slice of every global batch, rank 0 writes the checkpoint.

    Args:
        model_cfg: architecture (`model_cfg, train_cfg = presets.get_preset(name)`).
        train_cfg: optimisation recipe; `batch_size` is per process.
        dataset: sized, indexable, un-augmented items {"image": [1, X, Y, Z] in [0, 1], "fg": [N] (optional)}
            (tasks.snapshot_data.SnapshotVolumes, or VolumeDataset(train=False)); `train_cfg.augment`
            names the augmentation applied on the device.
        out_dir: where last.pt goes (created if missing).
        metadata: JSON-serialisable provenance stored in the checkpoint (snapshot id, code version).
        resume: continue from out_dir/last.pt when it exists; False starts over and overwrites it.
        log: called once per step on rank 0 with a flat dict of floats (step, lr, loss, grad_norm, ...).
        progress: show a tqdm progress bar (rank 0).
        init_from: warm start (retraining on a new snapshot): begin from this main-phase checkpoint's
            model, EMA target, routing biases and AdamW moments, at step 0, so the lr warms up afresh.
            Ignored when out_dir/last.pt exists and `resume` (that run is continued instead).

    Returns:
        TrainResult with the full loss history of the phase since step 0.
    """
    phase = _Phase(MAIN, train_cfg.steps, train_cfg.seed, train_cfg.lr_at, _FREE_IN_MAIN)
    init = None if init_from is None else Path(init_from)
    return _run(phase, model_cfg, train_cfg, dataset, Path(out_dir), init, metadata, resume, log, progress)


def cooldown(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset: Sequence,
    out_dir: Path,
    *,
    init_from: Path,
    metadata: dict,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Cooldown phase: `train_cfg.cooldown_steps` steps with lr decaying linearly from `lr` to `final_lr`.

    Starts from the main-phase checkpoint `init_from` (model, EMA target, routing biases, AdamW state)
    unless `out_dir/last.pt` holds an unfinished cooldown, which is then resumed exactly. The data and
    mask stream is seeded afresh (as the reference's cooldown runs with its own seed), so the cooldown
    does not replay the first batches of the main phase. Arguments as for `train`.
    """
    phase = _Phase(
        COOLDOWN,
        train_cfg.cooldown_steps,
        derive_seed(train_cfg.seed, 0xC001D0),
        train_cfg.cooldown_lr_at,
        _FREE_IN_COOLDOWN,
    )
    return _run(phase, model_cfg, train_cfg, dataset, Path(out_dir), Path(init_from), metadata, resume, log, progress)


def _run(
    phase: _Phase,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset: Sequence,
    out_dir: Path,
    init_from: Path | None,
    metadata: dict,
    resume: bool,
    log: Callable[[dict], None] | None,
    progress: bool,
) -> TrainResult:
    started = time.perf_counter()
    ckpt.check_metadata(metadata)
    world = current_world()
    device = device_for(world, train_cfg.device)
    _check_compile(train_cfg, model_cfg, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.pt"

    batches = StepBatches(
        dataset,
        MaskCollator(model_cfg, phase.stream_seed),
        train_cfg.batch_size,
        phase.stream_seed,
        rank=world.rank,
        world_size=world.world_size,
        augment=None if train_cfg.augment == "none" else AUGMENT_PRESETS[train_cfg.augment],
    )
    torch.manual_seed(train_cfg.seed)
    model = JEPA(model_cfg).to(device)
    optimizer = build_optimizer(model, train_cfg)
    step, losses, skipped, init = 0, [], 0, None
    saved_at: int | None = None  # step of the checkpoint on disk that belongs to this run
    history = StepHistory()
    if resume and ckpt_path.exists():
        step, losses, skipped, init, position = _resume(
            ckpt_path, model, optimizer, phase, world, model_cfg, train_cfg, history
        )
        if batches.stream.step_at(position) != step:  # also refuses a checkpoint of another snapshot size
            raise ValueError(f"{ckpt_path}: its stream position {position} is not step {step}; start a fresh out_dir")
        saved_at = step
    elif init_from is not None:
        init = _start_from(init_from, model, optimizer, model_cfg, history)
    if saved_at is None or not history.phases:  # a new phase (or one resumed from before curves were kept)
        history.start_phase(phase.name, start_if_empty=(init or {}).get("step", 0))
    offset = int(history.phases[-1]["start"])  # this phase's step 0 on the lineage's step axis

    def save() -> None:
        nonlocal saved_at
        if world.is_main:
            ckpt.save_atomic(
                {
                    "format": ckpt.CHECKPOINT_FORMAT,
                    "phase": phase.name,
                    "world_size": world.world_size,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "losses": losses,
                    "skipped_steps": skipped,
                    "rng": ckpt.rng_state(),
                    "model_config": model_cfg.to_dict(),
                    "train_config": train_cfg.to_dict(),
                    "init": init,
                    "history": history.state_dict(),
                    "stream": batches.stream.position_at(step).to_dict(),
                    "metadata": metadata,
                },
                ckpt_path,
            )
        barrier(world)  # every rank returns/continues only once the file exists
        saved_at = step

    forward: torch.nn.Module = wrap_ddp(model, device) if world.distributed else model
    if train_cfg.compile:
        forward = torch.compile(forward)
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(step, phase.steps),
        num_workers=train_cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Spawned, not forked: the trainer often runs inside a Prefect flow whose threads (API client,
        # logging, DuckDB) hold locks a forked child would inherit mid-use and deadlock or die on.
        multiprocessing_context="spawn" if train_cfg.num_workers > 0 else None,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    global_batch = train_cfg.batch_size * world.world_size
    warned_collapse = False
    model.train()
    bar = tqdm(total=phase.steps, initial=step, disable=not (progress and world.is_main), desc=phase.name, unit="step")
    ready = time.perf_counter()
    for batch in loader:
        fetched = time.perf_counter()
        lr = phase.lr_at(step - skipped)  # a skipped step does not advance the schedule
        batch, aug = split_params(batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if aug:
            augment_batch(batch["image"], aug, batches.augment)
        augmented = time.perf_counter()
        out = train_step(forward, model, optimizer, params, batch, lr, train_cfg.grad_clip, autocast, world)
        if out.applied:
            model.ema_update(train_cfg.ema)
        else:
            skipped += 1
        losses.append(out.values["loss"])
        step += 1
        done = time.perf_counter()
        record = _record(step, lr, out, data_s=fetched - ready, compute_s=done - augmented)
        record["augment_seconds"] = augmented - fetched
        record["samples_per_s"] = global_batch / (done - ready)
        record["tokens_per_s"] = global_batch * model_cfg.n_tokens / (done - ready)
        history.add({**record, "step": offset + step})
        if world.is_main:
            if out.applied and not warned_collapse:
                warned_collapse = check_collapse(out.values["target_std"], train_cfg.collapse_std)
            if log is not None:
                log(record)
            bar.set_postfix(_postfix(record), refresh=False)
            bar.update(1)
        if step % train_cfg.checkpoint_every == 0 or step == phase.steps:
            save()
        ready = time.perf_counter()
    bar.close()
    if saved_at != step:
        save()  # e.g. steps=0 with resume=False: still leave a loadable checkpoint of this run

    finite_losses = [x for x in losses if math.isfinite(x)]
    return TrainResult(
        steps=step,
        final_loss=finite_losses[-1] if finite_losses else float("nan"),
        losses=tuple(losses),
        checkpoint_path=ckpt_path,
        skipped_steps=skipped,
        seconds=time.perf_counter() - started,
    )


def _resume(
    path: Path,
    model: JEPA,
    optimizer: torch.optim.Optimizer,
    phase: _Phase,
    world: World,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    history: StepHistory,
) -> tuple[int, list[float], int, dict | None, StreamPosition]:
    """Restore model, optimizer, RNG and the curve (into `history`) from this phase's checkpoint:
    (step, losses, skipped, init, stream).

    Loaded to CPU and dropped on return, so a GPU never holds a second copy of weights and moments.
    """
    state = ckpt.load(path, "cpu")
    ckpt.check_resumable(
        state,
        path,
        phase=phase.name,
        world_size=world.world_size,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        free_fields=phase.free_fields,
    )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    ckpt.set_rng_state(state["rng"])
    history.load_state(state.get("history"))
    position = StreamPosition(**state["stream"])
    return state["step"], list(state["losses"]), state["skipped_steps"], state["init"], position


def _start_from(
    path: Path, model: JEPA, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig, history: StepHistory
) -> dict:
    """Begin a cooldown or a warm-started main phase from a main-phase checkpoint: weights, EMA target,
    routing biases, AdamW moments (not its step: the new phase counts, and schedules its lr, from 0),
    and its curve, which the new phase continues."""
    state = ckpt.load(path, "cpu")
    ckpt.check_cooldown_source(state, path, model_cfg)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    history.load_state(state.get("history"))
    return {"path": str(path), "step": int(state["step"])}


@dataclass(frozen=True)
class StepOutput:
    """What one `train_step` did and measured (plain floats: the step's host sync already happened)."""

    applied: bool
    values: dict[str, float]  # JEPA stats (loss, loss_g*, target_std, pred_std), averaged over ranks
    grad_norm: float  # before clipping
    vio: list[list[float]]  # [MinVio, MaxVio] per MoE layer; empty for a skipped step or a dense model


def train_step(
    forward: torch.nn.Module,
    model: JEPA,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    lr: float,
    grad_clip: float,
    autocast: torch.autocast,
    world: World,
) -> StepOutput:
    """Forward, backward, clip, AdamW, MoE bias update; or skip the update if anything is non-finite.

    The EMA update of the target encoder is left to the caller (only after an applied step). Public so
    that bench/train_step.py times exactly the step the training loop runs.

    Args:
        forward: `model`, or its DDP / torch.compile wrapper, called on the batch.
        model: the JEPA itself (for the MoE bias update).
        optimizer: from `build_optimizer`.
        params: the trainable parameters (for clipping).
        batch: a MaskCollator batch on the model's device.
        lr: learning rate of this step.
        grad_clip: max global gradient norm.
        autocast: bf16 autocast context (disabled off CUDA in training).
        world: this process's place in the data-parallel job.

    The backward runs even when the loss is not finite: under DDP every rank must join the gradient
    all-reduce, and the skip decision is taken afterwards from values every rank shares (the
    rank-averaged loss and the global gradient norm), so all ranks skip together.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        loss, stats = forward(batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    names = list(stats)
    shared = all_reduce_mean(torch.stack([stats[k].float() for k in names]), world)  # [S]
    host = torch.cat((shared, grad_norm.detach().float().reshape(1).to(shared.device))).tolist()  # one sync
    values, norm = dict(zip(names, host[:-1], strict=True)), host[-1]
    applied = math.isfinite(values["loss"]) and math.isfinite(norm)
    vio: list[list[float]] = []
    if applied:
        optimizer.step()
        vio = model.update_moe_biases().tolist()  # counts summed over ranks -> routing bias, counts reset
    else:
        optimizer.zero_grad(set_to_none=True)
        model.discard_moe_counts()
    return StepOutput(applied, values, norm, vio)


def _record(step: int, lr: float, out: StepOutput, *, data_s: float, compute_s: float) -> dict[str, float]:
    """The flat dict handed to the `log` callback for one step."""
    record = {"step": step, "lr": lr, "grad_norm": out.grad_norm, "skipped": float(not out.applied), **out.values}
    for layer, (min_vio, max_vio) in enumerate(out.vio):
        record[f"moe{layer}_minvio"], record[f"moe{layer}_maxvio"] = min_vio, max_vio
    if out.vio:  # the worst layer in each direction: what to watch on a dashboard
        record["minvio"] = min(v[0] for v in out.vio)
        record["maxvio"] = max(v[1] for v in out.vio)
    record["data_seconds"], record["step_seconds"] = data_s, compute_s
    return record


def _postfix(record: dict[str, float]) -> dict[str, str]:
    """Progress-bar fields: the numbers to glance at while a run goes."""
    postfix = {
        "loss": f"{record['loss']:.4f}",
        "lr": f"{record['lr']:.2e}",
        "gnorm": f"{record['grad_norm']:.2f}",
    }
    if "maxvio" in record:
        postfix["maxvio"] = f"{record['maxvio']:.2f}"
    postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
    return postfix


def _check_compile(train_cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device) -> None:
    """torch.compile traces F.grouped_mm, whose compiled form only accepts bf16: fail before building anything.

    Training runs under bf16 autocast on CUDA only, so compiling a grouped MoE anywhere else would die
    in the first forward with a fake-tensor error that does not say what to change.
    """
    if train_cfg.compile and device.type != "cuda" and model_cfg.use_moe and model_cfg.moe_impl == "grouped":
        raise ValueError(
            f"compile=True with moe_impl='grouped' needs the bf16 autocast of CUDA training (torch.compile only "
            f"traces F.grouped_mm in bf16), but this run is on {device}; set compile=False, or moe_impl='loop'"
        )


def build_optimizer(model: JEPA, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases, norms or MoE expert biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = p.ndim < 2 or name.endswith(("bias", ".b1", ".b2"))
        (no_decay if is_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps)
