"""The DuckDB manifest: schema creation, idempotent upserts, snapshots (stored by warehouse/snapshots.py).

All writes go through `upsert`, keyed by each table's primary key, so a rerun or a resumed run
replaces rows instead of duplicating them. One process-wide lock serialises writers because Prefect
runs tasks in threads and DuckDB allows one writer per database file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from warehouse.schema import SCHEMA_VERSION, TABLES, table

# Process-wide: DuckDB allows one writer per file, and refuses two threads opening one file at once.
WRITE_LOCK = threading.RLock()
_WRITE_LOCK = WRITE_LOCK
MANIFEST_NAME = "manifest.duckdb"
# Another process (the dashboard, a second flow) may hold the file for a few ms: retry that long.
LOCK_RETRY_SECONDS = 10.0


def now() -> datetime:
    """UTC wall-clock time without tzinfo, as DuckDB TIMESTAMP stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def _connect_with_retry(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting (with backoff) while another process holds its file lock."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Manifest:
    """A handle on `<warehouse>/manifest.duckdb`; cheap to create, opens a connection per use."""

    def __init__(self, warehouse: Path | str) -> None:
        self.root = Path(warehouse)
        self.path = self.root / MANIFEST_NAME

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise FileNotFoundError(
                f"no manifest at {self.path}; run `mrifoundry curate SOURCE --warehouse {self.root}` first"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        con = _connect_with_retry(self.path, read_only)
        try:
            yield con
        finally:
            con.close()

    def init(self) -> Manifest:
        """Create every registered table (idempotent) and record the schema version."""
        with _WRITE_LOCK, self.connect() as con:
            for t in TABLES.values():
                con.execute(t.ddl())
                # Additive migration: columns added to the registry later appear in old warehouses.
                for name, typ in t.columns:
                    con.execute(f"ALTER TABLE {t.name} ADD COLUMN IF NOT EXISTS {name} {typ}")
            from warehouse.snapshots import migrate_snapshot_storage

            migrate_snapshot_storage(con)  # the snapshot_volumes view (and an old full-copy table -> spans)
            con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        return self

    def upsert(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace rows by primary key; unknown columns are an error, missing ones NULL."""
        t = table(name)
        rows = list(rows)
        if not rows:
            return 0
        cols = t.column_names
        for row in rows:
            extra = set(row) - set(cols)
            if extra:
                raise ValueError(f"table {name!r} has no column(s) {sorted(extra)}; columns are {cols}")
        values = [[row.get(c) for c in cols] for row in rows]
        placeholders = ", ".join("?" for _ in cols)
        sql = f"INSERT OR REPLACE INTO {t.name} ({', '.join(cols)}) VALUES ({placeholders})"
        with _WRITE_LOCK, self.connect() as con:
            con.executemany(sql, values)
        return len(rows)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write statement with bound parameters under the writer lock."""
        with _WRITE_LOCK, self.connect() as con:
            con.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read query with bound parameters and return rows as dicts."""
        with _WRITE_LOCK, self.connect() as con:
            cur = con.execute(sql, list(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def count(self, name: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table(name).name}"))

    def commit_snapshot(self, volume_ids: Sequence[str]) -> tuple[str, bool]:
        """Freeze a set of volumes; the id hashes the sorted members, so the same set is one snapshot.

        Set-based and stored as membership spans (warehouse/snapshots.py): seconds for 1.5 M volumes,
        and a curate run that adds a few volumes writes a few rows.

        Returns:
            (snapshot_id, created) where created is False when that exact set already existed.
        """
        from warehouse.snapshots import commit_snapshot

        return commit_snapshot(self, volume_ids)
