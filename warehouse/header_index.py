"""The header index: what an earlier scan learnt from each source file, so a rescan need not reopen it.

One row per file, keyed by ``path_key`` (a keyed HMAC of the file's path: a path can hold a patient's
name, so it is never stored in clear) with the size and modification time it had when it was read, the
header reader's version, and the reader's result sealed by the caller (``tasks.scan_index``: it holds
raw identifiers, so it is encrypted with a key derived from the warehouse's pseudonymisation key).
``source_key`` (the same HMAC of the export root) scopes the pruning of deleted files to one export.

The table lives here, not in ``warehouse.schema``, because only the scan reads it: ``ensure_table``
creates it on first use. Batches go through Arrow tables registered with DuckDB, so 100k lookups are
one join rather than 100k statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from warehouse.manifest import WRITE_LOCK, Manifest, now

TABLE = "header_index"
_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    path_key VARCHAR PRIMARY KEY,
    source_key VARCHAR NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    reader_version VARCHAR NOT NULL,
    sealed BLOB NOT NULL,
    updated_at TIMESTAMP
)
"""


@dataclass(frozen=True)
class IndexRow:
    """One file's entry (see the module doc for each column)."""

    path_key: str
    source_key: str
    size: int
    mtime_ns: int
    reader_version: str
    sealed: bytes


def ensure_table(m: Manifest) -> None:
    """Create the table if this warehouse has none yet (idempotent)."""
    with WRITE_LOCK, m.connect() as con:
        con.execute(_DDL)


def fetch_rows(m: Manifest, path_keys: Sequence[str]) -> list[IndexRow]:
    """The stored rows of these path keys (missing keys are simply absent)."""
    if not path_keys:
        return []
    wanted = pa.table({"path_key": pa.array(list(path_keys), pa.string())})
    with m.connect() as con:
        con.register("wanted_keys", wanted)
        rows = con.execute(
            f"""
            SELECT h.path_key, h.source_key, h.size, h.mtime_ns, h.reader_version, h.sealed
            FROM {TABLE} h JOIN wanted_keys w USING (path_key)
            """
        ).fetchall()
    return [IndexRow(*r) for r in rows]


def store_rows(m: Manifest, rows: Sequence[IndexRow]) -> int:
    """Insert or replace these rows (one statement for the batch); returns how many."""
    if not rows:
        return 0
    batch = pa.table(
        {
            "path_key": pa.array([r.path_key for r in rows], pa.string()),
            "source_key": pa.array([r.source_key for r in rows], pa.string()),
            "size": pa.array([r.size for r in rows], pa.int64()),
            "mtime_ns": pa.array([r.mtime_ns for r in rows], pa.int64()),
            "reader_version": pa.array([r.reader_version for r in rows], pa.string()),
            "sealed": pa.array([r.sealed for r in rows], pa.binary()),
        }
    )
    with WRITE_LOCK, m.connect() as con:
        con.register("new_rows", batch)
        con.execute(
            f"""
            INSERT OR REPLACE INTO {TABLE}
            SELECT path_key, source_key, size, mtime_ns, reader_version, sealed, ? FROM new_rows
            """,
            [now()],
        )
    return len(rows)


def forget_missing(m: Manifest, source_key: str, present_keys: Sequence[str]) -> int:
    """Delete the rows of this source whose file is no longer present; returns how many went."""
    present = pa.table({"path_key": pa.array(list(present_keys), pa.string())})
    with WRITE_LOCK, m.connect() as con:
        con.register("present_keys", present)
        (gone,) = con.execute(
            f"""
            SELECT count(*) FROM {TABLE}
            WHERE source_key = ? AND path_key NOT IN (SELECT path_key FROM present_keys)
            """,
            [source_key],
        ).fetchone()
        if gone:
            con.execute(
                f"DELETE FROM {TABLE} WHERE source_key = ? AND path_key NOT IN (SELECT path_key FROM present_keys)",
                [source_key],
            )
    return int(gone)


def count_rows(m: Manifest, source_key: str | None = None) -> int:
    """Entries in the index, of one source or of all."""
    with m.connect(read_only=True) as con:
        if source_key is None:
            return int(con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
        return int(con.execute(f"SELECT count(*) FROM {TABLE} WHERE source_key = ?", [source_key]).fetchone()[0])
