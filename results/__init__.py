"""Results tables of a study (trials, overlaps, spectra, evidence): schemas and atomic writers."""

from results.schema import (
    EVIDENCE_SCHEMA,
    LEGACY_COLUMNS,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    STATUSES,
    metric_column,
    read_frame,
    read_table,
    spectra_rows,
    study_rows,
    trials_schema,
    upsert_table,
    write_table,
)

__all__ = [
    "EVIDENCE_SCHEMA",
    "LEGACY_COLUMNS",
    "OVERLAPS_SCHEMA",
    "SPECTRA_SCHEMA",
    "STATUSES",
    "metric_column",
    "read_frame",
    "read_table",
    "spectra_rows",
    "study_rows",
    "trials_schema",
    "upsert_table",
    "write_table",
]
