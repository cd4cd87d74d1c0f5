"""The study report: ``report.md`` plus PNG figures, written into a study folder.

``python -m results.report STUDY_DIR`` (or ``write_report(study_dir)`` from a driver) reads the
study's Parquet tables (``trials``, ``overlaps``, ``spectra``, ``evidence``; ``pareto`` and
``study.json`` when present) and writes what a researcher reads instead of raw Parquet: the
method x task tables, a verdict on each of the paper's four claims (``results.claims``) and
the seed-paired differences behind them, the paper's layout beside the paper's own figures,
task error versus basis rank and
versus trainable parameters, the reduced method's ablations (attribute subsets,
orthogonalisation, extraction), the disentanglement of the attribute subspaces against random
subspaces, and their singular spectra. An interrupted study still gets a report: every table,
column and figure that is missing is named in the report instead of failing it.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display,
no global state), so the report is safe to build inside a Ray driver or a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator, ScalarFormatter

from attrsub.cli import RATE, OneLineParser
from results.claims import (
    Claim,
    choose_extraction,
    claims,
    fmt_difference,
    mean_ci,
    paired_differences,
)
from results.schema import (
    ATTRIBUTES,
    EVIDENCE_SCHEMA,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    TRIAL_COLUMNS,
)

REPORT_NAME = "report.md"
FIGURES = {
    "rank": "fig-rank.png",
    "params": "fig-params.png",
    "subsets": "fig-subsets.png",
    "ortho": "fig-ortho.png",
    "extraction": "fig-extraction.png",
    "disentanglement": "fig-disentanglement.png",
    "disentanglement_depth": "fig-disentanglement-depth.png",
    "spectra": "fig-spectra.png",
}
METHOD_ORDER = ("none", "full", "lora", "pissa", "psv", "random", "reduced")
METHOD_COLORS = {
    "none": "#7f7f7f", "full": "#1f77b4", "lora": "#ff7f0e", "pissa": "#2ca02c",
    "psv": "#9467bd", "random": "#8c564b", "reduced": "#d62728",
}
ATTR_COLORS = {"texture": "#1f77b4", "geometry": "#ff7f0e", "camera": "#2ca02c",
               "lighting": "#9467bd"}
# Metric name -> (readable name, unit, lower is better).
METRICS = {
    "pc_acc": ("point-cloud Acc", "scene units", True),
    "pc_comp": ("point-cloud Comp", "scene units", True),
    "pc_nc": ("normal consistency", "mean |cos|", False),
    "depth_absrel": ("depth AbsRel", "ratio", True),
    "depth_delta1": ("depth δ<1.25", "fraction", False),
    "spoof_acc": ("spoof-detection accuracy", "fraction", False),
    "cam_rra15": ("camera RRA@15", "fraction", False),
    "cam_rta15": ("camera RTA@15", "fraction", False),
    "cam_auc30": ("camera AUC@30", "fraction", False),
}
SPLITS = {"test": "test", "in_domain": "in-domain", "cross_domain": "cross-domain",
          "gap": "gap (cross - in)", "train": "train"}
# The per-task columns of the paper-layout tables: (column, short header).
TASK_LAYOUT = {
    "print_attack": [("test__pc_acc", "Acc"), ("test__pc_comp", "Comp"), ("test__pc_nc", "NC"),
                     ("test__depth_absrel", "AbsRel"), ("test__depth_delta1", "δ1"),
                     ("test__spoof_acc", "spoof acc")],
    "cross_domain": [("in_domain__pc_acc", "in-domain Acc"), ("in_domain__pc_nc", "in-domain NC"),
                     ("cross_domain__pc_acc", "cross Acc"), ("cross_domain__pc_nc", "cross NC"),
                     ("gap__pc_acc", "Acc gap")],
}
ABLATION_AXES = ("ranks", "subsets", "ortho", "extraction")
# The paper's own figures (Jiang et al., "Mining Attribute Subspaces for Efficient Fine-tuning
# of 3D Foundation Models", CVPR 2026, arXiv 2604.10095), copied from its results tables as
# transcribed in shared/reference/paper.md; bold marks the paper's best per column.
PAPER_CITATION = ("Jiang et al., *Mining Attribute Subspaces for Efficient Fine-tuning of 3D "
                  "Foundation Models*, CVPR 2026 (arXiv 2604.10095)")
PAPER_TABLES = {
    "print_attack": {
        "title": "micro-baseline face anti-spoofing table (synthetic: point-cloud Acc, Comp "
                 "lower is better, NC higher; real: AbsRel lower, δ<1.25 higher)",
        "header": ["method", "trainable", "Acc", "Comp", "NC", "real AbsRel", "real δ1"],
        "rows": [
            ["VGGT, no fine-tuning", "0", "9.006", "4.965", "80.74", "2.651", "98.59"],
            ["full fine-tuning", "853.6 M", "5.585", "3.531", "85.77", "2.203", "98.85"],
            ["LoRA r=16", "16.3 M", "5.767", "3.385", "84.78", "**2.115**", "98.92"],
            ["PiSSA r=16", "16.3 M", "5.729", "3.532", "85.30", "2.433", "98.81"],
            ["mined subspace d=16", "**4.0 M**", "**3.831**", "**2.037**", "**86.65**",
             "2.170", "98.92"],
        ],
    },
    "cross_domain": {
        "title": "clothed-humans table (THuman in-domain, 2K2K cross-domain; Acc lower is "
                 "better, NC higher)",
        "header": ["method", "trainable", "THuman Acc", "THuman NC", "2K2K Acc", "2K2K NC"],
        "rows": [
            ["VGGT", "0", "2.816", "91.51", "3.103", "92.81"],
            ["LoRA r=64", "65.3 M", "2.791", "92.12", "3.017", "93.18"],
            ["LoRA r=256", "261.4 M", "3.521", "91.81", "2.517", "93.99"],
            ["PiSSA r=64", "65.3 M", "3.931", "89.42", "3.730", "91.13"],
            ["mined subspace d=64", "**19.3 M**", "**2.745**", "91.82", "**2.513**", "93.56"],
        ],
    },
}
PAPER_ABLATIONS = (
    "Ablations stated in the same paper (THuman Acc / 2K2K Acc): PSV basis d=64 4.066 / 3.805 "
    "versus mined 2.745 / 2.513; basis d=8 5.839 / 5.712 versus d=64 2.745 / 2.513; mining "
    "LoRA rank 16 versus 64: 2.745 versus 2.783."
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


# ---------------------------------------------------------------------------------------------
# Loading


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
        df = pd.read_parquet(path)
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
                       "basis width D of reduced trials is derived as rank x attributes")
    t["width"] = t.apply(_width, axis=1) if len(t) else pd.Series(dtype=float)
    t["label"] = t.apply(_label, axis=1) if len(t) else pd.Series(dtype=object)
    return t


def _fmt_int(v: Any) -> str:
    return "?" if v is None or pd.isna(v) else str(int(v))


def _label(r: pd.Series) -> str:
    """The paper's names for a configuration (``mined subspace d=16``), plus the ablated knob."""
    m, rank, d = r["method"], _fmt_int(r["rank"]), _fmt_int(r["width"])
    base = {
        "none": "no fine-tuning", "full": "full fine-tuning", "lora": f"LoRA r={rank}",
        "pissa": f"PiSSA r={rank}", "psv": f"PSV d={d}", "random": f"random basis d={d}",
        "reduced": f"mined subspace d={d}",
    }.get(m, str(m))
    axis = r["axis"]
    if m != "reduced" or axis in ("main", None):
        return base
    knob = {"ranks": f"r={rank}/attribute", "subsets": str(r["factors"]),
            "ortho": f"ortho={r['ortho']}", "extraction": f"{r['extraction']} extraction"}
    return f"{base} ({knob.get(axis, axis)})"


# ---------------------------------------------------------------------------------------------
# Statistics and task metadata


def _aggregate(df: pd.DataFrame, by: str | list[str], value: str = "main") -> pd.DataFrame:
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


_TASK_CACHE: dict[str, tuple[str, bool]] = {}


def task_info(task: str) -> tuple[str, bool]:
    """(main metric name, lower is better) from attrsub's task registry; pc_acc-like default."""
    if task not in _TASK_CACHE:
        try:
            from attrsub.errors import AttrsubError
            from attrsub.tasks import get_task
        except ImportError:
            _TASK_CACHE[task] = ("main", True)
        else:
            try:
                t = get_task(task)
                _TASK_CACHE[task] = (t.main_metric, bool(t.lower_is_better))
            except AttrsubError:
                _TASK_CACHE[task] = ("main", True)
    return _TASK_CACHE[task]


def metric_label(name: str) -> str:
    """``test/pc_acc`` or ``test__pc_acc`` -> "test point-cloud Acc [scene units]"."""
    split, _, metric = name.replace("__", "/").rpartition("/")
    readable, unit, _ = METRICS.get(metric, (metric, "", True))
    prefix = f"{SPLITS.get(split, split)} " if split else ""
    return f"{prefix}{readable}" + (f" [{unit}]" if unit else "")


def lower_is_better(column: str) -> bool:
    """Direction of a metric column (a gap column follows its metric)."""
    return METRICS.get(column.rpartition("__")[2], ("", "", True))[2]


def axis_label(task: str, value: str = "main", scale: str = "") -> str:
    """Two-line axis label of a task's main metric or its paired change, with units and scale."""
    metric, lower = task_info(task)
    split, _, name = metric.replace("__", "/").rpartition("/")
    readable, unit, _ = METRICS.get(name, (name, "", True))
    unit = f"{unit} {scale}".strip()
    where = f"{SPLITS.get(split, split)} " if split else ""
    better = "lower" if lower else "higher"
    if value == "delta":
        return (f"Δ {where}{readable}\n[{unit}] vs no fine-tuning, same seed\n"
                f"({better} is better)")
    return f"{where}{readable} [{unit}]\n({better} is better)"


# ---------------------------------------------------------------------------------------------
# Figure helpers


def _new_figure(ncols: int, nrows: int = 1, w: float = 5.6, h: float = 4.2) -> Figure:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _plain_y(ax: Any) -> None:
    """Absolute tick values: differences between methods can be 1e-4 of the value."""
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)


def _finetune_ok(study: StudyData) -> pd.DataFrame:
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


def _value(td: pd.DataFrame) -> str:
    """The column to plot: the paired ``delta`` when the task has no-fine-tuning trials."""
    return "delta" if td["delta"].notna().any() else "main"


def _scale(values: Sequence[float]) -> tuple[float, str]:
    """A power-of-1000 factor so tiny differences (1e-6 of the metric) get readable ticks."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    m = float(v.max()) if len(v) else 0.0
    if m == 0.0 or 1e-2 <= m < 1e4:
        return 1.0, ""
    exp = 3 * math.floor(math.log10(m) / 3)
    return 10.0 ** -exp, f"x 1e{exp}"


def _default_reduced(ft: pd.DataFrame) -> pd.DataFrame:
    """The reduced method's main-axis trials: the point every ablation axis varies around."""
    return ft[(ft["method"] == "reduced") & (ft["axis"] == "main")]


def _tasks(ft: pd.DataFrame) -> list[str]:
    return sorted(ft["task"].dropna().unique().tolist())


def _method_key(m: Any) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), str(m))


_RANK_NAMES = {"lora": "LoRA (x = r)", "pissa": "PiSSA (x = r)", "psv": "PSV basis",
               "random": "random basis", "reduced": "mined subspace"}


def _rank_series(td: pd.DataFrame, value: str) -> list[tuple[str, pd.DataFrame]]:
    """(method, aggregate by width) per main-axis method; reduced adds its ``ranks`` axis."""
    main = td[td["axis"] == "main"]
    out = []
    for method in sorted(main["method"].dropna().unique(), key=_method_key):
        rows = main[main["method"] == method]
        if method == "reduced":
            d = rows.iloc[0]
            ranks = td[(td["method"] == "reduced") & (td["axis"] == "ranks")
                       & (td["factors"] == d["factors"]) & (td["ortho"] == d["ortho"])
                       & (td["extraction"] == d["extraction"])]
            rows = pd.concat([rows, ranks])
        out.append((method, _aggregate(rows, "width", value)))
    return out


def _fig_rank(ft: pd.DataFrame, path: Path) -> str | None:
    """Main metric vs rank/basis width, a line per method with a 95% CI band over seeds."""
    tasks = _tasks(ft)
    if not tasks:
        return "no successful fine-tuning trials"
    fig = _new_figure(len(tasks), w=6.0, h=4.6)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        td = ft[ft["task"] == task]
        value = _value(td)
        series = _rank_series(td, value)
        factor, suffix = _scale(np.concatenate(
            [np.abs(a["mean"].to_numpy(float)) + np.nan_to_num(a["ci"].to_numpy(float))
             for _, a in series]) if series else [])
        ticks: set[float] = set()
        lines = [m for m, a in series if a["width"].notna().any()]
        for method, agg in series:
            color = METHOD_COLORS.get(method, "black")
            if agg["width"].isna().all():  # none / full: no rank, a reference level
                mean, ci = agg["mean"].iloc[0] * factor, agg["ci"].iloc[0] * factor
                name = "no fine-tuning" if method == "none" else "full fine-tuning"
                h = ax.axhline(mean, color=color, ls="--", lw=1.5, label=name)
                if np.isfinite(ci):
                    ax.axhspan(mean - ci, mean + ci, color=color, alpha=0.07, lw=0)
                handles.setdefault(name, h)
                continue
            agg = agg[agg["width"].notna() & agg["mean"].notna()].sort_values("width")
            x = agg["width"].to_numpy(float)
            y, ci = agg["mean"].to_numpy(float) * factor, agg["ci"].to_numpy(float) * factor
            ticks.update(x.tolist())
            k = lines.index(method)
            x = x * 2.0 ** (0.025 * (k - (len(lines) - 1) / 2))  # overlapping points apart
            name = _RANK_NAMES.get(method, str(method))
            (h,) = ax.plot(x, y, marker="o", color=color, lw=2, label=name)
            band = np.isfinite(ci)
            if band.sum() > 1:
                ax.fill_between(x[band], (y - ci)[band], (y + ci)[band], color=color,
                                alpha=0.15, lw=0)
            elif band.any():
                ax.errorbar(x[band], y[band], yerr=ci[band], fmt="none", ecolor=color,
                            capsize=4, lw=1.2)
            handles.setdefault(name, h)
        if ticks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
        ax.set_xlabel("basis width D (trained D x D matrix), or LoRA/PiSSA rank r")
        ax.set_ylabel(axis_label(task, value, suffix))
        ax.set_title(f"{task}: error vs rank", fontsize="medium")
        ax.grid(alpha=0.3)
        _plain_y(ax)
    fig.suptitle("Task error versus basis rank (mean over seeds, band: 95% CI)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(len(handles), 2 * len(tasks)), frameon=False)
    _save(fig, path)
    return None


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


def _search_front(pareto: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """The search's Pareto points for a task from ``pareto.parquet`` (may lack ``task``)."""
    if pareto is None or pareto.empty:
        return pd.DataFrame(columns=["trainable_params", "main"])
    p = pareto[pareto["task"] == task] if "task" in pareto.columns else pareto
    p = p.assign(trainable_params=pd.to_numeric(p["trainable_params"], errors="coerce"),
                 main=pd.to_numeric(p["main"], errors="coerce"))
    return p[(p["trainable_params"] > 0) & p["main"].notna()].sort_values("trainable_params")


def _fig_params(ft: pd.DataFrame, pareto: pd.DataFrame | None, path: Path) -> str | None:
    """Main metric vs trainable parameters (log x), with the Pareto front of the configs."""
    tasks = _tasks(ft)
    if not tasks:
        return "no successful fine-tuning trials"
    fig = _new_figure(len(tasks), w=6.2, h=4.8)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        _, lower = task_info(task)
        td = ft[ft["task"] == task]
        front_p = _search_front(pareto, task)
        # The search's front is in raw metric units, so draw raw values beside it.
        value = "main" if len(front_p) else _value(td)
        agg = _aggregate(td, "label", value)
        agg = agg[agg["mean"].notna()]
        main_labels = set(td[td["axis"] == "main"]["label"])
        factor, suffix = _scale(np.abs(agg["mean"].to_numpy(float))
                                + np.nan_to_num(agg["ci"].to_numpy(float)))
        for _, r in agg[~(agg["params"] > 0)].iterrows():
            name = f"{r['label']} (0 params)"
            h = ax.axhline(r["mean"] * factor, color=METHOD_COLORS.get(r["method"], "grey"),
                           ls="--", lw=1.5, label=name)
            handles.setdefault(name, h)
        pts = agg[agg["params"] > 0].reset_index(drop=True)
        for _, r in pts.iterrows():
            color = METHOD_COLORS.get(r["method"], "black")
            err = r["ci"] * factor if np.isfinite(r["ci"]) else None
            if r["label"] in main_labels:
                name = r["label"]
                h = ax.errorbar(r["params"], r["mean"] * factor, yerr=err, fmt="o", ms=8,
                                color=color, capsize=3, label=name)
            else:
                name = "mined subspace, ablation variants"
                h = ax.errorbar(r["params"], r["mean"] * factor, yerr=err, fmt="o", ms=5,
                                mfc="white", color=color, capsize=2, alpha=0.8, label=name)
            handles.setdefault(name, h)
        if len(pts):
            front = pts.iloc[pareto_front(pts["params"].tolist(), pts["mean"].tolist(), lower)]
            name = "non-dominated configs of this study"
            (h,) = ax.step(front["params"], front["mean"] * factor, where="post", color="black",
                           ls=":", lw=1.5, marker="o", ms=13, mfc="none", label=name, zorder=4)
            handles.setdefault(name, h)
        if len(front_p):
            name = "Pareto front of the search (pareto.parquet)"
            (h,) = ax.step(front_p["trainable_params"], front_p["main"] * factor, where="post",
                           color="black", lw=2, marker="s", ms=4, label=name)
            handles.setdefault(name, h)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(axis_label(task, value, suffix))
        ax.set_title(f"{task}: error vs trainable parameters", fontsize="medium")
        ax.grid(alpha=0.3, which="both")
        _plain_y(ax)
    fig.suptitle("Task error versus trainable parameters (mean over seeds, bars: 95% CI)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(len(handles), 2 * len(tasks)), frameon=False, fontsize="small")
    _save(fig, path)
    return None


def _ablation_rows(ft: pd.DataFrame, task: str, axis: str) -> pd.DataFrame:
    """The trials of one ablation axis plus the default reduced trials it varies around."""
    td = ft[ft["task"] == task]
    return pd.concat([td[(td["method"] == "reduced") & (td["axis"] == axis)],
                      _default_reduced(td)])


def _ablation_table(ft: pd.DataFrame, axis: str, key: str) -> pd.DataFrame:
    """Per task and value of ``key``: main and paired change vs no fine-tuning, best first."""
    out = []
    for task in _tasks(ft):
        rows = _ablation_rows(ft, task, axis)
        if rows.empty:
            continue
        agg = _aggregate(rows, key, "main")
        paired = _aggregate(rows, key, "delta").set_index(key)
        agg["delta"] = agg[key].map(paired["mean"])
        agg["delta_ci"] = agg[key].map(paired["ci"])
        agg["task"] = task
        agg["default"] = agg[key].isin(_default_reduced(ft[ft["task"] == task])[key])
        _, lower = task_info(task)
        rank_by = "delta" if agg["delta"].notna().all() else "mean"
        out.append(agg.sort_values(rank_by, ascending=lower))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _key_label(key: str, r: pd.Series) -> str:
    if key == "factors":
        text = " + ".join(str(r[key]).split("+")) + f" (d={_fmt_int(r['width'])})"
    else:
        text = str(r[key])
    return text + (" [default]" if r["default"] else "")


def _fig_ablation(ft: pd.DataFrame, axis: str, key: str, title: str, path: Path,
                  horizontal: bool) -> str | None:
    """Bars of the paired change in the main metric vs no fine-tuning, one panel per task."""
    table = _ablation_table(ft, axis, key)
    if table.empty:
        return f"no successful reduced trials for the `{axis}` axis"
    tasks = table["task"].unique().tolist()
    n_bars = int(table.groupby("task").size().max())
    if horizontal:  # panels stacked, so the long subset names are written once per row
        fig = _new_figure(1, len(tasks), w=9.0, h=1.5 + 0.45 * n_bars)
        axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    else:
        fig = _new_figure(len(tasks), w=max(4.6, 1.1 * n_bars + 2.4), h=4.4)
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        tb = table[table["task"] == task]
        if not horizontal:  # side by side, the same order in every panel: default first
            tb = tb.assign(_k=~tb["default"]).sort_values(["_k", key], kind="stable")
        tb = tb.reset_index(drop=True)
        paired = bool(tb["delta"].notna().all())
        raw = tb["delta" if paired else "mean"].to_numpy(float)
        ci = tb["delta_ci" if paired else "ci"].to_numpy(float)
        factor, suffix = _scale(np.abs(raw) + np.nan_to_num(ci)) if paired else (1.0, "")
        vals, err = raw * factor, ci * factor
        err_arg = err if np.isfinite(err).any() else None
        sep = " " if horizontal else "\n"
        labels = [_key_label(key, r).replace(" [default]", f"{sep}[default]")
                  for _, r in tb.iterrows()]
        colors = ["#d62728" if d else "#f4a3a3" for d in tb["default"]]
        what = axis_label(task, "delta" if paired else "main", suffix)
        pos = np.arange(len(tb))
        if horizontal:
            ax.barh(pos, vals, xerr=err_arg, color=colors, capsize=4, edgecolor="black",
                    lw=0.5)
            ax.set_yticks(pos, labels)
            ax.invert_yaxis()
            ax.set_xlabel(what)
            ax.grid(alpha=0.3, axis="x")
        else:
            ax.bar(pos, vals, yerr=err_arg, color=colors, capsize=4, edgecolor="black", lw=0.5)
            ax.set_xticks(pos, labels)
            ax.set_ylabel(what)
            ax.set_xlabel(title)
            ax.grid(alpha=0.3, axis="y")
            _plain_y(ax)
        if paired:
            (ax.axvline if horizontal else ax.axhline)(0, color="grey", lw=1)
        else:  # raw values: zoom in, bars from zero would all look the same
            spread = np.nan_to_num(err)
            lo, hi = float(np.nanmin(vals - spread)), float(np.nanmax(vals + spread))
            pad = (hi - lo) * 0.1 or abs(hi) * 0.01 or 1.0
            (ax.set_xlim if horizontal else ax.set_ylim)(lo - pad, hi + pad)
        ax.set_title(f"{task}: {title}", fontsize="medium")
    fig.suptitle(f"{title[0].upper()}{title[1:]} (mean over seeds, bars: 95% CI)")
    _save(fig, path)
    return None


def _depth(layer: str) -> tuple[str, int | None]:
    """("frame" | "global" | other, block index) parsed from a layer name."""
    m = re.search(r"(\w+?)_?blocks\.(\d+)\.", layer)
    if not m:
        return "layers", None
    return m.group(1).split(".")[-1], int(m.group(2))


def _pair_matrix(o: pd.DataFrame, col: str, attrs: list[str]) -> np.ndarray:
    m = np.full((len(attrs), len(attrs)), np.nan)
    means = o.groupby(["attr_a", "attr_b"])[col].mean()
    for (a, b), v in means.items():
        if a in attrs and b in attrs:
            i, j = attrs.index(a), attrs.index(b)
            m[i, j] = m[j, i] = v
    return m


def _attrs(o: pd.DataFrame) -> list[str]:
    present = set(o["attr_a"].dropna()) | set(o["attr_b"].dropna())
    return [a for a in ATTRIBUTES if a in present] + sorted(present - set(ATTRIBUTES))


def _fig_disentanglement(o_all: pd.DataFrame, path: Path) -> str | None:
    """Heatmaps: smallest principal angle and scale-invariant distance, mined vs random."""
    ext = choose_extraction(o_all)
    if ext is None:
        return "no rows in `overlaps.parquet`"
    o = o_all[o_all["extraction"] == ext]
    attrs = _attrs(o)
    fig = _new_figure(2, 2, w=5.0, h=4.3)
    axes = fig.subplots(2, 2)
    rows = [("col_angle_min", "smallest principal angle [degrees]", (0.0, 90.0)),
            ("scale_inv_distance", "scale-invariant distance\n(0 shared, 1 orthogonal)",
             (0.0, 1.0))]
    for (col, unit, (vmin, vmax)), pair in zip(rows, axes, strict=True):
        for ax, prefix, name in zip(pair, ("", "rand_"), ("mined subspaces", "random baseline"),
                                    strict=True):
            m = _pair_matrix(o, prefix + col, attrs)
            im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
            for i in range(len(attrs)):
                for j in range(len(attrs)):
                    if np.isfinite(m[i, j]):
                        bright = (m[i, j] - vmin) / (vmax - vmin) > 0.6
                        ax.text(j, i, f"{m[i, j]:.2f}" if vmax <= 1 else f"{m[i, j]:.1f}",
                                ha="center", va="center", fontsize=9,
                                color="black" if bright else "white")
            ax.set_xticks(range(len(attrs)), attrs, rotation=30, ha="right")
            ax.set_yticks(range(len(attrs)), attrs)
            ax.set_title(f"{name}: {unit.splitlines()[0]}", fontsize="medium")
        fig.colorbar(im, ax=list(pair), label=unit, shrink=0.9)
    fig.suptitle(f"Attribute-pair disentanglement, column spaces, mean over "
                 f"{o['layer'].nunique()} layers ({ext} extraction)")
    _save(fig, path)
    return None


def _fig_disentanglement_depth(o_all: pd.DataFrame, path: Path) -> str | None:
    """Scale-invariant distance per attribute pair vs block depth, random baseline dashed."""
    ext = choose_extraction(o_all)
    if ext is None:
        return "no rows in `overlaps.parquet`"
    o = o_all[o_all["extraction"] == ext].copy()
    parsed = [_depth(str(layer)) for layer in o["layer"]]
    o["kind"] = [k for k, _ in parsed]
    order = {layer: i for i, layer in enumerate(dict.fromkeys(o["layer"]))}
    o["depth"] = [d if d is not None else order[layer]
                  for (_, d), layer in zip(parsed, o["layer"], strict=True)]
    kinds = list(dict.fromkeys(o["kind"]))
    fig = _new_figure(len(kinds), w=5.8, h=4.4)
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    handles: dict[str, Any] = {}
    for ax, kind in zip(axes, kinds, strict=True):
        ok = o[o["kind"] == kind]
        for (a, b), g in ok.groupby(["attr_a", "attr_b"], sort=False):
            s = g.groupby("depth")["scale_inv_distance"].mean()
            (h,) = ax.plot(s.index, s.to_numpy(), marker="o", lw=1.8, label=f"{a} - {b}")
            handles.setdefault(f"{a} - {b}", h)
        r = ok.groupby("depth")["rand_scale_inv_distance"]
        lo, mid, hi = r.min(), r.mean(), r.max()
        (h,) = ax.plot(mid.index, mid.to_numpy(), color="black", ls="--", lw=1.5,
                       label="random subspaces of the same sizes (mean, range)")
        ax.fill_between(mid.index, lo.to_numpy(), hi.to_numpy(), color="grey", alpha=0.2,
                        lw=0)
        handles.setdefault(h.get_label(), h)
        ax.set_xlabel(f"{kind} block index (depth)" if kind != "layers" else "layer (order)")
        ax.set_ylabel("scale-invariant distance (0 shared, 1 orthogonal)")
        ax.set_title(f"{kind} blocks: mean over modules", fontsize="medium")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Attribute-pair disentanglement by depth ({ext} extraction, column spaces)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=4, frameon=False, fontsize="small")
    _save(fig, path)
    return None


def _spectrum_layers(s: pd.DataFrame, n: int = 4) -> list[str]:
    """A few layers spread over depth, of one module type (attention qkv when there is one)."""
    layers = list(dict.fromkeys(s["layer"]))
    qkv = [x for x in layers if x.endswith("attn.qkv")]
    pool = qkv or layers
    pool = sorted(pool, key=lambda x: (_depth(x)[1] or 0, _depth(x)[0]))
    if len(pool) <= n:
        return pool
    return [pool[round(float(i))] for i in np.linspace(0, len(pool) - 1, n)]


def _fig_spectra(s_all: pd.DataFrame, path: Path) -> str | None:
    """Singular values per attribute for a few layers; the kept rank and the cliff marked."""
    ext = choose_extraction(s_all)
    if ext is None:
        return "no rows in `spectra.parquet`"
    s = s_all[s_all["extraction"] == ext]
    layers = _spectrum_layers(s)
    ncols = min(len(layers), 2)
    nrows = math.ceil(len(layers) / ncols)
    fig = _new_figure(ncols, nrows, w=5.8, h=4.0)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    handles: dict[str, Any] = {}
    for ax, layer in zip(axes, layers, strict=False):
        sl = s[s["layer"] == layer]
        kept: set[int] = set()
        cliffs = False
        for attr, g in sorted(sl.groupby("attribute"), key=lambda kv: _attr_key(kv[0])):
            g = g.sort_values("index")
            x = g["index"].to_numpy() + 1
            y = np.clip(g["value"].to_numpy(dtype=float), 1e-12, None)
            color = ATTR_COLORS.get(attr, "black")
            (h,) = ax.plot(x, y, marker=".", color=color, lw=1.6, label=attr)
            handles.setdefault(attr, h)
            cliff = g["cliff_rank"].dropna()
            if len(cliff) and 1 <= int(cliff.iloc[0]) <= len(y):
                c = int(cliff.iloc[0])
                ax.plot([c], [y[c - 1]], marker="v", ms=11, color=color, mec="black",
                        ls="none")
                cliffs = True
            if g["rank"].notna().any():
                kept.add(int(g["rank"].dropna().iloc[0]))
        if cliffs:
            handles.setdefault("cliff (largest-gap rank)", Line2D(
                [], [], marker="v", ms=11, color="white", mec="black", ls="none"))
        for k in sorted(kept):
            hk = ax.axvline(k + 0.5, color="grey", ls="--", lw=1, label="basis rank kept")
            handles.setdefault("basis rank kept", hk)
        ax.set_yscale("log")
        ax.set_xlabel("singular value index (1 = largest)")
        ax.set_ylabel("singular value of ΔW [weight units]")
        ax.set_title(layer.removeprefix("aggregator."), fontsize="medium")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(f"Singular spectra of the extracted attribute updates ({ext} extraction)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(len(handles), 6), frameon=False)
    _save(fig, path)
    return None


def _attr_key(a: Any) -> tuple[int, str]:
    return (ATTRIBUTES.index(a) if a in ATTRIBUTES else len(ATTRIBUTES), str(a))


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
             align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` is "l" or "r" per column (left for the first)."""
    align = align or ["l", *["r"] * (len(header) - 1)]
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_params(n: Any) -> str:
    """Trainable parameters the way the paper writes them: 0, 65.5 k, 1.18 M, 853.6 M."""
    if n is None or pd.isna(n):
        return "?"
    n = float(n)
    if n < 1e3:
        return f"{n:.0f}"
    if n < 1e6:
        return f"{n / 1e3:.1f} k"
    return f"{n / 1e6:.3g} M" if n < 1e8 else f"{n / 1e6:.1f} M"


def _fmt_value(mean: float, ci: float, digits: int = 4) -> str:
    if not np.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    return text + (f" ± {ci:.{digits}f}" if np.isfinite(ci) else "")


def _digits(values: Sequence[float]) -> int:
    """Enough decimals that the spread between rows shows (at most 6)."""
    v = [x for x in values if np.isfinite(x)]
    if len(v) < 2:
        return 4
    spread = max(v) - min(v)
    if spread <= 0:
        return 4
    return int(min(6, max(3, 2 - math.floor(math.log10(spread)))))


def _best_bold(cells: list[str], means: list[float], lower: bool,
               ns: Sequence[int] | None = None) -> list[str]:
    """Bold the best mean, among the rows with the most seeds (a partial row is not fair)."""
    ns = list(ns) if ns is not None else [1] * len(means)
    top = max((n for n, m in zip(ns, means, strict=True) if np.isfinite(m)), default=0)
    finite = [m for m, n in zip(means, ns, strict=True) if np.isfinite(m) and n == top]
    if len(finite) < 2:
        return cells
    best = min(finite) if lower else max(finite)
    return [f"**{c}**" if np.isfinite(m) and n == top and m == best else c
            for c, m, n in zip(cells, means, ns, strict=True)]


def _layout_columns(task: str, td: pd.DataFrame) -> list[tuple[str, str]]:
    """The paper-layout metric columns a task has values for (a generic set for unknown tasks)."""
    cols = TASK_LAYOUT.get(task)
    if cols is None:
        cols = [(c, metric_label(c)) for c in td.columns
                if "__" in c and c.rpartition("__")[2] in ("pc_acc", "pc_comp", "pc_nc")
                and not c.startswith("train__")]
    return [(c, h) for c, h in cols if c in td.columns and td[c].notna().any()]


def _main_rows(ft: pd.DataFrame) -> pd.DataFrame:
    main = ft[ft["axis"] == "main"]
    return main.assign(_order=main["method"].map(_method_key))


def section_main_tables(ft: pd.DataFrame) -> str:
    """Method x task (main metric), then per task the paper's layout with every metric."""
    main = _main_rows(ft)
    tasks = _tasks(main)
    if not tasks:
        return "No successful main-axis fine-tuning trials yet.\n"
    out = []
    labels = sorted(main["label"].unique(), key=lambda lab: (
        main.loc[main["label"] == lab, "_order"].iloc[0], lab))
    header = ["method", "trainable"]
    cols: list[list[str]] = []
    for task in tasks:
        td = main[main["task"] == task]
        arrow = "↓" if task_info(task)[1] else "↑"
        header += [f"{task} {arrow}", f"{task} Δ vs none {arrow}"]
        base = set(td.loc[td["method"] == "none", "label"])
        for value in ("main", "delta"):
            stats = [(math.nan, math.nan, 0) if value == "delta" and lab in base
                     else mean_ci(td[td["label"] == lab][value].tolist()) for lab in labels]
            d = _digits([m for m, _, _ in stats])
            cells = [_fmt_value(m, ci, d) + (f" (n={n})" if n and value == "main" else "")
                     for m, ci, n in stats]
            if value == "delta":
                cells = ["reference" if lab in base else c
                         for c, lab in zip(cells, labels, strict=True)]
            cols.append(_best_bold(cells, [m for m, _, _ in stats], task_info(task)[1],
                                   [n for _, _, n in stats]))
    rows = []
    for i, lab in enumerate(labels):
        params = main.loc[main["label"] == lab, "trainable_params"].iloc[0]
        rows.append([lab, fmt_params(params), *[c[i] for c in cols]])
    metrics = ", ".join(f"`{t}`: {metric_label(task_info(t)[0])}" for t in tasks)
    out.append("Main metric per task (" + metrics + "): mean ± 95% CI half-width over seeds "
               "(n = seeds), and its change versus no fine-tuning on the same seed (Δ; seeds "
               "change the scenes, so the paired change is what separates methods). Best per "
               "column in **bold**, among the rows with the most seeds.\n")
    out.append(md_table(header, rows))
    for task in tasks:
        td = main[main["task"] == task]
        layout = _layout_columns(task, td)
        if not layout:
            continue
        tl = sorted(td["label"].unique(), key=lambda lab: (
            td.loc[td["label"] == lab, "_order"].iloc[0], lab))
        columns: list[list[str]] = []
        for col, _ in layout:
            stats = [mean_ci(pd.to_numeric(td[td["label"] == lab][col], errors="coerce")
                             .tolist()) for lab in tl]
            d = _digits([m for m, _, _ in stats])
            cells = [_fmt_value(m, ci, d) for m, ci, _ in stats]
            columns.append(_best_bold(cells, [m for m, _, _ in stats], lower_is_better(col),
                                      [n for _, _, n in stats]))
        rows = [[lab, fmt_params(td.loc[td["label"] == lab, "trainable_params"].iloc[0]),
                 *[c[i] for c in columns]] for i, lab in enumerate(tl)]
        header = ["method", "trainable",
                  *[f"{h} {'↓' if lower_is_better(c) else '↑'}" for c, h in layout]]
        units = "; ".join(f"{h} = {metric_label(c)}" for c, h in layout)
        out.append(f"\n### {task}, in the paper's layout\n\n{units}. Mean ± 95% CI over seeds; "
                   f"best per column in **bold** (↓ lower is better, ↑ higher).\n")
        out.append(md_table(header, rows))
    return "\n".join(out) + "\n"


def _claim_bullet(c: Claim) -> str:
    evidence = c.evidence if c.evidence.endswith(".") else f"{c.evidence}."
    null = f" *Null:* {c.null}" if c.null else ""
    return f"- **Claim {c.number}: {c.verdict}.** {c.statement} {evidence}{null}"


def section_claims(study: StudyData) -> str:
    """One bullet per claim of the paper: the verdict in bold, its numbers, the null."""
    found = claims({"trials": study.trials, "overlaps": study.overlaps,
                    "evidence": study.evidence})
    return ("Each verdict follows the rule stated in `results.claims.claims`: claim 1 from "
            "`evidence.parquet`, claim 2 from `overlaps.parquet`, claims 3 and 4 from the "
            "seed-paired differences below (95% Student-t CI over seeds).\n\n"
            + "\n".join(_claim_bullet(c) for c in found) + "\n")


def _ratio_cell(r: pd.Series) -> str:
    pa, pb = r["params_a"], r["params_b"]
    if not np.isfinite(r["param_ratio"]):
        return f"{fmt_params(pa)} / {fmt_params(pb)}"
    return f"{fmt_params(pa)} / {fmt_params(pb)} = {r['param_ratio']:.3g}"


def section_paired(t: pd.DataFrame) -> str:
    """Per task, a - b of the main metric paired on the seed, for the claims' comparisons."""
    main = t[(t["stage"] == "finetune") & (t["axis"] == "main") & (t["status"] == "ok")]
    tasks = _tasks(main)
    if not tasks:
        return "No successful main-axis fine-tuning trials to pair.\n"
    out = ["Main metric of method a minus method b on the same seed (the same scenes and "
           "training batches), mean ± 95% CI half-width over the seeds both ran; \"a better\" "
           "counts the seeds where a wins in the task's direction. Parameter ratio: trainable "
           "parameters of a / b.\n"]
    for task in tasks:
        table = paired_differences(t, task)
        better = "lower" if task_info(task)[1] else "higher"
        sign = "negative" if better == "lower" else "positive"
        rows = [[f"{r['a']} - {r['b']}", fmt_difference(r["mean"], r["ci"]), int(r["n"]),
                 f"{int(r['wins'])}/{int(r['n'])}", _ratio_cell(r)]
                for _, r in table.iterrows()]
        out.append(f"### Paired differences: {task}\n\n{better.capitalize()} is better, so a "
                   f"{sign} difference favours a.\n")
        out.append(md_table(["pair (a - b)", "mean difference ± 95% CI", "seeds", "a better",
                             "parameter ratio"], rows, ["l", "r", "r", "r", "r"]) + "\n"
                   if rows else "No pair of methods ran on this task.\n")
    return "\n".join(out)


def section_paper_tables(tasks: Sequence[str]) -> str:
    """The paper's own figures, for the tasks this study's tasks stand in for."""
    out = [f"Figures as stated in {PAPER_CITATION}, at the paper's scale (VGGT-1B, 518 px, real "
           "data); they are a reference for direction and ratios, not for the absolute values "
           "of this study's synthetic stand-in tasks. Bold is the paper's own.\n"]
    shown = [t for t in PAPER_TABLES if t in tasks] or list(PAPER_TABLES)
    for task in shown:
        p = PAPER_TABLES[task]
        out.append(f"**The paper's {p['title']}** (our stand-in: `{task}`)\n")
        out.append(md_table(p["header"], p["rows"]) + "\n")
    out.append(PAPER_ABLATIONS + "\n")
    return "\n".join(out)


def section_ablation(ft: pd.DataFrame, axis: str, key: str, what: str) -> str:
    table = _ablation_table(ft, axis, key)
    if table.empty:
        return f"No successful reduced trials on the `{axis}` axis.\n"
    rows = []
    for _, r in table.iterrows():
        rows.append([r["task"], _key_label(key, r), fmt_params(r["params"]),
                     _fmt_value(r["mean"], r["ci"], 6), _fmt_value(r["delta"], r["delta_ci"], 6),
                     int(r["n"])])
    return md_table(["task", what, "trainable", "main (mean ± CI)",
                     "Δ vs no fine-tuning, same seed (mean ± CI)", "seeds"], rows,
                    ["l", "l", "r", "r", "r", "r"]) + "\n"


def section_disentanglement(o: pd.DataFrame) -> str:
    if o.empty or o["extraction"].dropna().empty:
        return "No disentanglement rows (`overlaps.parquet` missing or empty).\n"
    rows = []
    for (ext, a, b), g in o.groupby(["extraction", "attr_a", "attr_b"], sort=False):
        rows.append([ext, f"{a} - {b}", f"{g['col_angle_min'].median():.1f}",
                     f"{g['rand_col_angle_min'].median():.1f}",
                     f"{g['scale_inv_distance'].median():.3f}",
                     f"{g['rand_scale_inv_distance'].median():.3f}",
                     f"{g['overlap'].median():.3f}", f"{g['rand_overlap'].median():.3f}",
                     g["layer"].nunique()])
    return ("Medians over layers, column spaces; `rand` = random subspaces of the same sizes "
            "(the null baseline). Scale-invariant distance: 0 = a shared direction, 1 = "
            "orthogonal (the paper reports mostly above 0.5).\n\n"
            + md_table(["extraction", "pair", "min angle [deg]", "rand", "scale-inv dist",
                        "rand", "overlap (mean cos²)", "rand", "layers"], rows,
                       ["l", "l", *["r"] * 7]) + "\n")


def section_spectra(s: pd.DataFrame) -> str:
    if s.empty or s["extraction"].dropna().empty:
        return "No spectra rows (`spectra.parquet` missing or empty).\n"
    s = s.copy()
    s["_depth"] = [_depth(str(x))[1] for x in s["layer"]]
    per = s.drop_duplicates(["extraction", "layer", "attribute"])
    rows = []
    for (ext, attr), g in sorted(per.groupby(["extraction", "attribute"]),
                                 key=lambda kv: (kv[0][0], _attr_key(kv[0][1]))):
        depth = g["_depth"].dropna()
        half = depth.median() if len(depth) else None
        shallow = g[g["_depth"] <= half] if half is not None else g.iloc[0:0]
        deep = g[g["_depth"] > half] if half is not None else g.iloc[0:0]
        conv = g["converged"].dropna()
        rows.append([ext, attr, _fmt_int(g["rank"].median()), _fmt_int(g["adapters"].max()),
                     f"{g['cliff_rank'].median():.1f}" if g["cliff_rank"].notna().any()
                     else "–",
                     f"{shallow['cliff_rank'].median():.1f}" if len(shallow) else "–",
                     f"{deep['cliff_rank'].median():.1f}" if len(deep) else "–",
                     f"{conv.astype(bool).mean():.0%}" if len(conv) else "–",
                     f"{g['irls_weight_min'].min():.3f}" if g["irls_weight_min"].notna().any()
                     else "–", g["layer"].nunique()])
    return ("Per attribute over layers: the basis rank kept, the rank the largest-gap rule picks "
            "(the cliff; median overall, in the shallower and the deeper half of the blocks), "
            "IRLS convergence and the smallest IRLS adapter weight (a low value flags an "
            "outlier adapter).\n\n"
            + md_table(["extraction", "attribute", "rank kept", "adapters", "cliff (median)",
                        "cliff shallow", "cliff deep", "IRLS converged", "min IRLS weight",
                        "layers"], rows, ["l", "l", *["r"] * 8]) + "\n")


def _fmt_seconds(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    return f"{s:.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def section_metadata(study: StudyData, preset: str | None, wall_s: float | None) -> str:
    """Study, preset, seeds, code version(s), base and wall time, each with where it came from."""
    t, meta = study.trials, study.meta
    names = sorted(set(t["study"].dropna())) if "study" in t else []
    name = ", ".join(names) or meta.get("study") or study.root.name
    preset_meta = meta.get("preset")
    if isinstance(preset_meta, dict):
        preset_meta = preset_meta.get("name")
    preset_text = preset or preset_meta
    if not preset_text:
        preset_text = "not recorded (no `study.json` with a `preset` field)"
        if names and all(n in ("smoke", "quick", "paper") for n in names):
            preset_text += f"; the study name matches the `{names[0]}` preset"
    ft = t[t["stage"] == "finetune"]
    mine = t[t["stage"] == "mine"]
    seeds = sorted(int(x) for x in ft["seed"].dropna().unique())
    adapter_seeds = sorted(int(x) for x in mine["seed"].dropna().unique())
    versions = pd.concat([t["code_version"], study.overlaps["code_version"],
                          study.spectra["code_version"], study.evidence["code_version"]]
                         ).dropna().value_counts()
    version_text = (", ".join(f"`{v}` ({n} rows over the tables)" for v, n in versions.items())
                    or "not recorded")
    if len(versions) > 1:
        version_text += " (mixed: the study was resumed across code versions)"
    bases = sorted(set(t["base"].dropna())) if "base" in t else []
    wall = wall_s if wall_s is not None else meta.get("wall_s")
    trial_sum = float(t["wall_s"].sum()) if t["wall_s"].notna().any() else math.nan
    status = t["status"].value_counts().to_dict()
    lines = [
        f"- **study**: `{name}` (folder `{study.root}`)",
        f"- **preset**: {preset_text}",
        f"- **seeds** (fine-tuning): {seeds or 'none recorded'}; adapter seeds (mining): "
        f"{adapter_seeds or 'none recorded'}",
        f"- **code version**: {version_text}",
        f"- **base model**: {', '.join(f'`{b}`' for b in bases) or 'not recorded'}",
        "- **wall time**: " + (f"{_fmt_seconds(float(wall))} end to end" if wall is not None
                               else "end-to-end time not recorded (no `study.json` "
                                    "`wall_s`)")
        + f"; sum of trial wall times {_fmt_seconds(trial_sum)} (trials run in parallel, so "
          "this is compute time, not elapsed time)",
        f"- **trials**: {len(t)} ({len(mine)} mining, {len(ft)} fine-tuning); by status: "
        + (", ".join(f"{k} {v}" for k, v in sorted(status.items())) or "none"),
    ]
    for key in ("started", "finished", "storage", "command"):
        if key in meta:
            lines.append(f"- **{key}**: {meta[key]}")
    return "\n".join(lines) + "\n"


def _coverage(t: pd.DataFrame) -> list[str]:
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


def section_failed(t: pd.DataFrame) -> str:
    bad = t[t["status"] != "ok"]
    if bad.empty:
        return "All trials finished `ok`.\n"
    rows = [[r.get("trial_id", "?"), r["status"],
             (str(r["error"])[:160] if "error" in r and pd.notna(r["error"]) else "")]
            for _, r in bad.iterrows()]
    return md_table(["trial", "status", "error (truncated)"], rows, ["l", "l", "l"]) + "\n"


def _figure_block(name: str, problem: str | None, caption: str) -> str:
    if problem:
        return f"_Figure `{FIGURES[name]}` not drawn: {problem}._\n"
    return f"![{caption}]({FIGURES[name]})\n\n*{caption}*\n"


def _draw(study: StudyData, name: str, fn: Callable[[Path], str | None]) -> str | None:
    """Draw one figure; a failure becomes a note in the report instead of a crash."""
    path = study.root / FIGURES[name]
    try:
        problem = fn(path)
    except Exception as exc:  # a figure of odd partial data must not lose the whole report
        problem = f"drawing failed ({type(exc).__name__}: {exc})"
        study.problems.append(f"`{FIGURES[name]}`: {problem}")
    if problem and path.exists():
        path.unlink()  # never leave a stale figure from an earlier report beside the new one
    return problem


def _study_name(study: StudyData) -> str:
    names = study.trials["study"].dropna()
    return str(names.iloc[0]) if len(names) else study.root.name


def build_report(study: StudyData, preset: str | None = None,
                 wall_s: float | None = None) -> str:
    """Draw every figure into the study folder and return the report's markdown."""
    ft = _finetune_ok(study)
    o, s = study.overlaps, study.spectra
    figs = {
        "rank": _draw(study, "rank", lambda p: _fig_rank(ft, p)),
        "params": _draw(study, "params", lambda p: _fig_params(ft, study.pareto, p)),
        "subsets": _draw(study, "subsets", lambda p: _fig_ablation(
            ft, "subsets", "factors", "attribute subsets, best first", p, horizontal=True)),
        "ortho": _draw(study, "ortho", lambda p: _fig_ablation(
            ft, "ortho", "ortho", "orthogonalisation of the basis", p, horizontal=False)),
        "extraction": _draw(study, "extraction", lambda p: _fig_ablation(
            ft, "extraction", "extraction", "subspace extraction method", p,
            horizontal=False)),
        "disentanglement": _draw(study, "disentanglement",
                                 lambda p: _fig_disentanglement(o, p)),
        "disentanglement_depth": _draw(study, "disentanglement_depth",
                                       lambda p: _fig_disentanglement_depth(o, p)),
        "spectra": _draw(study, "spectra", lambda p: _fig_spectra(s, p)),
    }
    missing = list(study.missing)
    missing += [f"`{FIGURES[k]}` not drawn: {v}" for k, v in figs.items() if v]
    coverage = _coverage(study.trials)
    pareto_note = ("Black squares: the Pareto front of the search (`pareto.parquet`)."
                   if study.pareto is not None and len(study.pareto)
                   else "No search ran (no `pareto.parquet`), so the front shown is only the "
                        "non-dominated set of this study's fixed configurations.")
    parts = [
        f"# Study report: {_study_name(study)}\n",
        f"Generated by `python -m results.report` on {time.strftime('%Y-%m-%d %H:%M:%S')}.\n",
        "## Study\n", section_metadata(study, preset, wall_s),
    ]
    if missing or coverage or study.problems:
        parts += ["## Missing or partial\n",
                  "\n".join(f"- {m}" for m in [*missing, *study.problems]) + "\n"]
        if coverage:
            parts.append("Configurations with fewer seeds than the rest (interrupted study?):"
                         "\n\n" + "\n".join(f"- {c}" for c in coverage) + "\n")
    parts += [
        "## Main results: method x task\n", section_main_tables(ft),
        "## The paper's claims\n", section_claims(study),
        "## Paired differences\n", section_paired(study.trials),
        "## The paper's figures, for reference\n",
        section_paper_tables(_tasks(ft)),
        "## Task error versus basis rank\n",
        _figure_block("rank", figs["rank"], "Main metric versus basis width D (mined subspace, "
                      "PSV, random basis) or rank r (LoRA, PiSSA); bands: 95% CI over seeds; "
                      "dashed: no / full fine-tuning."),
        "## Task error versus trainable parameters\n",
        _figure_block("params", figs["params"], "Main metric versus trainable parameters (log "
                      "scale); error bars: 95% CI over seeds. " + pareto_note),
        "## Attribute subsets\n",
        _figure_block("subsets", figs["subsets"], "All attribute subsets, ranked (best first); "
                      "dark bar: the default subset."),
        section_ablation(ft, "subsets", "factors", "subset"),
        "## Orthogonalisation of the integrated basis\n",
        _figure_block("ortho", figs["ortho"], "Orthogonalisation methods side by side; dark "
                      "bar: the default."),
        section_ablation(ft, "ortho", "ortho", "orthogonalisation"),
        "## Subspace extraction: IRLS versus mean / SVD\n",
        _figure_block("extraction", figs["extraction"], "Extraction methods side by side; dark "
                      "bar: the default."),
        section_ablation(ft, "extraction", "extraction", "extraction"),
        "## Disentanglement of the attribute subspaces\n",
        _figure_block("disentanglement", figs["disentanglement"], "Pairwise smallest principal "
                      "angle and scale-invariant distance, mean over layers, beside random "
                      "subspaces of the same sizes."),
        _figure_block("disentanglement_depth", figs["disentanglement_depth"], "Scale-invariant "
                      "distance per attribute pair by block depth; dashed: random baseline."),
        section_disentanglement(o),
        "## Singular spectra\n",
        _figure_block("spectra", figs["spectra"], "Singular values of each attribute's "
                      "extracted update for a few layers; triangles: the cliff (largest-gap "
                      "rank); dashed: the basis rank kept."),
        section_spectra(s),
        "## Failed or stopped trials\n", section_failed(study.trials),
    ]
    return "\n".join(parts)


def write_report(study_dir: str | os.PathLike[str], *, preset: str | None = None,
                 wall_s: float | None = None) -> Path:
    """Write ``report.md`` and the figures into ``study_dir``; returns the report's path.

    ``preset`` and ``wall_s`` (the study's end-to-end seconds) override ``study.json``; the
    tables do not record them. Never raises on missing or partial tables.
    """
    study = load_study(study_dir)
    study.root.mkdir(parents=True, exist_ok=True)
    text = build_report(study, preset=preset, wall_s=wall_s)
    path = study.root / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m results.report", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", help="a study folder (holding trials.parquet, ...)")
    parser.add_argument("--preset", help="the preset the study ran (overrides study.json)")
    parser.add_argument("--wall-s", type=RATE, help="the study's end-to-end wall time, s")
    args = parser.parse_args(argv)
    if not Path(args.study_dir).is_dir():
        print(f"{parser.prog}: error: {args.study_dir!r} is not a folder", file=sys.stderr)
        return 2
    if not any((Path(args.study_dir) / f).is_file() for f in ("trials.parquet", "study.json")):
        print(f"{parser.prog}: error: {args.study_dir!r} holds neither trials.parquet nor "
              f"study.json, so it is not a study folder (that is <storage>/<study>)",
              file=sys.stderr)
        return 2
    # a study still running may lack tables (the report says so); a damaged one is an error
    damaged = [m for m in load_study(args.study_dir).missing if "unreadable" in m]
    if damaged:
        said = " ".join("; ".join(damaged).replace("`", "").split())  # one line
        print(f"{parser.prog}: error: {said}", file=sys.stderr)
        return 2
    path = write_report(args.study_dir, preset=args.preset, wall_s=args.wall_s)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
