"""Pure-PyTorch JEPA-MoE for 3D brain MRI (Neuro-JEPA recipe; docs/architecture.md, "Model recipe").

Read in this order: config.py (+ presets.py, flops.py) -> patch_embed.py, rope.py, blocks.py, moe.py ->
encoder.py, predictor.py -> masks.py, loss.py -> jepa.py -> data.py, sampler.py, augment.py, batches.py,
checkpoint.py, distributed.py, train.py -> probes.py. The torchrun entry that trains on a warehouse
snapshot is tasks/pretrain_worker.py (`mrifoundry pretrain --nproc-per-node N`).

This package never imports Prefect, DuckDB, pyarrow, `warehouse`, `tasks` or `flows` (an
import-linter contract checks it). This file deliberately imports nothing, so that `model.config`
and `model.presets` stay importable without torch (the CLI lists presets from them instantly).
"""
