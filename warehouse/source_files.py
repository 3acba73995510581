"""What a scan found wrong with a source's files: the ``rejected_files`` rows of one export, replaced whole.

A scan sees every file of its source (the header index only saves reopening them), so its list of
rejected files is the whole truth for that source: rows of files since fixed or deleted go, and so do
rows written by older code (before every path component was pseudonymised, a file name could stand
there in clear).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from warehouse.manifest import WRITE_LOCK, Manifest
from warehouse.schema import table


def replace_rejected_files(m: Manifest, source_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Make ``rows`` the source's only ``rejected_files`` rows, in one transaction; returns how many."""
    cols = table("rejected_files").column_names
    for row in rows:
        if row.get("source_id") != source_id:
            raise ValueError(f"row for source {row.get('source_id')!r} passed to replace source {source_id!r}")
    batch = pa.Table.from_pylist([{c: row.get(c) for c in cols} for row in rows]) if rows else None
    with WRITE_LOCK, m.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM rejected_files WHERE source_id = ?", [source_id])
            if batch is not None:
                con.register("new_rejected", batch)
                con.execute(f"INSERT OR REPLACE INTO rejected_files ({', '.join(cols)}) SELECT * FROM new_rejected")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return len(rows)
