"""`mrifoundry model-info`: parameter counts and FLOPs of a model preset, without building the model.

Wired into flows/cli.py as a subcommand (`add_parser(subparsers)`, then `run(args)`). Reads only
`model.presets` (no torch import), so it answers instantly on any machine, GPU or not.
"""

from __future__ import annotations

import argparse
import json

from model.presets import PRESETS, format_model_info, model_info

COMMAND = "model-info"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `model-info` on the CLI's subparsers; the parsed args carry `handler=run`."""
    p = subparsers.add_parser(
        COMMAND,
        help="encoder (total and active per token) and predictor parameter counts of a model preset",
        description=(
            "Print the encoder's total and active (per-token: shared weights plus top-k routed experts) "
            "parameter counts, the predictor's, the token grid and the model FLOPs of one training step "
            "per sample. Computed from the config, no model is built."
        ),
    )
    p.add_argument("--preset", default="base", choices=sorted(PRESETS), help="model preset (default base)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the preset's sizes as text or JSON; returns the exit status."""
    info = model_info(args.preset)
    print(json.dumps(info, indent=2) if args.json else format_model_info(info))
    return 0
