"""Run summaries: what the CLI prints, what goes into Prefect artifacts and the `runs` table."""

from __future__ import annotations

import json
from typing import Any

from tasks.context import WarehouseContext
from tasks.record import ScanPlan
from tasks.shards import ShardBuild
from warehouse.queries import status


def curation_summary(ctx: WarehouseContext, scan_files: int, plan: ScanPlan, build: ShardBuild) -> dict[str, Any]:
    st = status(ctx.manifest)
    return {
        "warehouse": str(ctx.root),
        "run_id": ctx.run_id,
        "files_scanned": scan_files,
        "series_found": plan.n_series,
        "series_unchanged": plan.n_unchanged,
        "series_processed": len(plan.work),
        "series_rejected": plan.n_rejected,
        "series_other": plan.n_other,
        "series_held_for_review": plan.n_review,
        "files_rejected": plan.n_rejected_files,
        "series_by_class": {r["label"]: r["n"] for r in st["series_by_class"]},
        "volumes_by_decision": [(r["label"], r["decision"], r["n"]) for r in st["volumes_by_decision"]],
        "qc_reasons": {r["reason"]: r["n"] for r in st["qc_reasons"]},
        "rejections": {f"{r['state']}:{r['reason']}": r["n"] for r in st["series_by_state"] if r["reason"]},
        "rejected_files": {r["reason"]: r["n"] for r in st["rejected_files"]},
        "new_shards": len(build.new_shards),
        "snapshot_id": build.snapshot_id,
        "snapshot_volumes": build.snapshot_size,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """A two-column Markdown table of a summary dict (Prefect renders it as an artifact)."""
    lines = ["| item | value |", "|---|---|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {json.dumps(v, default=str) if not isinstance(v, str) else v} |")
    return "\n".join(lines)
