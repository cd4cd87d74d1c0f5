"""The paper's four claims, each with a verdict computed from a study's tables.

A study is only worth reading for what it says about the paper, so each claim gets a verdict
from its own numbers beside the null it must beat, instead of leaving a reader to eyeball
the method tables. Method comparisons are paired on the seed: one seed fixes a task's scenes
and training batches, so the spread between seeds is shared by every method and cancels in
the per-seed difference, which unpaired means would drown in.

``claims(study_dir)`` (or a mapping of the ``trials``, ``overlaps`` and ``evidence`` frames)
returns one ``Claim`` per claim; ``paired_differences(trials, task)`` is the seed-paired
comparison table behind claims 3 and 4. Missing tables or columns give the verdict
``not measured`` with the reason, never an exception.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrsub.errors import DataError
from attrsub.methods import PAPER_METHOD, REGISTRY
from results.schema import read_frame

NOT_MEASURED = "not measured"
REAL_TASK = "real"
# Claim 3's baselines: every method with a width but the paper's (LoRA, PiSSA, PSV, random
# basis), in the registry's order.
BASELINES = tuple(m for m in REGISTRY.where(takes_rank=True) if m != PAPER_METHOD)
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    *((PAPER_METHOD, b) for b in BASELINES), (PAPER_METHOD, "full"),
)
# Claim 3: the reduced method's trainable parameters may be at most this fraction of LoRA's.
PARAM_FRACTION = 0.25
# Claim 2: the paper reports scale-invariant distances "mostly above 0.5".
DISTANCE_MIN = 0.5
# Claim 2: data subspaces may overlap at most this many times as much as random ones.
OVERLAP_FACTOR = 2.0
_TRAINED_ORDER = (PAPER_METHOD, *(m for m in REGISTRY.where(trains=True) if m != PAPER_METHOD))
PAIR_NEEDED = ("stage", "axis", "task", "method", "seed", "main", "status", "trainable_params")
PAIR_COLUMNS = ("task", "a", "b", "mean", "ci", "n", "wins", "frac_better", "params_a",
                "params_b", "param_ratio")
STATEMENTS = {
    1: "Factor subspaces exist: adapters trained on one factor share update directions "
       "that adapters of the other factors do not.",
    2: "The factor subspaces are disentangled: near-orthogonal across factors.",
    3: "The integrated reduced subspace beats LoRA, PiSSA, PSV and a random basis at a "
       "quarter of LoRA's trainable parameters or less.",
    4: "It generalises to real captures (task `real`).",
}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: its verdict, the numbers behind it and the null they beat."""

    number: int
    statement: str
    verdict: str
    evidence: str
    null: str


# ---------------------------------------------------------------------------------------------
# Statistics


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95% Student-t interval (NaN for n < 2) and n, NaNs dropped."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) < 2:
        return float(v.mean()), math.nan, 1
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()), half, len(v)


def choose_extraction(df: pd.DataFrame) -> str | None:
    """The extraction a study's analysis tables are read at: ``irls`` (the paper's) when
    present, else the first by name; None when the table has none."""
    if "extraction" not in df.columns:
        return None
    values = df["extraction"].dropna().unique().tolist()
    if not values:
        return None
    return "irls" if "irls" in values else sorted(values)[0]


_TASK_CACHE: dict[str, tuple[str, bool]] = {}


def task_info(task: str) -> tuple[str, bool]:
    """(main metric name, lower is better) from attrsub's task registry; ``("main", True)``,
    the direction of every current task, when the task is unknown. Cached: the report asks
    once per table cell."""
    if task not in _TASK_CACHE:
        from attrsub.errors import AttrsubError
        from attrsub.tasks import get_task

        try:
            t = get_task(task)
            _TASK_CACHE[task] = (t.main_metric, bool(t.lower_is_better))
        except AttrsubError:
            _TASK_CACHE[task] = ("main", True)
    return _TASK_CACHE[task]


def lower_is_better(task: str) -> bool:
    """The task's direction (``task_info``)."""
    return task_info(task)[1]


def _missing_columns(df: pd.DataFrame, needed: Sequence[str]) -> list[str]:
    return [c for c in needed if c not in df.columns]


def default_pairs(methods: Sequence[str] | set[str]) -> list[tuple[str, str]]:
    """DEFAULT_PAIRS, then every trained method present against zero-shot (``m - none``)."""
    present = set(methods)
    trained = [m for m in _TRAINED_ORDER if m in present]
    trained += sorted(m for m in present - {"none", *_TRAINED_ORDER} if isinstance(m, str))
    return [*DEFAULT_PAIRS, *((m, "none") for m in trained)]


def paired_differences(
    trials: pd.DataFrame, task: str, pairs: Sequence[tuple[str, str]] | None = None
) -> pd.DataFrame:
    """Per pair (a, b): the per-seed difference main(a) - main(b) over the seeds both ran.

    Rows: successful main-axis fine-tuning trials of ``task``. Columns: PAIR_COLUMNS, i.e.
    the mean difference, its 95% Student-t half-width (NaN for one seed), n seeds, ``wins``
    (seeds where a is better, in the task's direction) and ``frac_better`` = wins / n, and
    each method's trainable parameters (first row) with their ratio a / b (NaN when b trains
    nothing). ``pairs`` defaults to ``default_pairs`` of the methods present; pairs with an
    absent method are skipped. Raises DataError when the trials lack a needed column.
    """
    absent = _missing_columns(trials, PAIR_NEEDED)
    if absent:
        raise DataError(f"the trials table lacks column(s) {', '.join(absent)} needed to pair "
                        f"methods on seeds")
    t = trials[(trials["stage"] == "finetune") & (trials["axis"] == "main")
               & (trials["status"] == "ok") & (trials["task"] == task)]
    t = t.assign(main=pd.to_numeric(t["main"], errors="coerce"),
                 trainable_params=pd.to_numeric(t["trainable_params"], errors="coerce"))
    t = t[t["main"].notna() & t["method"].notna() & t["seed"].notna()]
    methods = set(t["method"])
    lower = lower_is_better(task)
    per_seed = {m: g.groupby("seed")["main"].mean() for m, g in t.groupby("method")}
    params = {m: g["trainable_params"].iloc[0] for m, g in t.groupby("method", sort=False)}
    rows = []
    for a, b in default_pairs(methods) if pairs is None else pairs:
        if a not in methods or b not in methods:
            continue
        sa, sb = per_seed[a], per_seed[b]
        seeds = sa.index.intersection(sb.index)
        d = (sa.loc[seeds] - sb.loc[seeds]).to_numpy(float)
        mean, ci, n = mean_ci(d.tolist())
        wins = int((d < 0).sum() if lower else (d > 0).sum())
        pa, pb = float(params[a]), float(params[b])
        rows.append({"task": task, "a": a, "b": b, "mean": mean, "ci": ci, "n": n,
                     "wins": wins, "frac_better": wins / n if n else math.nan,
                     "params_a": pa, "params_b": pb,
                     "param_ratio": pa / pb if pb > 0 else math.nan})
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Loading


def _load(source: str | os.PathLike[str] | Mapping[str, pd.DataFrame | None]
          ) -> tuple[dict[str, pd.DataFrame | None], dict[str, str]]:
    """The three tables (None when unavailable) and, per unavailable table, why."""
    tables: dict[str, pd.DataFrame | None] = {}
    why: dict[str, str] = {}
    for name in ("trials", "overlaps", "evidence"):
        if isinstance(source, Mapping):
            df = source.get(name)
            if df is None:
                why[name] = f"no `{name}` table was given"
        else:
            path = Path(source) / f"{name}.parquet"
            df = None
            if not path.is_file():
                why[name] = f"`{path.name}` is missing"
            else:
                try:
                    df = read_frame(path)
                except Exception as exc:  # pyarrow raises several types for a damaged file
                    why[name] = f"`{path.name}` is unreadable ({type(exc).__name__})"
        if df is not None and df.empty:
            why[name] = f"the `{name}` table has no rows"
            df = None
        tables[name] = df
    return tables, why


def claims(source: str | os.PathLike[str] | Mapping[str, pd.DataFrame | None]) -> list[Claim]:
    """The paper's four claims judged on a study folder (or ``{"trials": df, "overlaps": df,
    "evidence": df}``). Verdict rules:

    1. ``attrsub.subspace.evidence.claim_summary`` over the evidence rows of the chosen extraction
       (``choose_extraction``; its lowest seed): a side is factor-specific when within-
       factor overlap beats cross-factor with permutation p < 0.01, held-out energy of
       the own factor beats the others', and the side left its LoRA init; "holds" on both
       sides, "holds on the <side> side only", else "does not hold".
    2. Over the chosen extraction's rows of ``overlaps``: "holds" when at least half of the
       (layer, factor pair) rows have scale-invariant distance > 0.5 AND the mean
       projection overlap is at most 2x that of random subspaces; else "does not hold".
    3. Per synthetic task (every task but ``real``) with the seed-paired differences: the
       task holds when, for every baseline of lora, pissa, psv, random present, the 95% CI
       of reduced - baseline lies entirely on the better side of 0 (upper end < 0 when lower
       is better, lower end > 0 otherwise) AND reduced trains at most 1/4 of LoRA's
       parameters (LoRA absent: the condition is unchecked and the task does not hold).
       "holds" on every task, "holds on T1, T2" on some, else "does not hold"; a failed
       parameter condition is stated in the verdict. A task with a one-seed pair (no CI)
       cannot hold; "not measured" when no synthetic task has reduced and a baseline, or
       none has every pair on 2 seeds or more.
    4. On task ``real``: "holds" when the CI of reduced - none lies entirely on the better
       side of 0 (reduced beats zero-shot significantly) AND the CI of reduced - lora
       reaches 0 or the better side (reduced is not significantly worse than LoRA); "not
       measured" when the task, reduced, none or LoRA is absent or a pair has one seed.
    """
    tables, why = _load(source)
    out = []
    for number, judge in ((1, _claim1), (2, _claim2), (3, _claim3), (4, _claim4)):
        try:
            verdict, evidence, null = judge(tables, why)
        except DataError as exc:
            verdict, evidence, null = NOT_MEASURED, str(exc), ""
        except (KeyError, TypeError, ValueError) as exc:  # odd partial tables: say so, go on
            verdict, evidence, null = NOT_MEASURED, f"{type(exc).__name__}: {exc}", ""
        out.append(Claim(number, STATEMENTS[number], verdict, evidence, null))
    return out


# ---------------------------------------------------------------------------------------------
# Claim 1: factor subspaces exist


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.2g}"


def _claim1(tables: dict[str, pd.DataFrame | None], why: dict[str, str]
            ) -> tuple[str, str, str]:
    from attrsub.subspace.evidence import ALL_FACTORS, ALL_LAYERS, SIDES, claim_summary

    null = ("random k-dimensional subspaces overlap k/d; the permutation test shuffles the "
            "factor labels over the adapters (group sizes kept); a random subspace of the "
            "extracted size captures d'/d of a held-out update's energy; an init overlap above "
            "0.5 means the side never left its LoRA init.")
    ev = tables["evidence"]
    if ev is None:
        return NOT_MEASURED, why["evidence"], null
    need = ("extraction", "seed", "measure", "side", "layer", "factor", "adapter", "within",
            "cross", "random", "p_value", "permutations")
    absent = _missing_columns(ev, need)
    if absent:
        return NOT_MEASURED, f"the evidence table lacks column(s) {', '.join(absent)}", null
    # A reader that fills absent columns with nulls (the report's) must not turn a missing
    # p or measure into a "does not hold".
    empty = [c for c in ("measure", "side", "within", "random", "p_value") if ev[c].isna().all()]
    if empty:
        return NOT_MEASURED, f"the evidence table has no values in {', '.join(empty)}", null
    ext = choose_extraction(ev)
    ev = ev[ev["extraction"] == ext]
    ev = ev[ev["seed"] == ev["seed"].min()]
    overall = ev[(ev["layer"] == ALL_LAYERS) & (ev["factor"] == ALL_FACTORS)]
    rows = overall.astype(object).where(overall.notna(), None).to_dict("records")
    s = claim_summary(rows)
    if all(s[side]["overlap_within"] is None for side in SIDES):
        return (NOT_MEASURED, f"no overall overlap rows at the {ext} extraction (they need at "
                "least two factors and more adapters than factors)", null)
    parts = []
    for side in SIDES:
        v = s[side]
        perms = f" over {int(v['permutations'])} permutations" if v["permutations"] else ""
        parts.append(
            f"{side} side ({v['status']}): overlap within {_num(v['overlap_within'])} vs "
            f"cross {_num(v['overlap_cross'])} (random {_num(v['overlap_random'])}), "
            f"p = {_p(v['p_value'])}{perms}; held-out energy own {_num(v['heldout_own'])}, "
            f"other {_num(v['heldout_other'])}, random {_num(v['heldout_random'])}; "
            f"init overlap {_num(v['init_overlap'])}")
    return s["verdict"], f"{ext} extraction, mean over layers. " + ". ".join(parts) + ".", null


# ---------------------------------------------------------------------------------------------
# Claim 2: disentangled


def _claim2(tables: dict[str, pd.DataFrame | None], why: dict[str, str]
            ) -> tuple[str, str, str]:
    null = ("random subspaces of the same sizes (`rand_` columns), whose distance is itself "
            "high in a wide layer, so near-orthogonality alone is not evidence; the overlap "
            f"must stay within {OVERLAP_FACTOR:g}x the random one.")
    o = tables["overlaps"]
    if o is None:
        return NOT_MEASURED, why["overlaps"], null
    cols = ("extraction", "scale_inv_distance", "rand_scale_inv_distance", "col_angle_min",
            "rand_col_angle_min", "overlap", "rand_overlap")
    absent = _missing_columns(o, cols)
    if absent:
        return NOT_MEASURED, f"the overlaps table lacks column(s) {', '.join(absent)}", null
    ext = choose_extraction(o)
    o = o[o["extraction"] == ext]
    m = {c: pd.to_numeric(o[c], errors="coerce") for c in cols[1:]}
    dist = m["scale_inv_distance"].dropna()
    if dist.empty:
        return NOT_MEASURED, f"no finite scale-invariant distances at the {ext} extraction", null
    frac = float((dist > DISTANCE_MIN).mean())
    ov, rand_ov = float(m["overlap"].mean()), float(m["rand_overlap"].mean())
    if not math.isfinite(rand_ov):
        return NOT_MEASURED, f"no random-baseline overlaps at the {ext} extraction", null
    holds = frac >= 0.5 and ov <= OVERLAP_FACTOR * rand_ov
    evidence = (
        f"{ext} extraction, {len(dist)} (layer, pair) rows: mean scale-invariant distance "
        f"{_num(dist.mean())} (random {_num(m['rand_scale_inv_distance'].mean())}), "
        f"{frac:.0%} of rows above {DISTANCE_MIN:g}; mean smallest principal angle "
        f"{_num(m['col_angle_min'].mean(), 1)}° "
        f"(random {_num(m['rand_col_angle_min'].mean(), 1)}°); mean projection overlap "
        f"{_num(ov)} (random {_num(rand_ov)}, "
        f"{_num(ov / rand_ov if rand_ov > 0 else math.nan, 2)}x).")
    return ("holds" if holds else "does not hold"), evidence, null


# ---------------------------------------------------------------------------------------------
# Claims 3 and 4: the reduced subspace against the baselines


def _ratio_text(r: float) -> str:
    """A parameter ratio as the paper would say it: 1/4, 1/2, or 0.37."""
    if not math.isfinite(r) or r <= 0:
        return "?"
    inv = 1.0 / r
    if round(inv) >= 1 and abs(inv - round(inv)) < 0.02 * inv:
        return f"1/{round(inv)}"
    return f"{r:.2g}"


def _better(mean: float, ci: float, lower: bool) -> bool:
    """The whole 95% CI of a - b lies on a's better side of 0 (False without a CI)."""
    return bool(mean + ci < 0) if lower else bool(mean - ci > 0)


def _not_worse(mean: float, ci: float, lower: bool) -> bool:
    """The 95% CI of a - b reaches 0 or a's better side: a is not significantly worse."""
    return bool(mean - ci <= 0) if lower else bool(mean + ci >= 0)


def fmt_difference(mean: float, ci: float) -> str:
    """``-0.0098 ± 0.0017``: the CI to two significant digits, the mean to the same decimals
    (differences between methods can be 1e-6 of the metric, so no fixed decimals)."""
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(ci):
        return f"{mean:.4g}"
    if ci <= abs(mean) * 1e-6:  # identical per-seed differences
        return f"{mean:.4g} ± 0"
    d = min(12, max(1, 1 - math.floor(math.log10(max(ci, abs(mean) * 1e-3)))))
    return f"{mean:.{d}f} ± {ci:.{d}f}"


def _diff_text(r: pd.Series) -> str:
    text = fmt_difference(r["mean"], r["ci"])
    one = "" if math.isfinite(r["ci"]) else ", one seed: no CI"
    return f"{r['a']} - {r['b']} {text} (n {int(r['n'])}{one})"


def _main_tasks(trials: pd.DataFrame) -> list[str]:
    t = trials[(trials["stage"] == "finetune") & (trials["axis"] == "main")
               & (trials["status"] == "ok")]
    return sorted(str(x) for x in t["task"].dropna().unique())


def _pairable_trials(tables: dict[str, pd.DataFrame | None], why: dict[str, str]
                     ) -> tuple[pd.DataFrame | None, str]:
    """The trials table when it can be paired on seeds, else None and why not."""
    t = tables["trials"]
    if t is None:
        return None, why["trials"]
    absent = _missing_columns(t, PAIR_NEEDED)
    if absent:
        return None, f"the trials table lacks column(s) {', '.join(absent)}"
    return t, ""


def _claim3(tables: dict[str, pd.DataFrame | None], why: dict[str, str]
            ) -> tuple[str, str, str]:
    null = ("each baseline on the same seeds (same scenes and batches): the 95% Student-t CI "
            "over seeds of the per-seed difference must exclude 0 in reduced's favour; and "
            "reduced's trainable parameters at most 1/4 of LoRA's.")
    t, problem = _pairable_trials(tables, why)
    if t is None:
        return NOT_MEASURED, problem, null
    tasks = [x for x in _main_tasks(t) if x != REAL_TASK]
    judged: list[str] = []
    holding, parts, param_notes, testable = [], [], [], 0
    for task in tasks:
        lower = lower_is_better(task)
        table = paired_differences(t, task, [("reduced", b) for b in BASELINES])
        if table.empty:
            continue
        untested = bool((table["n"] < 2).any())
        testable += not untested
        beats = all(_better(r["mean"], r["ci"], lower) for _, r in table.iterrows())
        lora = table[table["b"] == "lora"]
        if lora.empty:
            ratio, params_ok, ptext = math.nan, False, "LoRA absent: parameter ratio unchecked"
        else:
            ratio = float(lora["param_ratio"].iloc[0])
            params_ok = math.isfinite(ratio) and ratio <= PARAM_FRACTION + 1e-12
            ptext = (f"reduced uses {_ratio_text(ratio)} of LoRA's parameters"
                     if math.isfinite(ratio) else "parameter ratio unknown (no trainable_params)")
            if math.isfinite(ratio) and not params_ok:
                param_notes.append((task, f"reduced uses {_ratio_text(ratio)} of LoRA's "
                                          f"parameters, not <= 1/4"))
        ok = beats and params_ok
        judged.append(task)
        if ok:
            holding.append(task)
        diffs = "; ".join(_diff_text(r) for _, r in table.iterrows())
        parts.append(f"`{task}` ({'holds' if ok else 'does not hold'}; "
                     f"{'lower' if lower else 'higher'} is better): {diffs}; {ptext}")
    if not parts:
        return (NOT_MEASURED, "no synthetic task has successful main-axis trials of reduced "
                "and a baseline (lora, pissa, psv, random)", null)
    if not testable:
        return (NOT_MEASURED, "every pair has fewer than 2 seeds, so no CI can exclude 0. "
                + ". ".join(parts) + ".", null)
    verdict = ("holds" if len(holding) == len(judged) else
               f"holds on {', '.join(holding)}" if holding else "does not hold")
    notes = {n for _, n in param_notes}
    if len(notes) == 1 and len(param_notes) == len(judged):  # the same on every task
        verdict += f" ({notes.pop()})"
    elif param_notes:
        verdict += " (" + "; ".join(f"on {tk}: {n}" for tk, n in param_notes) + ")"
    return verdict, ". ".join(parts) + ".", null


def _claim4(tables: dict[str, pd.DataFrame | None], why: dict[str, str]
            ) -> tuple[str, str, str]:
    null = ("zero-shot (no fine-tuning) and LoRA on the same seeds: reduced - none must "
            "exclude 0 in reduced's favour, reduced - lora must not exclude 0 against it.")
    t, problem = _pairable_trials(tables, why)
    if t is None:
        return NOT_MEASURED, problem, null
    if REAL_TASK not in _main_tasks(t):
        return NOT_MEASURED, f"no successful main-axis trials of task `{REAL_TASK}`", null
    lower = lower_is_better(REAL_TASK)
    table = paired_differences(t, REAL_TASK, [("reduced", "none"), ("reduced", "lora")])
    have = set(table["b"])
    if have != {"none", "lora"}:
        lacking = sorted({"none", "lora"} - have)
        return (NOT_MEASURED, f"task `{REAL_TASK}` lacks successful trials of reduced or of "
                f"{', '.join(lacking)}", null)
    none = table[table["b"] == "none"].iloc[0]
    lora = table[table["b"] == "lora"].iloc[0]
    evidence = f"`{REAL_TASK}`: {_diff_text(none)}; {_diff_text(lora)}"
    if none["n"] < 2 or lora["n"] < 2:
        return NOT_MEASURED, evidence + "; fewer than 2 seeds, so no CI.", null
    beats = _better(none["mean"], none["ci"], lower)
    close = _not_worse(lora["mean"], lora["ci"], lower)
    evidence += (f"; beats zero-shot significantly: {'yes' if beats else 'no'}; "
                 f"significantly worse than LoRA: {'no' if close else 'yes'}.")
    return ("holds" if beats and close else "does not hold"), evidence, null
