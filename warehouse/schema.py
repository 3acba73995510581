"""The one registry of manifest tables and the shard record layout.

Every table the pipeline writes is declared here, so the DuckDB DDL, the upsert helpers and the
tests all read the same definition. Columns never hold raw patient identifiers: subjects, studies
and series are keyed by keyed-HMAC pseudonyms produced at ingest.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Table:
    """A manifest table: ordered columns and the primary key that makes reruns idempotent."""

    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]
    doc: str

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def ddl(self) -> str:
        cols = ",\n  ".join(f"{name} {typ}" for name, typ in self.columns)
        if not self.primary_key:  # append-only tables written set-based (an index would dominate bulk inserts)
            return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols}\n)"
        pk = ", ".join(self.primary_key)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols},\n  PRIMARY KEY ({pk})\n)"


def _t(name: str, pk: tuple[str, ...], doc: str, *cols: tuple[str, str]) -> Table:
    return Table(name=name, columns=tuple(cols), primary_key=pk, doc=doc)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _t(
            "series",
            ("series_key",),
            "One row per DICOM series seen; state tracks how far it got and why it stopped.",
            ("series_key", "VARCHAR"),
            ("subject_id", "VARCHAR"),
            ("study_id", "VARCHAR"),
            ("sop_hash", "VARCHAR"),
            ("pipeline_version", "VARCHAR"),
            ("n_instances", "INTEGER"),
            ("modality", "VARCHAR"),
            ("manufacturer", "VARCHAR"),
            ("model_name", "VARCHAR"),
            ("field_strength", "DOUBLE"),
            ("series_description", "VARCHAR"),
            ("series_number", "INTEGER"),
            ("study_date_shifted", "VARCHAR"),
            ("state", "VARCHAR"),
            ("reason", "VARCHAR"),
            ("detail", "VARCHAR"),
            ("run_id", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "rejected_files",
            ("source_id", "relpath"),
            "Files that could not be read as DICOM, with the reason; paths are relative to the source.",
            ("source_id", "VARCHAR"),
            ("relpath", "VARCHAR"),
            ("reason", "VARCHAR"),
            ("detail", "VARCHAR"),
            ("run_id", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "classification",
            ("series_key",),
            "Sequence class per series with the rule-based explanation.",
            ("series_key", "VARCHAR"),
            ("label", "VARCHAR"),
            ("contrast_enhanced", "BOOLEAN"),
            ("confidence", "DOUBLE"),
            ("explanation", "VARCHAR"),
            ("needs_review", "BOOLEAN"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "volumes",
            ("volume_id",),
            "One preprocessed volume per curated series; paths are relative to the warehouse.",
            ("volume_id", "VARCHAR"),
            ("series_key", "VARCHAR"),
            ("subject_id", "VARCHAR"),
            ("study_id", "VARCHAR"),
            ("label", "VARCHAR"),
            ("manufacturer", "VARCHAR"),
            ("model_name", "VARCHAR"),
            ("native_path", "VARCHAR"),
            ("registered_path", "VARCHAR"),
            ("mask_path", "VARCHAR"),
            ("fov_path", "VARCHAR"),
            ("native_shape", "INTEGER[]"),
            ("native_spacing", "DOUBLE[]"),
            ("converter", "VARCHAR"),
            ("similarity", "DOUBLE"),
            ("fov_coverage", "DOUBLE"),
            ("skullstrip_backend", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "qc",
            ("volume_id",),
            "Automatic QC metrics and decision per volume (ratings, when present, override it).",
            ("volume_id", "VARCHAR"),
            ("decision", "VARCHAR"),
            ("reasons", "VARCHAR[]"),
            ("snr", "DOUBLE"),
            ("cnr", "DOUBLE"),
            ("brain_volume_ml", "DOUBLE"),
            ("fov_coverage", "DOUBLE"),
            ("similarity", "DOUBLE"),
            ("metrics_json", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
            # Added for issue 5 (appended, so old warehouses migrate to the same column order):
            ("snr_wm", "DOUBLE"),
            ("cjv", "DOUBLE"),
            ("efc", "DOUBLE"),
            ("fber", "DOUBLE"),
            ("wm2max", "DOUBLE"),
            ("inu", "DOUBLE"),
            ("qi1", "DOUBLE"),
            ("mask_mni_dice", "DOUBLE"),
            ("outlier_score", "DOUBLE"),  # max bad-direction robust z in its group (tasks.qc_groups)
        ),
        _t(
            "ratings",
            ("volume_id",),
            "Human QC ratings; they win over the automatic decision and survive reruns.",
            ("volume_id", "VARCHAR"),
            ("rating", "VARCHAR"),
            ("rater", "VARCHAR"),
            ("tags", "VARCHAR[]"),
            ("note", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "labels",
            ("subject_id",),
            "Downstream labels per pseudonymised subject (imported from a clinical registry CSV).",
            ("subject_id", "VARCHAR"),
            ("lesion", "INTEGER"),
            ("enlarged_ventricles", "INTEGER"),
            ("updated_at", "TIMESTAMP"),
            # Added for issue 10 (benchmark cohort targets; NULL for registry-imported labels):
            ("age", "DOUBLE"),
            ("lesion_count", "INTEGER"),
            ("lesion_load_ml", "DOUBLE"),
            ("survival_time", "DOUBLE"),
            ("event", "INTEGER"),
        ),
        _t(
            "subject_splits",
            ("scheme", "subject_id"),
            "Fixed patient-level splits (issue 10): scheme 'random' or 'held_out_site'; split "
            "train/val/test, 'pool' (unlabelled pretraining) or 'unused'.",
            ("scheme", "VARCHAR"),
            ("subject_id", "VARCHAR"),
            ("split", "VARCHAR"),
            ("site", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
        _t(
            "cohorts",
            ("cohort_id",),
            "Generated benchmark cohorts (issue 10): which snapshot is the labelled set, which the pool.",
            ("cohort_id", "VARCHAR"),
            ("seed", "INTEGER"),
            ("n_labelled", "INTEGER"),
            ("n_pool", "INTEGER"),
            ("labelled_snapshot_id", "VARCHAR"),
            ("pool_snapshot_id", "VARCHAR"),
            ("config_json", "VARCHAR"),
            ("created_at", "TIMESTAMP"),
        ),
        _t(
            "shards",
            ("shard_id",),
            "Immutable, content-addressed Arrow IPC shard files.",
            ("shard_id", "VARCHAR"),
            ("path", "VARCHAR"),
            ("n_volumes", "INTEGER"),
            ("bytes", "BIGINT"),
            ("created_at", "TIMESTAMP"),
        ),
        _t(
            "shard_volumes",
            ("volume_id",),
            "Where each sharded volume lives: shard and record-batch index.",
            ("volume_id", "VARCHAR"),
            ("shard_id", "VARCHAR"),
            ("batch_index", "INTEGER"),
        ),
        _t(
            "snapshots",
            ("snapshot_id",),
            "A frozen set of volumes a model trains on; the id is a hash of the member ids.",
            ("snapshot_id", "VARCHAR"),
            ("n_volumes", "INTEGER"),
            ("created_at", "TIMESTAMP"),
            ("seq", "BIGINT"),  # commit order; membership spans refer to it (warehouse/snapshots.py)
        ),
        _t(
            "snapshot_spans",
            (),  # unique on (volume_id, first_seq) by construction; no index: 1.5 M-row commits stay seconds
            "Snapshot membership stored once per unbroken run of snapshots (last_seq NULL: still in the newest); "
            "the view snapshot_volumes(snapshot_id, volume_id) lists the members of each snapshot.",
            ("volume_id", "VARCHAR"),
            ("first_seq", "BIGINT"),
            ("last_seq", "BIGINT"),
        ),
        _t(
            "runs",
            ("run_id",),
            "Every flow run that touched the warehouse: running, completed, failed (with the error) or interrupted.",
            ("run_id", "VARCHAR"),
            ("flow", "VARCHAR"),
            ("status", "VARCHAR"),
            ("started_at", "TIMESTAMP"),
            ("finished_at", "TIMESTAMP"),
            ("params_json", "VARCHAR"),
            ("summary_json", "VARCHAR"),
            # Lifecycle (tasks/lifecycle.py): who runs it, whether it is alive, and why it stopped.
            ("host", "VARCHAR"),
            ("pid", "INTEGER"),
            ("heartbeat_at", "TIMESTAMP"),
            ("error", "VARCHAR"),
        ),
        _t(
            "checkpoints",
            ("checkpoint_id",),
            "Pretrained checkpoints with the snapshot and code version they came from.",
            ("checkpoint_id", "VARCHAR"),
            ("run_id", "VARCHAR"),
            ("snapshot_id", "VARCHAR"),
            ("preset", "VARCHAR"),
            ("path", "VARCHAR"),
            ("steps", "INTEGER"),
            ("final_loss", "DOUBLE"),
            ("code_version", "VARCHAR"),
            ("created_at", "TIMESTAMP"),
            # Issue 13 (lineage, warehouse/lineage.py): main or cooldown; the checkpoint this one continued
            # from (NULL: trained from scratch); every snapshot it has trained on, oldest first.
            ("phase", "VARCHAR"),
            ("parent_checkpoint_id", "VARCHAR"),
            ("snapshots_seen", "VARCHAR[]"),
        ),
        _t(
            "evaluations",
            ("run_id", "task", "encoder"),
            "Downstream probe results: the pretrained encoder beside a randomly initialised one.",
            ("run_id", "VARCHAR"),
            ("checkpoint_id", "VARCHAR"),
            ("task", "VARCHAR"),
            ("encoder", "VARCHAR"),
            ("metric", "VARCHAR"),
            ("value", "DOUBLE"),
            ("ci_low", "DOUBLE"),
            ("ci_high", "DOUBLE"),
            ("n_subjects", "INTEGER"),
            ("n_volumes", "INTEGER"),
            ("created_at", "TIMESTAMP"),
            ("note", "VARCHAR"),  # issue 10: why no value is shown (small n), in words
        ),
        _t(
            "class_reviews",
            ("series_key",),
            "Reviewers' sequence-class labels; they win over the automatic classification and survive reruns.",
            ("series_key", "VARCHAR"),
            ("label", "VARCHAR"),
            ("reviewer", "VARCHAR"),
            ("note", "VARCHAR"),
            ("updated_at", "TIMESTAMP"),
        ),
    )
}

# Shard record layout (one Arrow record batch per volume). Kept as plain tuples so that importing
# the registry does not import pyarrow; warehouse.shards turns it into a pyarrow schema.
SHARD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("volume_id", "string"),
    ("subject_id", "string"),
    ("label", "string"),
    ("shape", "list<int32>"),
    ("spacing", "list<float32>"),
    ("affine", "list<float64>"),
    ("dtype", "string"),
    ("data", "binary"),
    ("mask", "binary"),
)


def table(name: str) -> Table:
    """Look up a table, naming the valid ones when the name is wrong."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown manifest table {name!r}; valid tables: {', '.join(sorted(TABLES))}") from None
