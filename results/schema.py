"""Typed, flat schemas of a study's Parquet tables, and atomic writers for them.

The tables of a study folder (see results/README.md for every column):

- ``trials.parquet``: one row per trial (mining and fine-tuning), keyed by ``trial_id``;
- ``overlaps.parquet``: one row per (extraction, layer, factor pair);
- ``spectra.parquet``: one row per (extraction, layer, factor, singular value index);
- ``evidence.parquet``: claim 1's measures beside their nulls (attrsub.subspace.evidence): adapter
  overlaps within versus across factors with a permutation p, held-out energy, init
  overlap; per layer and over all layers;
- ``pareto.parquet`` (written by ``sweeps/search.py``): one row per Pareto-optimal trial of
  a multi-objective search, task error versus trainable parameters.

The trials schema has fixed columns plus one float64 column per metric a task reports
(``"test/pc_acc"`` -> ``test__pc_acc``), so it is built from the rows. Writes go to a
temporary file beside the target and are renamed over it, so a reader never sees half a
table; ``upsert_table`` replaces rows by key so a resumed study never duplicates a row.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from attrsub import storage
from attrsub.errors import ConfigError, DataError, StorageError
from attrsub.fsio import atomic_path
from attrsub.scenes.factors import FACTORS

if TYPE_CHECKING:
    import pandas as pd

STATUSES = ("ok", "failed", "stopped")
STAGES = ("mine", "finetune", "search")

_TRIAL_FIELDS: list[pa.Field] = [
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("study", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("axis", pa.string()),
    pa.field("task", pa.string()),
    pa.field("method", pa.string()),
    pa.field("factors", pa.string()),
    pa.field("group", pa.int64()),
    *(pa.field(f"rank_{a}", pa.int64()) for a in FACTORS),
    pa.field("rank", pa.int64()),
    pa.field("total_rank", pa.int64()),
    pa.field("ortho", pa.string()),
    pa.field("extraction", pa.string()),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("lr", pa.float64()),
    pa.field("steps", pa.int64()),
    pa.field("trainable_params", pa.int64()),
    pa.field("final_loss", pa.float64()),
    pa.field("main", pa.float64()),
    pa.field("wall_s", pa.float64()),
    pa.field("resumed_step", pa.int64()),
    pa.field("lora_a_change", pa.float64()),
    pa.field("update_norm", pa.float64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("base", pa.string()),
    pa.field("base_hash", pa.string()),
    pa.field("code_version", pa.string(), nullable=False),
]
TRIAL_COLUMNS = tuple(f.name for f in _TRIAL_FIELDS)

_MEASURES = [
    f"{prefix}{name}"
    for prefix in ("", "rand_")
    for name in (
        "col_angle_min", "col_angle_mean", "scale_inv_distance", "overlap",
        "row_angle_min", "row_angle_mean", "row_scale_inv_distance", "row_overlap",
    )
]
OVERLAPS_SCHEMA = pa.schema([
    pa.field("study", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("extraction", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("factor_a", pa.string(), nullable=False),
    pa.field("factor_b", pa.string(), nullable=False),
    pa.field("rank_a", pa.int64()),
    pa.field("rank_b", pa.int64()),
    pa.field("d_out", pa.int64()),
    pa.field("d_in", pa.int64()),
    *(pa.field(m, pa.float64()) for m in _MEASURES),
])

PARETO_SCHEMA = pa.schema([
    pa.field("study", pa.string(), nullable=False),
    pa.field("optuna_study", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("optuna_trial", pa.int64(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("objectives", pa.string(), nullable=False),
    pa.field("main", pa.float64(), nullable=False),
    pa.field("trainable_params", pa.int64(), nullable=False),
    pa.field("lr", pa.float64()),
    pa.field("steps", pa.int64()),
    pa.field("rank", pa.int64()),
    *(pa.field(f"rank_{a}", pa.int64()) for a in FACTORS),
    pa.field("factors", pa.string()),
    pa.field("total_rank", pa.int64()),
    pa.field("ortho", pa.string()),
    pa.field("extraction", pa.string()),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
])

EVIDENCE_SCHEMA = pa.schema([
    pa.field("study", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("extraction", pa.string(), nullable=False),
    pa.field("measure", pa.string(), nullable=False),
    pa.field("side", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("factor", pa.string(), nullable=False),
    pa.field("adapter", pa.string()),
    pa.field("within", pa.float64()),
    pa.field("cross", pa.float64()),
    pa.field("random", pa.float64()),
    pa.field("p_value", pa.float64()),
    pa.field("permutations", pa.int64()),
    pa.field("rank", pa.int64()),
    pa.field("dim", pa.float64()),
])

SPECTRA_SCHEMA = pa.schema([
    pa.field("study", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("extraction", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("factor", pa.string(), nullable=False),
    pa.field("index", pa.int64(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
    pa.field("rank", pa.int64()),
    pa.field("cliff_rank", pa.int64()),
    pa.field("adapters", pa.int64()),
    pa.field("irls_iterations", pa.int64()),
    pa.field("converged", pa.bool_()),
    pa.field("irls_weight_min", pa.float64()),
    pa.field("irls_weight_mean", pa.float64()),
    pa.field("irls_weight_max", pa.float64()),
])


# Columns older code wrote under the paper's word: a study made then still reads, and
# reports, with today's names (``read_table``, ``read_frame``). Cell values are unchanged.
LEGACY_COLUMNS = {"attribute": "factor", "attr_a": "factor_a", "attr_b": "factor_b"}


def current_columns(names: Sequence[str]) -> list[str]:
    """``names`` with each ``LEGACY_COLUMNS`` name replaced by today's (unless that is there)."""
    return [LEGACY_COLUMNS[n] if LEGACY_COLUMNS.get(n, n) not in names else n for n in names]


def metric_column(name: str) -> str:
    """The column a metric lands in: "/" becomes "__" (``test/pc_acc`` -> ``test__pc_acc``)."""
    col = name.replace("/", "__")
    if not col or (col in TRIAL_COLUMNS and col not in ("final_loss", "main")):
        raise ConfigError(f"metric {name!r} would collide with the fixed trials column {col!r}")
    return col


def trials_schema(rows: Iterable[Mapping[str, Any]] = ()) -> pa.Schema:
    """Fixed trial columns plus a float64 column for every other key the rows carry."""
    extra = sorted({k for r in rows for k in r if k not in TRIAL_COLUMNS})
    return pa.schema([*_TRIAL_FIELDS, *(pa.field(metric_column(k), pa.float64()) for k in extra)])


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
    names = set(schema.names)
    required = [f.name for f in schema if not f.nullable]
    for i, r in enumerate(rows):
        unknown = sorted(set(r) - names)
        if unknown:
            raise ConfigError(f"row {i} has columns not in the schema: {unknown}")
        missing = [c for c in required if r.get(c) is None]
        if missing:
            raise ConfigError(f"row {i} lacks required column(s) {missing}")
        if "status" in r and r["status"] not in STATUSES:
            raise ConfigError(f"row {i}: status {r['status']!r} is not one of {STATUSES}")


def _fs(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) for a URI such as s3://bucket/x or file:///x; (None, path) for a
    local path, which is written through a temporary file and renamed."""
    if storage.is_uri(path):
        return storage.resolve(path)
    return None, os.fspath(path)


def write_table(
    rows: Sequence[Mapping[str, Any]], schema: pa.Schema, path: str | os.PathLike[str]
) -> str:
    """Validate ``rows`` against ``schema`` and write them as Parquet, atomically.

    A failed write (full disk, no permission) raises StorageError and leaves the table as
    it was.
    """
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    _check_rows(rows, schema)
    table = pa.Table.from_pylist(rows, schema=schema)
    fs, p = _fs(path)
    try:
        if fs is None:
            with atomic_path(p) as tmp:
                pq.write_table(table, str(tmp))
            return p
        tmp = f"{p}.{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)
            raise
        return os.fspath(path)
    except OSError as exc:
        raise StorageError(
            f"cannot write results table {os.fspath(path)!r}: {exc}. Tables written before "
            f"are intact (writes are atomic); free space or fix permissions, then rerun "
            f"with --resume"
        ) from exc


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a table (empty when it does not exist yet), legacy columns renamed."""
    fs, p = _fs(path)
    if fs is None and not Path(p).is_file():
        return []
    if fs is not None and fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    try:
        table = pq.read_table(p, filesystem=fs)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"results table {os.fspath(path)!r} is unreadable: {exc}") from exc
    return table.rename_columns(current_columns(table.column_names)).to_pylist()


def read_frame(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A local table as a data frame, legacy columns renamed; raises what pandas raises."""
    import pandas as pd

    df = pd.read_parquet(path)
    df.columns = current_columns(list(df.columns))
    return df


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON record (a study's ``study.json``) at a local path or URI; None when absent."""
    if not storage.exists(path):
        return None
    try:
        record = json.loads(storage.read_bytes(path).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{os.fspath(path)!r} is unreadable: {exc}") from exc
    if not isinstance(record, dict):
        raise DataError(f"{os.fspath(path)!r} is not a JSON object")
    return record


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write a JSON record atomically (an object store's put is atomic by itself)."""
    storage.write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def upsert_table(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    schema: pa.Schema | Callable[[list[dict[str, Any]]], pa.Schema],
    key: str = "trial_id",
) -> int:
    """Merge ``rows`` into the table at ``path``: a row whose ``key`` exists replaces it.

    ``schema`` may be a function of all rows (the trials schema grows with the metrics).
    Returns the row count written.
    """
    new = {r[key]: dict(r) for r in rows}
    old = [
        {k: v for k, v in r.items() if v is not None}
        for r in read_table(path)
        if r.get(key) not in new
    ]
    merged = old + list(new.values())
    write_table(merged, schema(merged) if callable(schema) else schema, path)
    return len(merged)


def study_rows(
    pairwise_rows: Iterable[Mapping[str, Any]],
    *,
    study: str,
    code_version: str,
    seed: int,
    extraction: str,
) -> list[dict[str, Any]]:
    """Rows of a bank analysis (``subspace.disentangle.pairwise``,
    ``subspace.evidence.evidence_rows``) with the study's identifying columns added."""
    ident = {"study": study, "code_version": code_version, "seed": seed, "extraction": extraction}
    return [{**ident, **r} for r in pairwise_rows]


def spectra_rows(
    bank: Any, *, study: str, code_version: str, seed: int, extraction: str
) -> list[dict[str, Any]]:
    """One row per singular value of every (factor, layer) subspace of an attrsub Bank."""
    from attrsub.subspace.extract import ExtractConfig, select_rank

    cliff = ExtractConfig(rank="cliff-gap")
    out: list[dict[str, Any]] = []
    for factor, layers in bank.subspaces.items():
        adapters = len(bank.sources.get(factor, []))
        for layer, sub in layers.items():
            w = sub.weights.double()
            common = {
                "study": study, "code_version": code_version, "seed": seed,
                "extraction": extraction, "layer": layer, "factor": factor,
                "rank": sub.rank, "cliff_rank": select_rank(sub.spectrum, cliff),
                "adapters": adapters, "irls_iterations": sub.iterations,
                "converged": bool(sub.converged),
                "irls_weight_min": float(w.min()) if w.numel() else None,
                "irls_weight_mean": float(w.mean()) if w.numel() else None,
                "irls_weight_max": float(w.max()) if w.numel() else None,
            }
            for i, v in enumerate(sub.spectrum.double().tolist()):
                out.append({**common, "index": i, "value": float(v)})
    return out
