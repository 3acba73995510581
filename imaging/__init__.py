"""Pure DICOM and neuroimaging code: the ground floor of MRI Foundry (docs/architecture.md).

Header reading, series grouping and geometry checks, classification, de-identification, conversion,
registration, skull-strip backends, templates and the QC metric math live here as plain functions on
files, arrays and images. Nothing in this package knows about Prefect, DuckDB or the model, so it can
be reused (and tested) without a warehouse or an orchestrator; an import-linter contract keeps it so.
"""
