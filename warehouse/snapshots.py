"""Snapshots at hospital scale: set-based commits, membership stored once, members as Arrow tables.

Reading: a snapshot of 1.5 M volumes as a list of dicts costs ~1 GiB of Python objects per process, and every
DataLoader worker forked from it slowly copies those pages (reference counts are writes). The same
rows as one Arrow table are ~100 MiB of flat buffers that forked workers share untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from warehouse.manifest import WRITE_LOCK, Manifest, now

MEMBER_COLUMNS = ("volume_id", "subject_id", "label", "shard_path", "batch_index")


def snapshot_member_table(m: Manifest, snapshot_id: str) -> pa.Table:
    """Where each volume of a snapshot lives, with its subject and class, ordered by volume id.

    Columns: volume_id, subject_id, label, shard_path (warehouse-relative), batch_index.
    """
    with WRITE_LOCK, m.connect(read_only=True) as con:  # read-only: torchrun ranks read it at once
        table = con.sql(
            """
            SELECT sv.volume_id, v.subject_id, v.label, sh.path AS shard_path, s.batch_index
            FROM snapshot_volumes sv JOIN shard_volumes s USING (volume_id)
            JOIN shards sh USING (shard_id) JOIN volumes v USING (volume_id)
            WHERE sv.snapshot_id = ? ORDER BY sv.volume_id
            """,
            params=[snapshot_id],
        ).to_arrow_table()
    if table.num_rows == 0:
        raise LookupError(f"snapshot {snapshot_id!r} not found or empty; `mrifoundry status` lists snapshots")
    return table


# --- Storage: membership as spans of the snapshot sequence ------------------------------------------
#
# Snapshots are numbered in commit order (`snapshots.seq`). A volume's membership is stored once per
# unbroken run of snapshots it belongs to: `snapshot_spans(volume_id, first_seq, last_seq)`, last_seq
# NULL while it is still in the newest snapshot. A curate run that adds 50 volumes to a 1.5 M-volume
# snapshot writes 50 rows (and closes the spans of volumes a rating removed), not 1.5 M. The view
# `snapshot_volumes(snapshot_id, volume_id)` answers membership as the old table did, so every query
# written against it keeps working; filtered on one snapshot it is one range scan of the spans.

SNAPSHOT_VIEW = """
CREATE OR REPLACE VIEW snapshot_volumes AS
SELECT s.snapshot_id, sp.volume_id
FROM snapshots s JOIN snapshot_spans sp
  ON sp.first_seq <= s.seq AND s.seq <= coalesce(sp.last_seq, 9223372036854775807)
"""


def commit_snapshot(m: Manifest, volume_ids: Sequence[str] | pa.Array) -> tuple[str, bool]:
    """Freeze a set of volumes as the next snapshot, set-based: seconds for 1.5 M volumes.

    De-duplicating, sorting and hashing the ids happen in DuckDB (no Python sort of 1.5 M strings);
    the new snapshot's rows are only its difference to the newest one (spans opened and closed).

    Returns:
        (snapshot_id, created); created is False when that exact set is already a snapshot.
    """
    members = pa.table({"volume_id": pa.array(volume_ids, type=pa.string())})
    with WRITE_LOCK, m.connect() as con:
        con.register("given_members", members)
        began = False
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE new_members AS SELECT DISTINCT volume_id FROM given_members")
            n, digest = con.execute(
                "SELECT count(*), sha256(string_agg(volume_id, chr(10) ORDER BY volume_id)) FROM new_members"
            ).fetchall()[0]
            if n == 0:
                raise ValueError("cannot snapshot an empty set of volumes: no volume passed QC yet")
            snap = "snap-" + digest[:16]
            if con.execute("SELECT count(*) FROM snapshots WHERE snapshot_id = ?", [snap]).fetchall()[0][0]:
                return snap, False
            con.execute("BEGIN TRANSACTION")
            began = True
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM snapshots").fetchall()[0][0]
            con.execute(  # removed since the newest snapshot: close their spans
                "UPDATE snapshot_spans SET last_seq = ? WHERE last_seq IS NULL "
                "AND volume_id NOT IN (SELECT volume_id FROM new_members)",
                [seq - 1],
            )
            con.execute(  # new (or back again): open a span
                "INSERT INTO snapshot_spans (volume_id, first_seq, last_seq) "
                "SELECT volume_id, ?, NULL FROM new_members "
                "WHERE volume_id NOT IN (SELECT volume_id FROM snapshot_spans WHERE last_seq IS NULL)",
                [seq],
            )
            con.execute(
                "INSERT INTO snapshots (snapshot_id, n_volumes, created_at, seq) VALUES (?, ?, ?, ?)",
                [snap, n, now(), seq],
            )
            con.execute("COMMIT")
            began = False
        except BaseException:
            if began:
                con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("given_members")
            con.execute("DROP TABLE IF EXISTS new_members")
    return snap, True


def migrate_snapshot_storage(con: duckdb.DuckDBPyConnection) -> None:
    """Create the membership view; an old warehouse's full-copy `snapshot_volumes` table becomes spans.

    Old snapshots are numbered by creation time; each volume's runs of consecutive snapshots become
    one span each (gaps and islands). Idempotent: runs on every `Manifest.init`.
    """
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = 'snapshot_volumes'"
    ).fetchall()
    if kinds and kinds[0][0] == "BASE TABLE":
        con.execute("BEGIN TRANSACTION")
        con.execute(
            """
            UPDATE snapshots SET seq = o.seq FROM (
                SELECT snapshot_id, row_number() OVER (ORDER BY created_at, snapshot_id) AS seq FROM snapshots
            ) o WHERE snapshots.snapshot_id = o.snapshot_id AND snapshots.seq IS NULL
            """
        )
        con.execute(
            """
            INSERT INTO snapshot_spans (volume_id, first_seq, last_seq)
            WITH member AS (
                SELECT sv.volume_id, s.seq,
                       s.seq - row_number() OVER (PARTITION BY sv.volume_id ORDER BY s.seq) AS island
                FROM snapshot_volumes sv JOIN snapshots s USING (snapshot_id)
            )
            SELECT volume_id, min(seq),
                   CASE WHEN max(seq) = (SELECT max(seq) FROM snapshots) THEN NULL ELSE max(seq) END
            FROM member GROUP BY volume_id, island
            """
        )
        con.execute("DROP TABLE snapshot_volumes")
        con.execute("COMMIT")
    con.execute(SNAPSHOT_VIEW)
