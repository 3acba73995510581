"""Run summaries a person reads: the Markdown of each flow's Prefect artifact.

One artifact per flow run, under a stable key per warehouse and flow (tasks.units.publish_summary_task),
so the Prefect UI shows a warehouse's curation, pretraining and evaluation history side by side. Plain
functions of plain data (no Prefect here), so they are tested without a server. Pseudonyms and counts
only: no source path, no patient identifier.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

DASHBOARD_URL_ENV = "MRIFOUNDRY_DASHBOARD_URL"
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8765"


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A Markdown table; an empty body says so instead of rendering a bare header."""
    header = list(header)
    body = [f"| {' | '.join(_cell(c) for c in r)} |" for r in rows]
    if not body:
        return "_none_"
    return "\n".join([f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *body])


def dashboard_url() -> str:
    """Where reviewers open the QC dashboard (MRIFOUNDRY_DASHBOARD_URL, else the local default)."""
    return os.environ.get(DASHBOARD_URL_ENV, DEFAULT_DASHBOARD_URL)


def curation_markdown(summary: Mapping[str, Any], outliers: int) -> str:
    """Counts, rejections by reason, QC decisions and outliers, and where to review them."""
    counts = [
        ("files scanned", summary.get("files_scanned")),
        ("series found", summary.get("series_found")),
        ("series preprocessed this run", summary.get("series_processed")),
        ("series unchanged since the last run", summary.get("series_unchanged")),
        ("series rejected", summary.get("series_rejected")),
        ("series of another class (skipped)", summary.get("series_other")),
        ("series held for class review", summary.get("series_held_for_review")),
        ("unreadable or duplicate files", summary.get("files_rejected")),
        ("new shards", summary.get("new_shards")),
        ("snapshot", summary.get("snapshot_id")),
        ("volumes in the snapshot", summary.get("snapshot_volumes")),
    ]
    rejects = sorted({**summary.get("rejections", {}), **summary.get("rejected_files", {})}.items())
    decisions = [tuple(r) for r in summary.get("volumes_by_decision", [])]
    url = dashboard_url()
    return "\n\n".join(
        [
            "# Curation",
            table(("item", "count"), counts),
            "## Rejected, by reason",
            table(("reason", "n"), rejects),
            "## QC decisions",
            table(("class", "decision", "n"), decisions),
            table(("QC reason", "n"), sorted(summary.get("qc_reasons", {}).items())),
            f"**{outliers}** volume(s) sent to review as outliers within their scanner and sequence group.",
            f"Review them in the [QC dashboard]({url}) (`mrifoundry dashboard --warehouse WAREHOUSE`).",
        ]
    )


def pretrain_markdown(summary: Mapping[str, Any]) -> str:
    """Checkpoint, lineage, loss and MoE load balance (MinVio/MaxVio) of one pretraining run."""
    losses = summary.get("losses") or []
    rows = [
        ("checkpoint", summary.get("checkpoint_id")),
        ("parent checkpoint", summary.get("parent_checkpoint_id") or "none (trained from scratch)"),
        ("preset", summary.get("preset")),
        ("phase", summary.get("phase")),
        ("snapshot", summary.get("snapshot_id")),
        ("volumes", summary.get("n_volumes")),
        ("steps", summary.get("steps")),
        ("loss, first step", summary.get("first_loss", losses[0] if losses else None)),
        ("loss, last step", summary.get("final_loss")),
        ("MinVio (last step, lowest layer)", summary.get("minvio")),
        ("MaxVio (last step, highest layer)", summary.get("maxvio")),
        ("skipped steps (non-finite)", summary.get("skipped_steps")),
        ("seconds", summary.get("seconds")),
        ("checkpoint file", summary.get("checkpoint_path")),
    ]
    return "\n\n".join(["# Pretraining", table(("item", "value"), rows)])


def evaluation_markdown(
    scores: Iterable[Mapping[str, Any]],
    notes: Iterable[str],
    report_path: str | None,
    checkpoint_id: str,
    comparison: Iterable[str] = (),
    verdict: Iterable[str] = (),
) -> str:
    """The headline table (task, method, metric, value, 95% CI, n), the verdict in words, what could
    not be evaluated and why, the comparison with the parent checkpoint, and where the full report is."""
    rows = [
        (
            s.get("task"),
            s.get("encoder"),
            s.get("metric"),
            s.get("value"),
            None if s.get("ci_low") is None else f"[{_cell(s.get('ci_low'))}, {_cell(s.get('ci_high'))}]",
            s.get("n_subjects"),
            s.get("note"),
        )
        for s in scores
    ]
    notes = list(notes)
    parts = [
        f"# Evaluation of checkpoint {checkpoint_id}",
        table(("task", "method", "metric", "value", "95% CI", "subjects", "note"), rows),
    ]
    parts += [line for line in verdict if line]
    comparison = list(comparison)
    if comparison:
        parts += ["## Against the parent checkpoint", "\n".join(f"- {c}" for c in comparison)]
    if notes:
        parts += ["## Not evaluated", "\n".join(f"- {n}" for n in notes)]
    parts.append(f"Full report: `{report_path}`" if report_path else "No report was written.")
    return "\n\n".join(parts)
