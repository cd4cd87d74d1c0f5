"""Results tables of a study (trials, overlaps, spectra): their schemas and atomic writers."""

from results.schema import (
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    STATUSES,
    metric_column,
    overlap_rows,
    read_table,
    spectra_rows,
    trials_schema,
    upsert_table,
    write_table,
)

__all__ = [
    "OVERLAPS_SCHEMA",
    "SPECTRA_SCHEMA",
    "STATUSES",
    "metric_column",
    "overlap_rows",
    "read_table",
    "spectra_rows",
    "trials_schema",
    "upsert_table",
    "write_table",
]
