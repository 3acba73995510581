"""The `qc` table row of one volume: where the pure QC math (imaging.qc) meets the manifest."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from imaging.qc import QC_METRIC_COLUMNS, STATUSES
from warehouse.manifest import now


def _finite_or_none(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def qc_row(volume_id: str, metrics: Mapping[str, float], decision: str, reasons: Sequence[str]) -> dict[str, object]:
    """The complete ``qc`` table row of one volume, ready for ``Manifest.upsert("qc", [row])``.

    NaN and ±inf become NULL (SQL and JSON have no NaN). ``outlier_score`` starts NULL: the group step
    (``tasks.qc_groups.apply_group_outliers``) fills it once the whole run is in.

    Raises:
        ValueError: ``decision`` is not one of ``STATUSES``.
    """
    if decision not in STATUSES:
        raise ValueError(f"QC decision {decision!r} is not one of {', '.join(STATUSES)}; use decide() to make one")
    row: dict[str, object] = {"volume_id": volume_id, "decision": decision, "reasons": list(reasons)}
    row.update({c: _finite_or_none(metrics.get(c)) for c in QC_METRIC_COLUMNS})
    row["metrics_json"] = json.dumps({k: _finite_or_none(v) for k, v in metrics.items()}, sort_keys=True)
    row["outlier_score"] = None
    row["updated_at"] = now()
    return row
