"""The report's eight figures, each drawn from the tables into one PNG.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display,
no global state), so the report is safe to build inside a Ray driver or a test. A drawing
function returns None when it wrote its file, or why it could not (no rows to show).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator, ScalarFormatter

from results.claims import choose_extraction, task_info
from results.report.names import (
    axis_label,
    factor_key,
    key_label,
    layer_depth,
    method_color,
    method_key,
    method_legend,
)
from results.report.stats import ablation_table, aggregate, pareto_front, tasks_of
from results.schema import FACTORS

# Figure -> its file in the study folder, beside report.md.
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
FACTOR_COLORS = {"texture": "#1f77b4", "geometry": "#ff7f0e", "camera": "#2ca02c",
                 "lighting": "#9467bd"}


def _new_figure(ncols: int, nrows: int = 1, w: float = 5.6, h: float = 4.2) -> Figure:
    """A figure on its own Agg canvas: no pyplot state, so safe in a Ray driver or a test."""
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _task_panels(tasks: Sequence[str], w: float, h: float) -> tuple[Figure, Any]:
    """A figure with one panel per task, side by side, and its axes in task order."""
    fig = _new_figure(len(tasks), w=w, h=h)
    return fig, fig.subplots(1, len(tasks), squeeze=False)[0]


def _legend(fig: Figure, handles: dict[str, Any], ncols: int, **kwargs: Any) -> None:
    """One legend below every panel: each entry once, however many panels drew it."""
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=ncols, frameon=False, **kwargs)


def _save(fig: Figure, path: Path) -> None:
    """Every figure at one resolution, so the report's figures read at one size."""
    fig.savefig(path, dpi=110)


def _plain_y(ax: Any) -> None:
    """Absolute tick values: differences between methods can be 1e-4 of the value."""
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)


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


def _rank_series(td: pd.DataFrame, value: str) -> list[tuple[str, pd.DataFrame]]:
    """(method, aggregate by width) per main-axis method; reduced adds its ``ranks`` axis."""
    main = td[td["axis"] == "main"]
    out = []
    for method in sorted(main["method"].dropna().unique(), key=method_key):
        rows = main[main["method"] == method]
        if method == "reduced":
            d = rows.iloc[0]
            ranks = td[(td["method"] == "reduced") & (td["axis"] == "ranks")
                       & (td["factors"] == d["factors"]) & (td["ortho"] == d["ortho"])
                       & (td["extraction"] == d["extraction"])]
            rows = pd.concat([rows, ranks])
        out.append((method, aggregate(rows, "width", value)))
    return out


def fig_rank(ft: pd.DataFrame, path: Path) -> str | None:
    """Main metric vs rank/basis width, a line per method with a 95% CI band over seeds."""
    tasks = tasks_of(ft)
    if not tasks:
        return "no successful fine-tuning trials"
    fig, axes = _task_panels(tasks, w=6.0, h=4.6)
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
            color = method_color(method, "black")
            if agg["width"].isna().all():  # none / full: no rank, a reference level
                mean, ci = agg["mean"].iloc[0] * factor, agg["ci"].iloc[0] * factor
                name = method_legend(method)
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
            name = method_legend(method)
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
    _legend(fig, handles, ncols=min(len(handles), 2 * len(tasks)))
    _save(fig, path)
    return None


def _search_front(pareto: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """The search's Pareto points for a task from ``pareto.parquet`` (may lack ``task``)."""
    if pareto is None or pareto.empty:
        return pd.DataFrame(columns=["trainable_params", "main"])
    p = pareto[pareto["task"] == task] if "task" in pareto.columns else pareto
    p = p.assign(trainable_params=pd.to_numeric(p["trainable_params"], errors="coerce"),
                 main=pd.to_numeric(p["main"], errors="coerce"))
    return p[(p["trainable_params"] > 0) & p["main"].notna()].sort_values("trainable_params")


def fig_params(ft: pd.DataFrame, pareto: pd.DataFrame | None, path: Path) -> str | None:
    """Main metric vs trainable parameters (log x), with the Pareto front of the configs."""
    tasks = tasks_of(ft)
    if not tasks:
        return "no successful fine-tuning trials"
    fig, axes = _task_panels(tasks, w=6.2, h=4.8)
    handles: dict[str, Any] = {}
    for ax, task in zip(axes, tasks, strict=True):
        _, lower = task_info(task)
        td = ft[ft["task"] == task]
        front_p = _search_front(pareto, task)
        # The search's front is in raw metric units, so draw raw values beside it.
        value = "main" if len(front_p) else _value(td)
        agg = aggregate(td, "label", value)
        agg = agg[agg["mean"].notna()]
        main_labels = set(td[td["axis"] == "main"]["label"])
        factor, suffix = _scale(np.abs(agg["mean"].to_numpy(float))
                                + np.nan_to_num(agg["ci"].to_numpy(float)))
        for _, r in agg[~(agg["params"] > 0)].iterrows():
            name = f"{r['label']} (0 params)"
            h = ax.axhline(r["mean"] * factor, color=method_color(r["method"], "grey"),
                           ls="--", lw=1.5, label=name)
            handles.setdefault(name, h)
        pts = agg[agg["params"] > 0].reset_index(drop=True)
        for _, r in pts.iterrows():
            color = method_color(r["method"], "black")
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
    _legend(fig, handles, ncols=min(len(handles), 2 * len(tasks)), fontsize="small")
    _save(fig, path)
    return None


def fig_ablation(ft: pd.DataFrame, axis: str, key: str, title: str, path: Path,
                  horizontal: bool) -> str | None:
    """Bars of the paired change in the main metric vs no fine-tuning, one panel per task."""
    table = ablation_table(ft, axis, key)
    if table.empty:
        return f"no successful reduced trials for the `{axis}` axis"
    tasks = table["task"].unique().tolist()
    n_bars = int(table.groupby("task").size().max())
    if horizontal:  # panels stacked, so the long subset names are written once per row
        fig = _new_figure(1, len(tasks), w=9.0, h=1.5 + 0.45 * n_bars)
        axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    else:
        fig, axes = _task_panels(tasks, w=max(4.6, 1.1 * n_bars + 2.4), h=4.4)
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
        labels = [key_label(key, r).replace(" [default]", f"{sep}[default]")
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


def _one_extraction(df: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The extraction an analysis figure shows (``choose_extraction``) and its rows: one
    extraction per figure, as the claims read it."""
    ext = choose_extraction(df)
    return ext, df[df["extraction"] == ext]


def _pair_matrix(o: pd.DataFrame, col: str, factors: list[str]) -> np.ndarray:
    m = np.full((len(factors), len(factors)), np.nan)
    means = o.groupby(["factor_a", "factor_b"])[col].mean()
    for (a, b), v in means.items():
        if a in factors and b in factors:
            i, j = factors.index(a), factors.index(b)
            m[i, j] = m[j, i] = v
    return m


def _factors(o: pd.DataFrame) -> list[str]:
    """The factors of the overlap pairs, in FACTORS order, unknown ones last."""
    present = set(o["factor_a"].dropna()) | set(o["factor_b"].dropna())
    return [a for a in FACTORS if a in present] + sorted(present - set(FACTORS))


def fig_disentanglement(o_all: pd.DataFrame, path: Path) -> str | None:
    """Heatmaps: smallest principal angle and scale-invariant distance, mined vs random."""
    ext, o = _one_extraction(o_all)
    if ext is None:
        return "no rows in `overlaps.parquet`"
    factors = _factors(o)
    fig = _new_figure(2, 2, w=5.0, h=4.3)
    axes = fig.subplots(2, 2)
    rows = [("col_angle_min", "smallest principal angle [degrees]", (0.0, 90.0)),
            ("scale_inv_distance", "scale-invariant distance\n(0 shared, 1 orthogonal)",
             (0.0, 1.0))]
    for (col, unit, (vmin, vmax)), pair in zip(rows, axes, strict=True):
        for ax, prefix, name in zip(pair, ("", "rand_"), ("mined subspaces", "random baseline"),
                                    strict=True):
            m = _pair_matrix(o, prefix + col, factors)
            im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
            for i in range(len(factors)):
                for j in range(len(factors)):
                    if np.isfinite(m[i, j]):
                        bright = (m[i, j] - vmin) / (vmax - vmin) > 0.6
                        ax.text(j, i, f"{m[i, j]:.2f}" if vmax <= 1 else f"{m[i, j]:.1f}",
                                ha="center", va="center", fontsize=9,
                                color="black" if bright else "white")
            ax.set_xticks(range(len(factors)), factors, rotation=30, ha="right")
            ax.set_yticks(range(len(factors)), factors)
            ax.set_title(f"{name}: {unit.splitlines()[0]}", fontsize="medium")
        fig.colorbar(im, ax=list(pair), label=unit, shrink=0.9)
    fig.suptitle(f"Factor-pair disentanglement, column spaces, mean over "
                 f"{o['layer'].nunique()} layers ({ext} extraction)")
    _save(fig, path)
    return None


def fig_disentanglement_depth(o_all: pd.DataFrame, path: Path) -> str | None:
    """Scale-invariant distance per factor pair vs block depth, random baseline dashed."""
    ext, o = _one_extraction(o_all)
    if ext is None:
        return "no rows in `overlaps.parquet`"
    o = o.copy()
    parsed = [layer_depth(str(layer)) for layer in o["layer"]]
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
        for (a, b), g in ok.groupby(["factor_a", "factor_b"], sort=False):
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
    fig.suptitle(f"Factor-pair disentanglement by depth ({ext} extraction, column spaces)")
    _legend(fig, handles, ncols=4, fontsize="small")
    _save(fig, path)
    return None


def _spectrum_layers(s: pd.DataFrame, n: int = 4) -> list[str]:
    """A few layers spread over depth, of one module type (attention qkv when there is one)."""
    layers = list(dict.fromkeys(s["layer"]))
    qkv = [x for x in layers if x.endswith("attn.qkv")]
    pool = qkv or layers
    pool = sorted(pool, key=lambda x: (layer_depth(x)[1] or 0, layer_depth(x)[0]))
    if len(pool) <= n:
        return pool
    return [pool[round(float(i))] for i in np.linspace(0, len(pool) - 1, n)]


def fig_spectra(s_all: pd.DataFrame, path: Path) -> str | None:
    """Singular values per factor for a few layers; the kept rank and the cliff marked."""
    ext, s = _one_extraction(s_all)
    if ext is None:
        return "no rows in `spectra.parquet`"
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
        for factor, g in sorted(sl.groupby("factor"), key=lambda kv: factor_key(kv[0])):
            g = g.sort_values("index")
            x = g["index"].to_numpy() + 1
            y = np.clip(g["value"].to_numpy(dtype=float), 1e-12, None)
            color = FACTOR_COLORS.get(factor, "black")
            (h,) = ax.plot(x, y, marker=".", color=color, lw=1.6, label=factor)
            handles.setdefault(factor, h)
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
    fig.suptitle(f"Singular spectra of the extracted factor updates ({ext} extraction)")
    _legend(fig, handles, ncols=min(len(handles), 6))
    _save(fig, path)
    return None
