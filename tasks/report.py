"""A self-contained HTML run report (tables + embedded PNG plots), built from the manifest only.

Everything shown comes from the warehouse, which holds pseudonyms only, so the report is safe to
share inside the hospital network.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from tasks.context import WarehouseContext
from warehouse.qc_store import qc_report_rows
from warehouse.queries import latest_snapshot, status
from warehouse.runs import latest_completed_summary


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def _loss_plot(losses: list[float]) -> str | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("JEPA L1 loss")
    ax.set_title("pretraining loss")
    ax.grid(alpha=0.3)
    out = _png(fig)
    plt.close(fig)
    return out


def _qc_plot(rows: list[dict[str, Any]]) -> str | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("snr", "cnr", "brain_volume_ml", "similarity")
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 2.6))
    for ax, name in zip(axes, metrics, strict=True):
        for decision, color in (("pass", "tab:green"), ("review", "tab:orange"), ("fail", "tab:red")):
            vals = [r[name] for r in rows if r["decision"] == decision and r[name] is not None]
            if vals:
                ax.hist(vals, bins=12, alpha=0.6, color=color, label=decision)
        ax.set_title(name)
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if labelled:  # volumes without these metrics (e.g. a generated benchmark cohort) draw nothing
        labelled[0].legend(fontsize=7)
    out = _png(fig)
    plt.close(fig)
    return out


def _mosaic(ctx: WarehouseContext, snapshot_id: str | None, n: int = 6) -> str | None:
    """Mid-slices (axial/coronal/sagittal) of the first few volumes in the snapshot."""
    if snapshot_id is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.train import load_snapshot_arrays

    members, arrays = load_snapshot_arrays(ctx, snapshot_id, limit=n)  # not the whole snapshot
    fig, axes = plt.subplots(len(arrays), 3, figsize=(6, 2 * len(arrays)), squeeze=False)
    for row, (m, a) in enumerate(zip(members, arrays, strict=True)):
        cx, cy, cz = (s // 2 for s in a.shape)
        for col, sl in enumerate((a[:, :, cz].T, a[:, cy, :].T, a[cx, :, :].T)):
            ax = axes[row][col]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=1.2)
            ax.axis("off")
        axes[row][0].set_title(f"{m['label']} {m['volume_id']}", fontsize=7, loc="left")
    out = _png(fig)
    plt.close(fig)
    return out


def write_report(ctx: WarehouseContext) -> Path:
    m = ctx.manifest
    st = status(m)
    qc_rows = qc_report_rows(m)
    pretrain = latest_completed_summary(m, "pretrain")
    losses = pretrain.get("losses", []) if pretrain else []
    snap = latest_snapshot(m)
    images = [
        ("Pretraining loss", _loss_plot(losses)),
        ("QC metrics by decision", _qc_plot(qc_rows)),
        ("Curated volumes in the latest snapshot (model grid, skull-stripped)", _mosaic(ctx, snap)),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>MRI Foundry run report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{background:#eee}</style>",
        "</head><body><h1>MRI Foundry run report</h1>",
        f"<p>Warehouse: <code>{html.escape(str(ctx.root))}</code>; latest snapshot: "
        f"<code>{html.escape(str(snap))}</code></p>",
        "<h2>Series by state and reason</h2>",
        _table(st["series_by_state"]),
        "<h2>Series by class</h2>",
        _table(st["series_by_class"]),
        "<h2>Skipped files (unreadable, truncated, duplicate)</h2>",
        _table(st["rejected_files"]),
        "<h2>Volumes by QC decision</h2>",
        _table(st["volumes_by_decision"]),
        "<h2>Evaluation (frozen encoder probe, subject-grouped CV AUROC)</h2>",
        _table(st["evaluations"]),
        "<h2>Latest checkpoint</h2>",
        _table([st["latest_checkpoint"]] if st["latest_checkpoint"] else []),
    ]
    for title, png in images:
        if png:
            parts += [
                f"<h2>{html.escape(title)}</h2>",
                f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>",
            ]
    parts += ["<h2>QC per volume</h2>", _table(qc_rows), "</body></html>"]
    out = ctx.reports_dir / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
