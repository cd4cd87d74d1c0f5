"""The report's Markdown: one function per section, plus the paper's own tables beside ours.

Each section takes the frames it shows and returns its Markdown; a section with nothing to
show says so in one line rather than being left out, so a partial study's report keeps the
same headings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from results.claims import Claim, claims, fmt_difference, mean_ci, paired_differences, task_info
from results.report.load import StudyData
from results.report.names import (
    factor_key,
    fmt_int,
    key_label,
    layer_depth,
    lower_is_better,
    method_key,
    metric_label,
)
from results.report.stats import ablation_table, tasks_of

# The per-task columns of the paper-layout tables: (column, short header).
TASK_LAYOUT = {
    "print_attack": [("test__pc_acc", "Acc"), ("test__pc_comp", "Comp"), ("test__pc_nc", "NC"),
                     ("test__depth_absrel", "AbsRel"), ("test__depth_delta1", "δ1"),
                     ("test__spoof_acc", "spoof acc")],
    "cross_domain": [("in_domain__pc_acc", "in-domain Acc"), ("in_domain__pc_nc", "in-domain NC"),
                     ("cross_domain__pc_acc", "cross Acc"), ("cross_domain__pc_nc", "cross NC"),
                     ("gap__pc_acc", "Acc gap")],
}

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
    return main.assign(_order=main["method"].map(method_key))


def section_main_tables(ft: pd.DataFrame) -> str:
    """Method x task (main metric), then per task the paper's layout with every metric."""
    main = _main_rows(ft)
    tasks = tasks_of(main)
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
    tasks = tasks_of(main)
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
    table = ablation_table(ft, axis, key)
    if table.empty:
        return f"No successful reduced trials on the `{axis}` axis.\n"
    rows = []
    for _, r in table.iterrows():
        rows.append([r["task"], key_label(key, r), fmt_params(r["params"]),
                     _fmt_value(r["mean"], r["ci"], 6), _fmt_value(r["delta"], r["delta_ci"], 6),
                     int(r["n"])])
    return md_table(["task", what, "trainable", "main (mean ± CI)",
                     "Δ vs no fine-tuning, same seed (mean ± CI)", "seeds"], rows,
                    ["l", "l", "r", "r", "r", "r"]) + "\n"


def section_disentanglement(o: pd.DataFrame) -> str:
    if o.empty or o["extraction"].dropna().empty:
        return "No disentanglement rows (`overlaps.parquet` missing or empty).\n"
    rows = []
    for (ext, a, b), g in o.groupby(["extraction", "factor_a", "factor_b"], sort=False):
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
    s["_depth"] = [layer_depth(str(x))[1] for x in s["layer"]]
    per = s.drop_duplicates(["extraction", "layer", "factor"])
    rows = []
    for (ext, factor), g in sorted(per.groupby(["extraction", "factor"]),
                                 key=lambda kv: (kv[0][0], factor_key(kv[0][1]))):
        depth = g["_depth"].dropna()
        half = depth.median() if len(depth) else None
        shallow = g[g["_depth"] <= half] if half is not None else g.iloc[0:0]
        deep = g[g["_depth"] > half] if half is not None else g.iloc[0:0]
        conv = g["converged"].dropna()
        rows.append([ext, factor, fmt_int(g["rank"].median()), fmt_int(g["adapters"].max()),
                     f"{g['cliff_rank'].median():.1f}" if g["cliff_rank"].notna().any()
                     else "–",
                     f"{shallow['cliff_rank'].median():.1f}" if len(shallow) else "–",
                     f"{deep['cliff_rank'].median():.1f}" if len(deep) else "–",
                     f"{conv.astype(bool).mean():.0%}" if len(conv) else "–",
                     f"{g['irls_weight_min'].min():.3f}" if g["irls_weight_min"].notna().any()
                     else "–", g["layer"].nunique()])
    return ("Per factor over layers: the basis rank kept, the rank the largest-gap rule picks "
            "(the cliff; median overall, in the shallower and the deeper half of the blocks), "
            "IRLS convergence and the smallest IRLS adapter weight (a low value flags an "
            "outlier adapter).\n\n"
            + md_table(["extraction", "factor", "rank kept", "adapters", "cliff (median)",
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


def section_failed(t: pd.DataFrame) -> str:
    bad = t[t["status"] != "ok"]
    if bad.empty:
        return "All trials finished `ok`.\n"
    rows = [[r.get("trial_id", "?"), r["status"],
             (str(r["error"])[:160] if "error" in r and pd.notna(r["error"]) else "")]
            for _, r in bad.iterrows()]
    return md_table(["trial", "status", "error (truncated)"], rows, ["l", "l", "l"]) + "\n"
