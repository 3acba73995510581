"""`mrifoundry model-info`: the printed and JSON parameter counts are the analytic ones of the preset."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.commands.model_info import add_parser, run
from model.presets import count_parameters, get_preset

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mrifoundry")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_json_reports_base_counts_close_to_the_reference(capsys):
    args = parse(["model-info", "--preset", "base", "--json"])
    assert args.handler is run and run(args) == 0
    info = json.loads(capsys.readouterr().out)
    n = count_parameters(get_preset("base").model)
    assert info["encoder_total_params"] == n.encoder_total == 122_054_544
    assert info["encoder_active_params"] == n.encoder_active == 86_595_984
    assert info["predictor_params"] == n.predictor == 21_941_904
    ref = info["reference"]  # ~122 M total, ~86 M active, ~22 M predictor (Neuro-JEPA base)
    for key in ("encoder_total_params", "encoder_active_params", "predictor_params"):
        assert abs(info[key] - ref[key]) < 0.7e6, key
    assert "attention gate" in info["reference_gap"]
    assert (info["tokens"], info["context_tokens"], info["target_tokens"]) == (576, 144, 432)
    assert info["moe"] == "16 routed + 2 shared, top-6, blocks 1,3,5,7,9,11"


def test_text_output_prints_millions_and_exact_counts(capsys):
    assert run(parse(["model-info", "--preset", "tiny"])) == 0
    out = capsys.readouterr().out
    n = count_parameters(get_preset("tiny").model)
    assert f"({n.encoder_total:,})" in out and f"({n.encoder_active:,})" in out and f"({n.predictor:,})" in out
    assert "reference" not in out  # no published figures for tiny
    assert run(parse(["model-info"])) == 0  # default preset: base, with the reference beside each count
    assert "122.05 M  (122,054,544)   reference ~122 M" in capsys.readouterr().out


def test_unknown_preset_is_rejected_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["model-info", "--preset", "huge"])
    assert exc.value.code == 2
    assert "choose from 'base', 'small', 'tiny'" in capsys.readouterr().err


def test_model_info_does_not_import_torch():
    code = (
        "import sys, argparse; from flows.commands.model_info import add_parser, run\n"
        "p = argparse.ArgumentParser(); add_parser(p.add_subparsers(dest='c'))\n"
        "run(p.parse_args(['model-info', '--json']))\n"
        "print('HEAVY', [m for m in ('torch', 'numpy', 'prefect') if m in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
