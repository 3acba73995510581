"""Import downstream labels from a clinical-registry CSV keyed by raw PatientID.

The raw ID is pseudonymised with the warehouse key on the way in, so labels join the curated
volumes by subject pseudonym and the raw ID never reaches the manifest.
"""

from __future__ import annotations

import csv
from pathlib import Path

from imaging.deid import Pseudonymizer
from tasks.context import WarehouseContext
from warehouse.manifest import now

LABEL_COLUMNS = ("lesion", "enlarged_ventricles")


def import_labels(ctx: WarehouseContext, csv_path: Path, p: Pseudonymizer) -> int:
    """Upsert one row per subject; returns how many subjects were imported."""
    rows = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"PatientID", *LABEL_COLUMNS} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"labels file {csv_path} lacks column(s) {sorted(missing)}; "
                f"expected PatientID,{','.join(LABEL_COLUMNS)} with 0/1 values"
            )
        for n, r in enumerate(reader, start=2):
            try:
                values = {c: int(r[c]) for c in LABEL_COLUMNS}
            except ValueError:
                raise ValueError(f"{csv_path}:{n}: label values must be 0 or 1") from None
            rows.append({"subject_id": p.subject(r["PatientID"].strip()), **values, "updated_at": now()})
    return ctx.manifest.upsert("labels", rows)
