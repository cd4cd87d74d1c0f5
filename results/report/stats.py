"""The numbers behind the report's tables and figures: means and 95% CIs over seeds per
configuration, each trial's change against no fine-tuning on its seed, the ablation tables
and the Pareto front.

Every mean and CI comes from ``results.claims.mean_ci``, so a table, a figure and a claim's
verdict never disagree on one configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from results.claims import mean_ci, task_info
from results.report.load import StudyData


def aggregate(df: pd.DataFrame, by: str | list[str], value: str = "main") -> pd.DataFrame:
    """One row per group: mean, ci, n (over seeds), and the first trainable_params and width."""
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=False):
        mean, ci, n = mean_ci(g[value].tolist())
        keys = key if isinstance(key, tuple) else (key,)
        names = by if isinstance(by, list) else [by]
        rows.append({**dict(zip(names, keys, strict=True)), "mean": mean, "ci": ci, "n": n,
                     "params": g["trainable_params"].iloc[0], "width": g["width"].iloc[0],
                     "method": g["method"].iloc[0], "label": g["label"].iloc[0]})
    cols = [*(by if isinstance(by, list) else [by]), "mean", "ci", "n", "params", "width",
            "method", "label"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(cols)))


def finetune_ok(study: StudyData) -> pd.DataFrame:
    """Successful fine-tuning trials, with ``delta``: main minus no-fine-tuning at the same seed.

    Seeds change the task's scenes, so the spread over seeds of the raw metric is far larger
    than the differences between methods; pairing each trial with the untouched base on the
    same seed removes that shared variation.
    """
    t = study.trials
    ft = t[(t["stage"] == "finetune") & (t["status"] == "ok") & t["main"].notna()
           & t["task"].notna()].copy()
    base = ft[ft["method"] == "none"].groupby(["task", "seed"])["main"].mean().to_dict()
    ft["delta"] = [m - base.get((task, seed), math.nan)
                   for m, task, seed in zip(ft["main"], ft["task"], ft["seed"], strict=True)]
    return ft


def _default_reduced(ft: pd.DataFrame) -> pd.DataFrame:
    """The reduced method's main-axis trials: the point every ablation axis varies around."""
    return ft[(ft["method"] == "reduced") & (ft["axis"] == "main")]


def tasks_of(ft: pd.DataFrame) -> list[str]:
    """The tasks present, by name: the order of every panel and table."""
    return sorted(ft["task"].dropna().unique().tolist())


def _ablation_rows(ft: pd.DataFrame, task: str, axis: str) -> pd.DataFrame:
    """The trials of one ablation axis plus the default reduced trials it varies around."""
    td = ft[ft["task"] == task]
    return pd.concat([td[(td["method"] == "reduced") & (td["axis"] == axis)],
                      _default_reduced(td)])


def ablation_table(ft: pd.DataFrame, axis: str, key: str) -> pd.DataFrame:
    """Per task and value of ``key``: main and paired change vs no fine-tuning, best first."""
    out = []
    for task in tasks_of(ft):
        rows = _ablation_rows(ft, task, axis)
        if rows.empty:
            continue
        agg = aggregate(rows, key, "main")
        paired = aggregate(rows, key, "delta").set_index(key)
        agg["delta"] = agg[key].map(paired["mean"])
        agg["delta_ci"] = agg[key].map(paired["ci"])
        agg["task"] = task
        agg["default"] = agg[key].isin(_default_reduced(ft[ft["task"] == task])[key])
        _, lower = task_info(task)
        rank_by = "delta" if agg["delta"].notna().all() else "mean"
        out.append(agg.sort_values(rank_by, ascending=lower))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def pareto_front(x: Sequence[float], y: Sequence[float], lower: bool = True) -> list[int]:
    """Indices of the non-dominated points (fewer parameters and a better metric), by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i] if lower else -y[i]))
    front: list[int] = []
    best = math.inf
    for i in order:
        score = y[i] if lower else -y[i]
        if np.isfinite(score) and score < best:
            front.append(i)
            best = score
    return front


def coverage(t: pd.DataFrame) -> list[str]:
    """Configurations with fewer seeds than the study's others (a partial study)."""
    ft = t[(t["stage"] == "finetune")]
    if ft.empty:
        return []
    ok = ft[ft["status"] == "ok"]
    n_seeds = int(ok.groupby(["task", "label"], dropna=False)["seed"].nunique().max())
    notes = []
    for (task, label), g in ok.groupby(["task", "label"], dropna=False):
        have = g["seed"].nunique()
        if have < n_seeds:
            notes.append(f"`{task}` / {label}: {have} of {n_seeds} seeds")
    return notes
