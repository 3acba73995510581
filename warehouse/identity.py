"""The warehouse's own identity: a random id, made once and kept in the manifest's `meta` table.

Events and deployment triggers name the warehouse they belong to by this id, so two warehouses
served by one Prefect server never trigger each other's runs. It is random (never derived from a
path, which may name a hospital department or a patient's folder), so it is safe in any log, event
or deployment name, and it survives moving the warehouse directory.
"""

from __future__ import annotations

import re
import secrets

from warehouse.manifest import WRITE_LOCK, Manifest

WAREHOUSE_ID_KEY = "warehouse_id"
_ID = re.compile(r"^[0-9a-f]{12}$")


def new_warehouse_id() -> str:
    """12 hex digits (48 random bits): short enough for a deployment name, unique across a server."""
    return secrets.token_hex(6)


def read_warehouse_id(m: Manifest) -> str | None:
    """The stored id, or None for a warehouse made before ids existed (or not initialised)."""
    rows = m.query("SELECT value FROM meta WHERE key = ?", [WAREHOUSE_ID_KEY])
    return rows[0]["value"] if rows else None


def ensure_warehouse_id(m: Manifest) -> str:
    """Return the warehouse id, creating it the first time; concurrent callers all get the same one.

    `ON CONFLICT DO NOTHING` makes the first writer win, and every caller reads back what is stored.
    """
    with WRITE_LOCK, m.connect() as con:
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT DO NOTHING", [WAREHOUSE_ID_KEY, new_warehouse_id()])
        value = con.execute("SELECT value FROM meta WHERE key = ?", [WAREHOUSE_ID_KEY]).fetchone()[0]
    if not _ID.match(value):
        raise ValueError(
            f"warehouse id {value!r} in {m.path} (meta table) is not 12 hex digits; "
            "delete that meta row to let the next run make a new one"
        )
    return value


def resource_id(warehouse_id: str) -> str:
    """The Prefect event resource id of a warehouse: what its events carry and its triggers match."""
    return f"mrifoundry.warehouse.{warehouse_id}"
