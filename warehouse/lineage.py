"""Checkpoint lineage: which checkpoint a retrain continued from, and every snapshot a model has seen.

A retrain on a new snapshot starts from the warehouse's latest main-phase checkpoint of the same
preset (tasks/train.py), so a model's history is a chain of parents; `mrifoundry status` prints it
and the evaluation compares a checkpoint with its parent.
"""

from __future__ import annotations

from typing import Any

from warehouse.manifest import Manifest


def latest_main_checkpoint(m: Manifest, preset: str) -> dict[str, Any] | None:
    """The newest main-phase checkpoint of `preset` (a cooled-down one is an end point, not a base).

    Rows written before phases were recorded count as main-phase checkpoints.
    """
    rows = m.query(
        "SELECT * FROM checkpoints WHERE preset = ? AND coalesce(phase, 'main') = 'main' "
        "ORDER BY created_at DESC, checkpoint_id LIMIT 1",
        [preset],
    )
    return rows[0] if rows else None


def checkpoint_row(m: Manifest, checkpoint_id: str) -> dict[str, Any] | None:
    rows = m.query("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
    return rows[0] if rows else None


def checkpoint_by_path(m: Manifest, rel_path: str) -> dict[str, Any] | None:
    """The checkpoint row whose file is `rel_path` (warehouse-relative), newest first if several."""
    rows = m.query("SELECT * FROM checkpoints WHERE path = ? ORDER BY created_at DESC LIMIT 1", [rel_path])
    return rows[0] if rows else None


def latest_cooldown_of(m: Manifest, main_checkpoint_id: str) -> dict[str, Any] | None:
    """The newest cooled-down checkpoint made from `main_checkpoint_id`, if any."""
    rows = m.query(
        "SELECT * FROM checkpoints WHERE parent_checkpoint_id = ? AND phase = 'cooldown' "
        "ORDER BY created_at DESC, checkpoint_id LIMIT 1",
        [main_checkpoint_id],
    )
    return rows[0] if rows else None


def lineage(m: Manifest, checkpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The checkpoint, its parent, its parent's parent... (newest first; at most `limit`, and a
    cycle, which a hand-edited manifest could hold, stops the walk)."""
    rows = m.query(
        """
        WITH RECURSIVE chain(checkpoint_id, depth) AS (
            SELECT checkpoint_id, 0 FROM checkpoints WHERE checkpoint_id = ?
            UNION ALL
            SELECT c.parent_checkpoint_id, chain.depth + 1
            FROM chain JOIN checkpoints c ON c.checkpoint_id = chain.checkpoint_id
            WHERE c.parent_checkpoint_id IS NOT NULL AND chain.depth < ?
        )
        SELECT c.checkpoint_id, c.parent_checkpoint_id, c.preset, c.phase, c.snapshot_id, c.steps,
               c.final_loss, c.snapshots_seen, c.created_at, chain.depth
        FROM chain JOIN checkpoints c USING (checkpoint_id)
        ORDER BY chain.depth
        """,
        [checkpoint_id, limit - 1],
    )
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["checkpoint_id"] in seen:
            break
        seen.add(r["checkpoint_id"])
        out.append(r)
    return out
