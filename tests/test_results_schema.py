"""Results tables: schemas, atomic writes, upsert by trial_id, bad rows."""

from __future__ import annotations

import math
import os
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attrsub.errors import ConfigError, StorageError
from results.claims import claims
from results.report.load import load_study
from results.schema import (
    LEGACY_COLUMNS,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    TRIAL_COLUMNS,
    metric_column,
    read_frame,
    read_table,
    trials_schema,
    upsert_table,
    write_table,
)


def _row(tid: str, **kw: object) -> dict:
    return {"trial_id": tid, "study": "s", "stage": "finetune", "seed": 0, "status": "ok",
            "code_version": "v", **kw}


def test_metric_column_flattens_and_refuses_collisions() -> None:
    assert metric_column("test/pc_acc") == "test__pc_acc"
    assert metric_column("main") == "main"
    with pytest.raises(ConfigError, match="collide"):
        metric_column("status")


def test_trials_schema_grows_with_metrics() -> None:
    schema = trials_schema([_row("a", test__pc_acc=0.5)])
    assert schema.names[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    assert str(schema.field("test__pc_acc").type) == "double"


def test_upsert_replaces_by_trial_id(tmp_path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_table([_row("a", main=1.0), _row("b", status="failed", error="boom")], path,
                 trials_schema)
    upsert_table([_row("a", main=2.0, test__pc_acc=0.3)], path, trials_schema)
    df = pd.read_parquet(path)
    assert sorted(df.trial_id) == ["a", "b"]
    a = df.set_index("trial_id").loc["a"]
    assert a["main"] == 2.0 and a["test__pc_acc"] == pytest.approx(0.3)
    assert df.set_index("trial_id").loc["b", "error"] == "boom"
    assert not list(tmp_path.glob(".*tmp"))


def test_a_failed_write_raises_storage_error_and_keeps_the_table(tmp_path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_table([_row("a", main=1.0)], path, trials_schema)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's owner-only 0600
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write results table .*--resume"):
        write_table([_row("b")], trials_schema(), blocked / "trials.parquet")
    assert [r["trial_id"] for r in read_table(path)] == ["a"]  # the old table is intact


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_nonfinite_becomes_null(tmp_path) -> None:
    path = tmp_path / "t.parquet"
    write_table([_row("a", final_loss=math.nan)], trials_schema(), path)
    assert read_table(path)[0]["final_loss"] is None


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"nope": 1}, "not in the schema"),
        ({"status": "weird"}, "status"),
        ({"study": None}, "required"),
    ],
)
def test_bad_rows_are_refused(tmp_path, row: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        write_table([{**_row("a"), **row}], trials_schema(), tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_overlap_and_spectra_schemas_write(tmp_path) -> None:
    ident = {"study": "s", "code_version": "v", "seed": 0, "extraction": "irls", "layer": "l"}
    write_table([{**ident, "factor_a": "texture", "factor_b": "camera", "overlap": 0.1}],
                OVERLAPS_SCHEMA, tmp_path / "o.parquet")
    write_table([{**ident, "factor": "texture", "index": 0, "value": 1.0, "cliff_rank": 1}],
                SPECTRA_SCHEMA, tmp_path / "s.parquet")
    assert pd.read_parquet(tmp_path / "o.parquet").overlap.iloc[0] == pytest.approx(0.1)
    assert pd.read_parquet(tmp_path / "s.parquet").cliff_rank.iloc[0] == 1


def test_tables_written_with_the_old_attribute_columns_read_with_factor(tmp_path) -> None:
    """Studies made before the rename still read: ``attribute`` -> ``factor`` (evidence,
    spectra), ``attr_a``/``attr_b`` -> ``factor_a``/``factor_b`` (overlaps); values kept."""
    ident = {"study": "s", "code_version": "v", "seed": 0, "extraction": "irls", "layer": "l"}
    old = {
        "evidence": {**ident, "measure": "overlap", "side": "col", "attribute": "all",
                     "adapter": "x", "within": 0.6, "cross": 0.1, "random": 0.05,
                     "p_value": 0.001, "permutations": 99},
        "spectra": {**ident, "attribute": "texture", "index": 0, "value": 1.0},
        "overlaps": {**ident, "attr_a": "texture", "attr_b": "camera", "overlap": 0.1},
    }
    for name, row in old.items():
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist([_row("a")]), tmp_path / "trials.parquet")
    new = {name: {LEGACY_COLUMNS.get(k, k): v for k, v in row.items()}
           for name, row in old.items()}
    assert new["spectra"]["factor"] == "texture" and new["overlaps"]["factor_b"] == "camera"
    for name, row in new.items():
        assert read_table(tmp_path / f"{name}.parquet") == [row]
        assert read_frame(tmp_path / f"{name}.parquet").to_dict("records") == [row]
    study = load_study(tmp_path)
    assert study.evidence["factor"].tolist() == ["all"]
    assert study.spectra["factor"].tolist() == ["texture"]
    assert study.overlaps[["factor_a", "factor_b"]].values.tolist() == [["texture", "camera"]]
    assert not [m for m in study.missing if re.search(r"`factor(_a|_b)?`", m)]
    # claim 1 reads the old evidence table by its new column name (no "lacks column(s)")
    assert "lacks column" not in claims(tmp_path)[0].evidence
