"""The evaluation report renders every section from an outcome, and says in words when n is small."""

from __future__ import annotations

import numpy as np

from tasks.context import open_warehouse
from tasks.eval_report import verdict, write_eval_report
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
