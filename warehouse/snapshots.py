"""Snapshot membership as Arrow tables: what a training or evaluation run reads instead of Python rows.

A snapshot of 1.5 M volumes as a list of dicts costs ~1 GiB of Python objects per process, and every
DataLoader worker forked from it slowly copies those pages (reference counts are writes). The same
rows as one Arrow table are ~100 MiB of flat buffers that forked workers share untouched.
"""

from __future__ import annotations

import pyarrow as pa

from warehouse.manifest import WRITE_LOCK, Manifest

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
