"""Command line: `python -m synth OUT_DIR [--preset NAME] [--subjects N] [--voxel-mm X] [--seed S]`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from synth.export import PRESETS, SynthConfig, generate_export


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m synth",
        description=(
            "Write a deterministic synthetic hospital brain-MRI DICOM export (MNI152-based heads, "
            "Siemens/GE/Philips header styles, scouts, diffusion maps, screenshots, broken files, "
            "PHI-shaped headers) plus labels.csv and truth.json. The same options always produce "
            "byte-identical files."
        ),
        epilog=(
            "Presets: tiny = 2 subjects at 2.5 mm (tests), demo = 6 subjects at 2 mm, "
            "large = 40 subjects at 1 mm. Options given explicitly override the preset. "
            "Example: python -m synth var/export --preset demo --seed 3"
        ),
    )
    p.add_argument("out_dir", type=Path, help="export root (created; must be empty or a previous synth export)")
    p.add_argument("--preset", choices=PRESETS, help="start from a named size (default: 4 subjects at 2 mm)")
    p.add_argument("--subjects", type=int, help="number of patients")
    p.add_argument("--studies", type=int, help="visits per patient (default 1)")
    p.add_argument("--voxel-mm", type=float, help="native voxel size of structural series in mm (0.7-4)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--no-broken-files", action="store_true", help="leave out the deliberately broken files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = SynthConfig.preset(args.preset) if args.preset else SynthConfig()
    overrides = {
        "n_subjects": args.subjects,
        "studies_per_subject": args.studies,
        "voxel_mm": args.voxel_mm,
        "seed": args.seed,
    }
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        if args.no_broken_files:
            config = replace(config, broken_files=False)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def report(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\rseries {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        summary = generate_export(args.out_dir, config, progress=report)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary.n_series} series, {summary.n_files} files in {summary.dicom_dir} "
        f"({time.perf_counter() - start:.1f} s); labels: {summary.labels_csv}; truth: {summary.truth_json}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
