"""The evaluation report: one self-contained HTML page that says whether the new encoder is any better.

Why separate from tasks/report.py (the curation run report): this page belongs to one evaluation
run of one checkpoint, and it is what a data engineer forwards. It leads with a verdict in words,
withholds numbers the test set cannot support (and says why), and carries the snapshot, checkpoint
and code version it belongs to. Plots are embedded PNGs, so the file stands alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.context import WarehouseContext, code_version
from tasks.evaluation.runner import BASELINES, EvaluationOutcome
from tasks.evaluation.stats import Estimate

METHODS = ("pretrained", *BASELINES)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cell(e: Estimate | None) -> str:
    if e is None:
        return "<td class='na'>n/a</td>"
    if e.value is None:
        return f"<td class='na' title='{html.escape(e.note or '')}'>not shown*</td>"
    ci = f" [{e.ci[0]:.3f}, {e.ci[1]:.3f}]" if e.ci else ""
    return f"<td>{e.value:.3f}{ci}</td>"


def verdict(out: EvaluationOutcome) -> list[str]:
    """Plain sentences: per baseline, on how many tasks the pretrained encoder is better, worse, unclear."""
    lines = []
    shown = [t for t in out.tasks if any(e.value is not None for e in t.results.values())]
    withheld = len(out.tasks) - len(shown)
    if not shown:
        return [
            f"No result is shown: all {len(out.tasks)} task(s) have too few test subjects for an interval to mean "
            "anything (see the notes per task). Evaluate on a larger labelled cohort, e.g. `mrifoundry benchmark`."
        ]
    for base in BASELINES:
        diffs = [t.differences[base] for t in shown if base in t.differences and t.differences[base].ci]
        if not diffs:
            continue
        better = sum(d.ci[0] > 0 for d in diffs)
        worse = sum(d.ci[1] < 0 for d in diffs)
        lines.append(
            f"Against {base}: pretrained is better (95% CI of the paired difference above 0) on {better} of "
            f"{len(diffs)} task(s), worse on {worse}, and not distinguishable on {len(diffs) - better - worse}."
        )
    if withheld:
        lines.append(f"{withheld} task(s) are withheld because their test set is too small (notes below).")
    return lines


def _results_table(out: EvaluationOutcome) -> str:
    head = (
        "<tr><th>task</th><th>metric</th><th>protocol</th><th>split</th><th>n test</th>"
        + "".join(f"<th>{m}</th>" for m in METHODS)
        + "</tr>"
    )
    body, notes = [], []
    for t in out.tasks:
        cells = "".join(_cell(t.results.get(m)) for m in METHODS)
        body.append(
            f"<tr><td>{html.escape(t.task)}</td><td>{t.metric}</td><td>{t.protocol}</td><td>{t.scheme}</td>"
            f"<td>{t.n_test}</td>{cells}</tr>"
        )
        note = next((e.note for e in t.results.values() if e.note), None)
        if note:
            notes.append(f"<li><b>{html.escape(t.task)}</b>: {html.escape(note)}</li>")
    foot = f"<p>* not shown:</p><ul>{''.join(notes)}</ul>" if notes else ""
    return f"<table>{head}{''.join(body)}</table>{foot}"


def _diff_table(out: EvaluationOutcome) -> str:
    head = "<tr><th>task</th><th>metric</th>" + "".join(f"<th>pretrained vs {b}</th>" for b in BASELINES) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(t.task)}</td><td>{t.metric}</td>"
        + "".join(_cell(t.differences.get(b)) for b in BASELINES)
        + "</tr>"
        for t in out.tasks
    )
    spread = out.across_tasks()
    summ = "".join(
        f"<tr><td>{b}</td><td>{_f(s['mean'])}</td><td>{_f(s['sd'])}</td><td>{s['n_tasks']}</td><td>{s['tasks_ci_above_zero']}</td></tr>"
        for b, s in spread.items()
    )
    return (
        f"<table>{head}{body}</table><p>Across tasks (differences of different metrics, read as a tally):</p>"
        "<table><tr><th>baseline</th><th>mean difference</th><th>sd</th><th>tasks</th><th>CI above 0</th></tr>"
        f"{summ}</table>"
    )


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


def forest_plot(out: EvaluationOutcome) -> str | None:
    """One panel per metric (AUROC and MAE in years do not share an axis), a row per task and baseline."""
    rows = [
        (t, b, t.differences[b]) for t in out.tasks for b in BASELINES if b in t.differences and t.differences[b].ci
    ]
    if not rows:
        return None
    plt = _plt()
    metrics = list(dict.fromkeys(t.metric for t, _, _ in rows))
    sizes = [sum(t.metric == m for t, _, _ in rows) for m in metrics]
    fig, axes = plt.subplots(
        len(metrics),
        1,
        figsize=(7, 0.26 * len(rows) + 1.2 * len(metrics)),
        squeeze=False,
        gridspec_kw={"height_ratios": sizes},
    )
    colors = dict(zip(BASELINES, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        mine = [(t, b, d) for t, b, d in rows if t.metric == metric]
        for i, (_, base, d) in enumerate(mine):
            ax.plot(d.ci, [i, i], color=colors[base], lw=2)
            ax.plot([d.value], [i], "o", color=colors[base], ms=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(mine)), [f"{t.task} vs {b}" for t, b, _ in mine], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{metric} difference (positive = pretrained better)", fontsize=8)
    axes[-1, 0].set_xlabel("paired difference, 95% subject-bootstrap CI")
    return _png(fig)


def roc_plots(out: EvaluationOutcome) -> str | None:
    from sklearn.metrics import roc_curve

    tasks = [
        t
        for t in out.tasks
        if t.kind == "binary" and t.results.get("pretrained") and t.results["pretrained"].value is not None
    ]
    if not tasks:
        return None
    plt = _plt()
    n = len(tasks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        y = np.asarray(t.curves["target"]["y"])
        for m, s in t.curves.get("scores", {}).items():
            fpr, tpr, _ = roc_curve(y, np.asarray(s))
            ax.plot(fpr, tpr, lw=1.2, label=f"{m} {t.results[m].value:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(t.task, fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    return _png(fig)


def fewshot_plot(out: EvaluationOutcome) -> str | None:
    few = sorted((int(t.task.rsplit("_k", 1)[1]), t) for t in out.tasks if t.protocol == "fewshot")
    if not few:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for m in METHODS:
        pts = [(k, t.results[m]) for k, t in few if m in t.results and t.results[m].value is not None]
        if pts:
            ks = [k for k, _ in pts]
            ax.errorbar(
                ks,
                [e.value for _, e in pts],
                yerr=np.array([[e.value - e.ci[0], e.ci[1] - e.value] for _, e in pts]).T,
                label=m,
                capsize=2,
                marker="o",
                ms=3,
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k labelled subjects per class (train)")
    ax.set_ylabel("test AUROC")
    ax.legend(fontsize=7)
    return _png(fig)


CURVES = (("loss", "JEPA loss"), ("minvio", "MinVio (lowest MoE layer)"), ("maxvio", "MaxVio (highest MoE layer)"))
NOT_RECORDED = "not recorded"


def read_pretraining_curve(checkpoint_path: Path | None) -> tuple[dict[str, Any] | None, str]:
    """(curve, why not): the checkpoint's downsampled per-step history over its whole lineage.

    Checkpoints from before the history existed keep only this phase's `losses`; that becomes a
    loss-only curve and the note says MinVio/MaxVio were not recorded. mmap: the weights are not read.
    """
    if checkpoint_path is None or not checkpoint_path.exists():
        return None, "no checkpoint file"
    import torch

    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a foreign or truncated file must not cost the whole report
        return None, f"checkpoint unreadable ({type(err).__name__})"
    history = state.get("history")
    if isinstance(history, dict) and history.get("step"):
        return {k: history[k] for k in ("step", "lr", *(f for f, _ in CURVES), "phases", "stride")}, ""
    losses = [float(x) for x in state.get("losses", [])]
    if not losses:
        return None, "the checkpoint holds no per-step values"
    curve = {"step": list(range(1, len(losses) + 1)), "loss": losses, "phases": [], "stride": 1}
    return curve, "checkpoint written before per-step curves were kept: loss of its last phase only"


def _finite(v: list[float]) -> list[float]:
    return [x for x in v if x is not None and np.isfinite(x)]


def curve_rows(curve: dict[str, Any] | None, why: str) -> list[tuple[str, str]]:
    """(series, what was recorded) in words: points, steps, last and extreme values, or 'not recorded'."""
    rows = []
    for key, label in CURVES:
        vals = _finite((curve or {}).get(key) or [])
        if not vals:
            reason = why or ("no MoE layers, or every step skipped" if key != "loss" else "every step skipped")
            rows.append((label, f"{NOT_RECORDED} ({reason})"))
            continue
        steps = curve["step"]
        every = f", one per {curve['stride']} steps plus phase ends and the last" if curve.get("stride", 1) > 1 else ""
        rows.append(
            (
                label,
                f"{len(curve[key])} points over steps {steps[0]}-{steps[-1]}{every}; last {vals[-1]:.4g}, "
                f"min {min(vals):.4g}, max {max(vals):.4g}",
            )
        )
    return rows


def pretraining_curves(curve: dict[str, Any] | None, extra: dict[str, list[float]]) -> str:
    """Loss, MinVio and MaxVio over the checkpoint's steps (phase starts marked), plus the CNN-MAE loss.

    Always drawn: a series the checkpoint did not record is an empty panel that says so.
    """
    plt = _plt()
    panels = [(label, key) for key, label in CURVES] + [(name, None) for name, v in extra.items() if v]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, (label, key) in zip(axes[0], panels, strict=True):
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("step")
        if key is None:
            v = extra[label]
            ax.plot(np.arange(1, len(v) + 1), v, lw=0.8)
            continue
        vals = (curve or {}).get(key) or []
        if not _finite(vals):
            ax.text(0.5, 0.5, NOT_RECORDED, ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        ax.plot(curve["step"], vals, lw=0.8)
        if key != "loss":
            ax.axhline(1.0, color="0.6", lw=0.6)  # perfect balance
        for p in curve.get("phases", [])[1:]:
            ax.axvline(p["start"], color="tab:red", lw=0.6, ls="--")
            ax.text(p["start"], 1.0, f" {p['phase']}", color="tab:red", fontsize=6, va="top",
                    transform=ax.get_xaxis_transform())  # fmt: skip
    return _png(fig)


def _pretrain_summary(ctx: WarehouseContext) -> dict[str, Any]:
    """Last pretraining run's step count, loss and load balance at its last step (the curves come from
    the evaluated checkpoint itself, see read_pretraining_curve)."""
    from warehouse.runs import latest_completed_summary

    s = latest_completed_summary(ctx.manifest, "pretrain") or {}
    keys = {
        "steps": "pretraining steps",
        "final_loss": "pretraining final loss",
        "minvio": "MinVio (last step)",
        "maxvio": "MaxVio (last step)",
    }
    return {label: s[k] for k, label in keys.items() if s.get(k) is not None}


def write_eval_report(ctx: WarehouseContext, out: EvaluationOutcome, checkpoint: dict[str, Any], preset: str) -> Path:
    ck_path = ctx.abs(checkpoint["path"]) if checkpoint.get("path") else None
    curve, why = read_pretraining_curve(ck_path)
    images = [
        ("Paired differences (forest plot)", forest_plot(out)),
        ("ROC curves on the test subjects", roc_plots(out)),
        ("Few-shot curves", fewshot_plot(out)),
    ]
    prov = {
        "snapshot evaluated": out.snapshot_id,
        "checkpoint": checkpoint.get("checkpoint_id"),
        "pretrained on snapshot": checkpoint.get("snapshot_id"),
        "checkpoint code version": checkpoint.get("code_version"),
        "evaluation code version": code_version(),
        "evaluation preset": preset,
        "evaluation run": ctx.run_id,
        **_pretrain_summary(ctx),
        "seconds": round(out.seconds, 1),
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>MRI Foundry evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}th{background:#eee}td.na{color:#999}"
        ".verdict{font-size:15px;background:#f6f6e8;padding:.6em}</style></head><body>",
        "<h1>Is the new encoder any better?</h1>",
        "<div class='verdict'>" + "".join(f"<p>{html.escape(s)}</p>" for s in verdict(out)) + "</div>",
        "<h2>Provenance</h2><table>"
        + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in prov.items())
        + "</table>",
        "<h2>Results per task (95% CI: subject bootstrap on the test split, nothing refitted)</h2>",
        _results_table(out),
        "<h2>Paired differences, pretrained minus baseline "
        "(positive = pretrained better; MAE: baseline minus pretrained)</h2>",
        _diff_table(out),
    ]
    for title, png in images:
        if png:
            parts.append(
                f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
            )
    parts += [
        "<h2>Pretraining curves (loss, MinVio, MaxVio over steps)</h2>"
        "<p>MinVio / MaxVio: the least and the most loaded expert's token count over the mean count, per step "
        "(lowest / highest over the MoE layers; 1 = perfectly balanced routing).</p><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in curve_rows(curve, why))
        + "</table>",
        "<img alt='Pretraining curves' src='data:image/png;base64,"
        + pretraining_curves(curve, {"CNN-MAE loss": out.pretraining.get("cnn_mae_losses", [])})
        + "'>",
    ]
    if out.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in out.notes) + "</ul>")
    parts.append(
        f"<script type='application/json' id='results'>{html.escape(json.dumps(out.as_json()))}</script></body></html>"
    )
    path = ctx.reports_dir / f"evaluation-{ctx.run_id}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    latest = ctx.reports_dir / "evaluation.html"
    latest.write_text(path.read_text())
    return path
