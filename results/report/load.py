"""A study folder's tables as data frames that always have the columns the report reads.

An interrupted or older study lacks tables and columns; ``load_study`` fills them with nulls
and records each gap in ``StudyData.missing``, so the report names what is absent instead of
failing on it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results.report.names import config_label
from results.schema import (
    EVIDENCE_SCHEMA,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    TRIAL_COLUMNS,
    read_frame,
)

TRIAL_NEEDED = ("stage", "axis", "task", "method", "factors", "rank", "total_rank", "ortho",
                "extraction", "seed", "trainable_params", "main", "wall_s", "status",
                "code_version")


@dataclass
class StudyData:
    """The tables of one study folder, with every missing table/column noted in ``missing``."""

    root: Path
    trials: pd.DataFrame
    overlaps: pd.DataFrame
    spectra: pd.DataFrame
    evidence: pd.DataFrame
    pareto: pd.DataFrame | None
    meta: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read_table(path: Path, expected: Sequence[str], missing: list[str],
                optional: bool = False) -> pd.DataFrame | None:
    """A table with every expected column present (all-null when absent), or None if unreadable.

    Absent tables and columns are recorded in ``missing`` (an optional table only when it is
    present but damaged), so later code never has to check for them.
    """
    if not path.is_file():
        if not optional:
            missing.append(f"`{path.name}` is missing")
        return None
    try:
        df = read_frame(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        missing.append(f"`{path.name}` is unreadable: {type(exc).__name__}: {exc}")
        return None
    absent = [c for c in expected if c not in df.columns]
    if absent:
        missing.append(f"`{path.name}` lacks column(s) {', '.join(f'`{c}`' for c in absent)}")
        for c in absent:
            df[c] = np.nan
    if df.empty:
        missing.append(f"`{path.name}` has no rows")
    return df


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def load_study(study_dir: str | os.PathLike[str]) -> StudyData:
    """Read a study folder's tables and ``study.json``, tolerating any of them being absent."""
    root = Path(study_dir)
    missing: list[str] = []
    if not root.is_dir():
        missing.append(f"the study folder `{root}` does not exist")
    trials = _read_table(root / "trials.parquet", TRIAL_NEEDED, missing)
    overlaps = _read_table(root / "overlaps.parquet", OVERLAPS_SCHEMA.names, missing)
    spectra = _read_table(root / "spectra.parquet", SPECTRA_SCHEMA.names, missing)
    evidence = _read_table(root / "evidence.parquet", EVIDENCE_SCHEMA.names, missing)
    pareto = _read_table(root / "pareto.parquet", ("trainable_params", "main"), missing,
                         optional=True)
    meta: dict[str, Any] = {}
    meta_path = root / "study.json"
    if meta_path.is_file():
        try:
            loaded = json.loads(meta_path.read_text())
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as exc:
            missing.append(f"`study.json` is unreadable: {exc}")
    trials = _prepare_trials(trials if trials is not None else _empty(TRIAL_COLUMNS), missing)
    return StudyData(
        root=root, trials=trials,
        overlaps=overlaps if overlaps is not None else _empty(OVERLAPS_SCHEMA.names),
        spectra=spectra if spectra is not None else _empty(SPECTRA_SCHEMA.names),
        evidence=evidence if evidence is not None else _empty(EVIDENCE_SCHEMA.names),
        pareto=pareto, meta=meta, missing=missing,
    )


def _n_factors(factors: Any) -> int:
    return len([f for f in str(factors).split("+") if f]) if isinstance(factors, str) else 0


def _width(row: pd.Series) -> float:
    """Basis width D (reduced/psv/random) or LoRA rank; older tables lack ``total_rank``."""
    total, rank, method = row["total_rank"], row["rank"], row["method"]
    if pd.notna(total):
        return float(total)
    if pd.isna(rank):
        return math.nan
    if method == "reduced":
        return float(rank) * max(_n_factors(row["factors"]), 1)
    return float(rank)


def _prepare_trials(t: pd.DataFrame, missing: list[str]) -> pd.DataFrame:
    """Numeric columns coerced, plus ``width`` (D or r) and ``label`` (a readable config name)."""
    t = t.copy()
    for c in ("rank", "total_rank", "seed", "trainable_params", "main", "wall_s"):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    for c in ("stage", "axis", "task", "method", "factors", "ortho", "extraction", "status",
              "code_version"):
        t[c] = t[c].astype(object).where(t[c].notna(), None)
    red = t[(t["method"] == "reduced") & (t["stage"] == "finetune")]
    if len(red) and red["total_rank"].isna().all():
        missing.append("`trials.parquet` has no `total_rank` values (an older schema): the "
                       "basis width D of reduced trials is derived as rank x factors")
    t["width"] = t.apply(_width, axis=1) if len(t) else pd.Series(dtype=float)
    t["label"] = t.apply(config_label, axis=1) if len(t) else pd.Series(dtype=object)
    return t
