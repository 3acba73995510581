"""The evaluation report renders every section from an outcome, and says in words when n is small."""

from __future__ import annotations

import numpy as np

from tasks.context import open_warehouse
from tasks.eval_report import NOT_RECORDED, verdict, write_eval_report
from tasks.evaluation.runner import EvaluationOutcome, TaskResult
from tasks.evaluation.stats import Estimate


def _task(name: str, protocol: str = "linear", shown: bool = True, diff: float = 0.1) -> TaskResult:
    rng = np.random.default_rng(0)
    y = (np.arange(40) % 2).tolist()
    if shown:
        res = {m: Estimate(0.8, (0.7, 0.9), 40) for m in ("pretrained", "random_init", "handcrafted")}
        dif = {
            "random_init": Estimate(diff, (diff - 0.05, diff + 0.05), 40),
            "handcrafted": Estimate(0.0, (-0.1, 0.1), 40),
        }
    else:
        note = "not shown: only 2 test subject(s) in the smallest class (5 in all); an AUROC interval needs at least 10"
        res = {m: Estimate(None, None, 5, note) for m in ("pretrained", "random_init")}
        dif = {"random_init": Estimate(None, None, 5, note)}
    curves = {"target": {"y": y}, "scores": {m: (np.array(y) + rng.normal(0, 1, 40)).tolist() for m in res}}
    return TaskResult(name, "binary", "auroc", protocol, "random", 40 if shown else 5, res, dif, curves)


def test_report_renders_tables_plots_and_provenance(tmp_path):
    ctx = open_warehouse(tmp_path, run_id="run-rep")
    out = EvaluationOutcome(
        "ckpt-x",
        "snap-y",
        (
            _task("lesion"),
            _task("lesion_fewshot_k4", "fewshot"),
            _task("lesion_fewshot_k8", "fewshot"),
            _task("tiny", shown=False),
        ),
        12.0,
        notes=("a note",),
        pretraining={"cnn_mae_losses": [1.0, 0.8, 0.7]},
    )
    page = write_eval_report(
        ctx, out, {"checkpoint_id": "ckpt-x", "snapshot_id": "snap-pool", "code_version": "v1"}, "tiny"
    )
    text = page.read_text()
    for needle in (
        "Is the new encoder any better?",
        "ckpt-x",
        "snap-y",
        "snap-pool",
        "v1",
        "forest plot",
        "ROC curves",
        "Few-shot curves",
        "Pretraining curves",
        "not shown*",
        "only 2 test subject",
        "a note",
    ):
        assert needle in text, needle
    assert text.count("data:image/png;base64,") == 4
    assert (ctx.reports_dir / "evaluation.html").read_text() == text
    words = " ".join(verdict(out))
    assert "better" in words and "on 3 of 3 task(s)" in words and "1 task(s) are withheld" in words


def test_verdict_when_nothing_can_be_shown():
    out = EvaluationOutcome("c", "s", (_task("tiny", shown=False),), 1.0)
    (line,) = verdict(out)
    assert line.startswith("No result is shown") and "mrifoundry benchmark" in line


def test_demo_summary_prints_words_not_a_headline_when_n_is_small(capsys):
    from flows.commands.demo import print_evaluation

    note = "not shown: only 1 test subject(s) in the smallest class (2 in all); an AUROC interval needs at least 10"
    rows = [
        {"task": "lesion", "encoder": e, "metric": "auroc", "value": None, "note": note}
        for e in ("pretrained", "random_init")
    ]
    print_evaluation({"scores": rows, "verdict": []})
    text = capsys.readouterr().out
    assert "no number is shown" in text and note in text and "AUROC 0." not in text


def _outcome() -> EvaluationOutcome:
    return EvaluationOutcome("ckpt-x", "snap-y", (_task("lesion"),), 1.0, pretraining={"cnn_mae_losses": [1.0, 0.9]})


def _checkpoint(tmp_path, state: dict) -> dict:
    import torch

    (tmp_path / "ck").mkdir()
    torch.save(state, tmp_path / "ck" / "last.pt")
    return {"checkpoint_id": "ckpt-x", "snapshot_id": "snap-pool", "path": "ck/last.pt"}


def _curves_section(text: str) -> str:
    start = text.index("<h2>Pretraining curves")
    return text[start : text.index("<h2>", start + 4) if "<h2>" in text[start + 4 :] else len(text)]


def test_report_plots_loss_minvio_and_maxvio_over_the_checkpoint_steps(tmp_path):
    from model.history import StepHistory

    h = StepHistory(max_points=50)
    h.start_phase("main")
    for s in range(1, 121):
        h.add({"step": s, "loss": 2.0 - s / 100, "lr": 1e-3, "minvio": 0.5 + s / 1000, "maxvio": 1.9 - s / 1000})
    h.start_phase("cooldown")
    for s in range(121, 131):
        h.add({"step": s, "loss": 0.7, "lr": 1e-4, "minvio": 0.75, "maxvio": 1.25})
    ctx = open_warehouse(tmp_path, run_id="run-rep")
    ck = _checkpoint(tmp_path, {"losses": [0.7] * 10, "history": h.state_dict()})
    text = write_eval_report(ctx, _outcome(), ck, "tiny").read_text()
    section = _curves_section(text)
    for label in ("JEPA loss", "MinVio (lowest MoE layer)", "MaxVio (highest MoE layer)"):
        row = next(line for line in section.split("<tr>") if label in line)
        assert f"{len(h)} points over steps 1-130" in row, row
    assert "last 0.7," in section and "last 0.75," in section and "last 1.25," in section
    assert f"one per {h.stride} steps" in section and NOT_RECORDED not in section
    assert section.count("data:image/png;base64,") == 1


def test_report_of_an_old_checkpoint_says_the_balance_was_not_recorded(tmp_path):
    ctx = open_warehouse(tmp_path, run_id="run-rep")
    ck = _checkpoint(tmp_path, {"losses": [1.5, 1.2, 1.1]})  # written before per-step curves
    section = _curves_section(write_eval_report(ctx, _outcome(), ck, "tiny").read_text())
    loss = next(line for line in section.split("<tr>") if "JEPA loss" in line)
    assert "3 points over steps 1-3" in loss and "last 1.1," in loss
    for label in ("MinVio (lowest MoE layer)", "MaxVio (highest MoE layer)"):
        row = next(line for line in section.split("<tr>") if label in line)
        assert f"{NOT_RECORDED} (checkpoint written before per-step curves" in row
    assert "data:image/png;base64," in section
    gone = write_eval_report(ctx, _outcome(), {"checkpoint_id": "c", "path": "ck/missing.pt"}, "tiny").read_text()
    assert _curves_section(gone).count(f"{NOT_RECORDED} (no checkpoint file)") == 3
