"""The pretraining loop: AdamW, warmup-then-constant LR, EMA target, MoE balancing, exact resume.

One step: build batch `step` (a pure function of seed and step, see StepBatches) -> forward under
bf16 autocast on CUDA -> skip the step if the loss or the gradient norm is not finite -> clip to
1.0 -> AdamW -> update the MoE routing biases from this step's counts -> EMA the target encoder.

`out_dir/last.pt` is rewritten atomically every `checkpoint_every` steps and at the end. It holds
everything a resumed run needs to continue bit-for-bit as if never stopped (model incl. EMA target
and routing biases, optimizer moments, step, loss history, RNG states), plus both configs and the
caller's metadata (snapshot id, code version) so any encoder can be traced to its data.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from model.config import ModelConfig, TrainConfig
from model.encoder import Encoder
from model.jepa import JEPA, check_collapse
from model.masks import MaskCollator, derive_seed

CHECKPOINT_FORMAT = 1
# TrainConfig fields that may change between a run and its resumption without changing the maths.
_RESUMABLE_FIELDS = frozenset({"steps", "checkpoint_every", "num_workers", "device"})


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`.

    `steps` and `losses` count from step 0 across resumptions (a skipped step's loss is NaN/inf);
    `final_loss` is the last finite loss; `seconds` is the wall time of this call only.
    """

    steps: int
    final_loss: float
    losses: tuple[float, ...]
    checkpoint_path: Path
    skipped_steps: int
    seconds: float


class StepBatches(torch.utils.data.Dataset):
    """Batch number `step`, deterministically: a map-style dataset indexed by step.

    Sample positions step*B .. step*B+B-1 of an endless stream of epochs, each epoch a permutation of
    the dataset seeded by (seed, epoch). Augmentation draw = stream position, masks seeded by
    (seed, step). Indexing by step (instead of iterating) is what makes resume exact and lets
    DataLoader workers build batches in parallel without shared RNG state.
    """

    def __init__(self, dataset: Sequence, collator: MaskCollator, batch_size: int, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty; curate at least one volume first")
        self.dataset, self.collator, self.batch_size, self.seed = dataset, collator, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, step: int) -> list[tuple[int, int]]:
        """(dataset index, stream position) of each sample in batch `step`."""
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, len(self.dataset))
            out.append((int(self._perm(epoch)[offset]), position))
        return out

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(len(self.dataset), generator=gen)
        return self._perms[epoch]

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        sample = getattr(self.dataset, "sample", None)  # VolumeDataset: augmentation keyed by draw
        items = [sample(i, draw) if sample else self.dataset[i] for i, draw in self.indices(step)]
        return self.collator(items, step)


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
) -> TrainResult:
    """Pretrain a JEPA on `dataset` until `train_cfg.steps`, resuming from `out_dir/last.pt` if present.

    Args:
        model_cfg: architecture (`model_cfg, train_cfg = presets.get_preset(name)`).
        train_cfg: optimisation recipe.
        dataset: sized, indexable items {"image": [1, X, Y, Z], "fg": [N] (optional)}; when it has
            `sample(index, draw)` (VolumeDataset) augmentations are keyed by draw, so resume is exact.
        out_dir: where last.pt goes (created if missing).
        metadata: JSON-serialisable provenance stored in the checkpoint (snapshot id, code version).
        resume: continue from out_dir/last.pt when it exists; False starts over and overwrites it.
        log: called once per step with a flat dict of floats (step, lr, loss, grad_norm, ...).
        progress: show a tqdm progress bar.

    Returns:
        TrainResult with the full loss history since step 0.
    """
    started = time.perf_counter()
    _check_metadata(metadata)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.pt"
    device = _device(train_cfg.device)

    torch.manual_seed(train_cfg.seed)
    model = JEPA(model_cfg).to(device)
    optimizer = _optimizer(model, train_cfg)
    step, losses, skipped = 0, [], 0
    saved_at: int | None = None  # step of the checkpoint on disk that belongs to this run
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        _check_resumable(state, ckpt_path, model_cfg, train_cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses, skipped = state["step"], list(state["losses"]), state["skipped_steps"]
        _set_rng_state(state["rng"])
        saved_at = step

    def save() -> None:
        nonlocal saved_at
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "losses": losses,
            "skipped_steps": skipped,
            "rng": _rng_state(),
            "model_config": model_cfg.to_dict(),
            "train_config": train_cfg.to_dict(),
            "metadata": metadata,
        }
        _save_atomic(state, ckpt_path)
        saved_at = step

    batches = StepBatches(dataset, MaskCollator(model_cfg, train_cfg.seed), train_cfg.batch_size, train_cfg.seed)
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(step, train_cfg.steps),
        num_workers=train_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    warned_collapse = False
    model.train()
    bar = tqdm(total=train_cfg.steps, initial=step, disable=not progress, desc="pretrain", unit="step")
    for batch in loader:
        t_step = time.perf_counter()
        lr = train_cfg.lr_at(step)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        applied, values, grad_norm, vio = _step(model, optimizer, params, batch, lr, train_cfg.grad_clip, autocast)
        if applied:
            model.ema_update(train_cfg.ema)
        else:
            skipped += 1
        losses.append(values["loss"])
        step += 1
        record = {"step": step, "lr": lr, "grad_norm": grad_norm, "skipped": float(not applied), **values}
        for layer, (min_vio, max_vio) in enumerate(vio):
            record[f"moe{layer}_minvio"], record[f"moe{layer}_maxvio"] = min_vio, max_vio
        record["step_seconds"] = time.perf_counter() - t_step
        if applied and not warned_collapse:
            warned_collapse = check_collapse(values["target_std"], train_cfg.collapse_std)
        if log is not None:
            log(record)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            save()
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


def _step(
    model: JEPA,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    lr: float,
    grad_clip: float,
    autocast: torch.autocast,
) -> tuple[bool, dict[str, float], float, list[list[float]]]:
    """Forward, backward, clip, AdamW, MoE bias update; or skip all of it if anything is non-finite.

    Returns:
        (applied, stats as floats, gradient norm before clipping, [[MinVio, MaxVio] per MoE layer]).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        loss, stats = model(batch)
    optimizer.zero_grad(set_to_none=True)
    grad_norm = torch.tensor(float("nan"))
    applied = bool(torch.isfinite(loss))  # one host sync per step, shared with the logging below
    if applied:
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        applied = bool(torch.isfinite(grad_norm))
    vio = torch.zeros(0, 2)
    if applied:
        optimizer.step()
        vio = model.update_moe_biases()  # counts of this step -> routing bias, counts reset
    else:
        optimizer.zero_grad(set_to_none=True)
        model.discard_moe_counts()
    values = dict(zip(stats, torch.stack(list(stats.values())).float().tolist(), strict=True))
    return applied, values, float(grad_norm), vio.tolist()


def load_encoder(checkpoint_path: Path, map_location: str | torch.device = "cpu") -> tuple[Encoder, ModelConfig]:
    """The EMA target encoder of a checkpoint (the one to evaluate), in eval mode, with its config."""
    state = torch.load(checkpoint_path, map_location=map_location, weights_only=True)
    cfg = ModelConfig.from_dict(state["model_config"])
    encoder = Encoder(cfg)
    prefix = "target_encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return encoder.to(map_location).eval(), cfg


def _optimizer(model: JEPA, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases, norms or MoE expert biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = p.ndim < 2 or name.endswith(("bias", ".b1", ".b2"))
        (no_decay if is_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_metadata(metadata: dict) -> None:
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"metadata must be JSON-serialisable (str/int/float/bool/None/list/dict): {err}; "
            "convert paths, dates and ids to strings"
        ) from err


def _check_resumable(state: dict[str, Any], path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    saved_model, saved_train = state["model_config"], state["train_config"]
    diff = [k for k, v in model_cfg.to_dict().items() if saved_model.get(k) != v]
    diff += [k for k, v in train_cfg.to_dict().items() if k not in _RESUMABLE_FIELDS and saved_train.get(k) != v]
    if diff:
        raise ValueError(
            f"cannot resume from {path}: it was trained with different {sorted(diff)}; "
            "use the original configs, a fresh out_dir, or resume=False to start over"
        )


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
