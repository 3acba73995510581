"""The built-in default source: a synthetic hospital export generated on the spot (no downloads)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from synth.export import ExportSummary, SynthConfig, generate_export


def make_export(out_dir: Path, preset: str = "demo", seed: int = 0, subjects: int | None = None) -> ExportSummary:
    """Generate the synthetic export; generation is deterministic, so a rerun rewrites identical
    files and the curation flow then finds nothing new."""
    cfg = replace(SynthConfig.preset(preset), seed=seed)
    if subjects is not None:
        cfg = replace(cfg, n_subjects=subjects)
    return generate_export(out_dir, cfg)
