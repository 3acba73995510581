"""Checkpoint files: atomic writes, RNG state, compatibility checks, and loading the trained encoder.

A checkpoint (`last.pt`) is a dict:
    format        CHECKPOINT_FORMAT
    phase         "main" or "cooldown" (two phases never share a file: each has its own out_dir)
    world_size    number of data-parallel processes (with batch_size it fixes the global batch)
    model         JEPA state dict: context encoder, predictor, EMA target encoder, MoE routing biases
    optimizer     AdamW state (moments, step counts)
    step          optimizer steps taken in this phase (= the next batch of the deterministic stream)
    losses        loss of every step of this phase (NaN/inf where the step was skipped)
    skipped_steps non-finite steps skipped
    rng           torch (and CUDA) RNG states
    model_config, train_config   the configs as dicts
    init          for a cooldown: {"path", "step"} of the main-phase checkpoint it started from; else None
    history       downsampled curve (step, loss, lr, minvio, maxvio) of this phase and the ones it continued
                  (history.py); absent in checkpoints written before it existed
    stream        {"n_items", "epoch", "samples_seen"}: where the run is in its data stream (sampler.py);
                  batches are a pure function of (seed, step), this pins the dataset they were drawn from
    metadata      the caller's provenance (snapshot id, code version, preset, ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig, TrainConfig
from model.encoder import Encoder

# 2: phase, world_size and init fields; attention gate in the blocks.
# 3: stream position; augmentation on the device; init truncated at +-2 absolute; lr follows applied steps.
CHECKPOINT_FORMAT = 3


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A run killed mid-write leaves the previous checkpoint intact instead of a truncated file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_metadata(metadata: dict) -> None:
    """Metadata goes into the checkpoint and the warehouse as JSON; fail before training, not after."""
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"metadata must be JSON-serialisable (str/int/float/bool/None/list/dict): {err}; "
            "convert paths, dates and ids to strings"
        ) from err


def check_resumable(
    state: dict[str, Any],
    path: Path,
    *,
    phase: str,
    world_size: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    free_fields: Iterable[str],
) -> None:
    """Refuse to continue a run whose checkpoint was made with a different recipe.

    Args:
        state: the loaded checkpoint.
        path: where it came from (for the message).
        phase: the phase about to run.
        world_size: processes about to run (global batch = batch_size x world_size).
        model_cfg, train_cfg: the configs about to be used.
        free_fields: TrainConfig fields that may change on resume without changing the maths.
    """
    _check_format(state, path)
    if state["phase"] != phase:
        raise ValueError(
            f"{path} is a {state['phase']}-phase checkpoint, but this is the {phase} phase; give each phase its "
            "own out_dir (the cooldown reads the main checkpoint through init_from)"
        )
    if state["world_size"] != world_size:
        raise ValueError(
            f"cannot resume from {path}: it was trained by {state['world_size']} processes and this run has "
            f"{world_size}, which changes the global batch; resume with {state['world_size']} processes or start "
            "a fresh out_dir"
        )
    free = set(free_fields)
    diff = [k for k, v in model_cfg.to_dict().items() if state["model_config"].get(k) != v]
    diff += [k for k, v in train_cfg.to_dict().items() if k not in free and state["train_config"].get(k) != v]
    if diff:
        raise ValueError(
            f"cannot resume from {path}: it was trained with different {sorted(diff)}; "
            "use the original configs, a fresh out_dir, or resume=False to start over"
        )


def check_cooldown_source(state: dict[str, Any], path: Path, model_cfg: ModelConfig) -> None:
    """A cooldown must start from a main-phase checkpoint of the same architecture."""
    _check_format(state, path)
    if state["phase"] != "main":
        raise ValueError(f"init_from={path} is a {state['phase']}-phase checkpoint; cool down a main-phase one")
    diff = [k for k, v in model_cfg.to_dict().items() if state["model_config"].get(k) != v]
    if diff:
        raise ValueError(
            f"init_from={path} was trained with different {sorted(diff)}; cool down with the model config it "
            "was trained with"
        )


def _check_format(state: dict[str, Any], path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {state.get('format')}, this code writes {CHECKPOINT_FORMAT}; training "
            "cannot continue from it (load_encoder still reads it for evaluation); start a fresh out_dir"
        )


def config_from_checkpoint(state: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with.

    Format-1 checkpoints predate the `attn_gate` field and were trained without the gate, so a missing
    field means False (not today's default), keeping their encoders loadable for evaluation.
    """
    d = dict(state["model_config"])
    d.setdefault("attn_gate", False)
    return ModelConfig.from_dict(d)


def load_encoder(checkpoint_path: Path, map_location: str | torch.device = "cpu") -> tuple[Encoder, ModelConfig]:
    """The EMA target encoder of a checkpoint (the one to evaluate), in eval mode, with its config."""
    state = load(checkpoint_path, map_location)
    cfg = config_from_checkpoint(state)
    encoder = Encoder(cfg)
    prefix = "target_encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return encoder.to(map_location).eval(), cfg
