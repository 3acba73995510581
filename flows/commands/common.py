"""Small helpers shared by the subcommand modules (no heavy imports)."""

from __future__ import annotations

import json
from typing import Any


def fmt_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as a left-aligned text table (two-space indent), `(none)` when empty."""
    if not rows:
        return "  (none)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  " + "  ".join(c.ljust(widths[c]) for c in cols)
    body = ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, *body])


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
