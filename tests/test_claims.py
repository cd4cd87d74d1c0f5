"""The claims' verdicts from small synthetic tables: seed-paired differences against a hand
computation, the parameter condition of claim 3, and tables that are missing or partial."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attrsub.errors import DataError
from results.claims import (
    NOT_MEASURED,
    Claim,
    choose_extraction,
    claims,
    default_pairs,
    paired_differences,
)

# Seeds change the scenes: a shift shared by every method, far larger than their differences.
SEED_SHIFT = {0: 0.0, 1: 0.5, 2: -0.3, 3: 1.0, 4: 0.2}
NOISE = {0: 0.001, 1: -0.002, 2: 0.0005, 3: 0.0, 4: 0.0015}


def _row(task: str, method: str, seed: int, main: float, params: int, **kw: Any
         ) -> dict[str, Any]:
    return {"stage": "finetune", "axis": "main", "task": task, "method": method, "seed": seed,
            "main": main, "trainable_params": params, "status": "ok", **kw}


def _trials(task: str = "print_attack", reduced_params: int = 1000,
            seeds: tuple[int, ...] = tuple(SEED_SHIFT)) -> pd.DataFrame:
    """Reduced 0.01 better than LoRA on every seed (plus small noise), the others worse."""
    gap = {"none": 0.05, "full": 0.0, "lora": 0.0, "pissa": 0.002, "psv": 0.003,
           "random": 0.004, "reduced": -0.01}
    params = {"none": 0, "full": 100_000, "lora": 4000, "pissa": 4000, "psv": 1000,
              "random": 1000, "reduced": reduced_params}
    rows = [_row(task, m, s, 1.0 + SEED_SHIFT[s] + g + (NOISE[s] if m == "reduced" else 0.0),
                 params[m]) for s in seeds for m, g in gap.items()]
    return pd.DataFrame(rows)


def test_paired_differences_pair_on_the_seed() -> None:
    t = _trials()
    extra = pd.DataFrame([
        _row("print_attack", "reduced", 9, -5.0, 1000),  # no LoRA at seed 9: unpaired, dropped
        _row("print_attack", "lora", 0, -5.0, 4000, status="failed"),
        _row("print_attack", "lora", 0, -5.0, 4000, axis="ranks"),
        _row("cross_domain", "lora", 0, -5.0, 4000),
    ])
    t = pd.concat([t, extra]).sample(frac=1.0, random_state=0)  # row order must not matter
    # Unpaired, the seed shift hides the gap: the CI of the difference of means holds 0.
    clean = t[(t.status == "ok") & (t.axis == "main") & (t.task == "print_attack") & (t.seed < 9)]
    red, lora = (clean[clean.method == m]["main"] for m in ("reduced", "lora"))
    unpaired = stats.ttest_ind(red, lora)
    assert unpaired.pvalue > 0.5

    got = paired_differences(t, "print_attack").set_index(["a", "b"])
    d = np.array([-0.01 + NOISE[s] for s in SEED_SHIFT])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    r = got.loc[("reduced", "lora")]
    assert r["n"] == 5 and r["wins"] == 5 and r["frac_better"] == 1.0
    assert r["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert r["ci"] == pytest.approx(half, rel=1e-9)
    assert r["mean"] + r["ci"] < 0  # paired, the gap is clear
    assert r["params_a"] == 1000 and r["params_b"] == 4000 and r["param_ratio"] == 0.25
    assert math.isnan(got.loc[("reduced", "none"), "param_ratio"])  # none trains nothing
    assert list(got.index) == default_pairs(set(t.method))


def test_default_pairs_skip_absent_methods() -> None:
    t = _trials()
    t = t[t.method.isin(["none", "lora", "reduced"])]
    got = paired_differences(t, "print_attack")
    assert list(zip(got.a, got.b, strict=True)) == [("reduced", "lora"), ("reduced", "none"),
                                                    ("lora", "none")]
    assert paired_differences(t, "cross_domain").empty


def test_a_single_seed_has_no_ci() -> None:
    got = paired_differences(_trials(seeds=(2,)), "print_attack", [("reduced", "lora")])
    assert len(got) == 1 and got["n"].iloc[0] == 1
    assert got["mean"].iloc[0] == pytest.approx(-0.01 + NOISE[2])
    assert math.isnan(got["ci"].iloc[0])


def _by_number(cs: list[Claim]) -> dict[int, Claim]:
    assert [c.number for c in cs] == [1, 2, 3, 4]
    return {c.number: c for c in cs}


def test_claim3_needs_a_quarter_of_loras_parameters() -> None:
    good = _by_number(claims({"trials": _trials(reduced_params=1000)}))[3]
    assert good.verdict == "holds", good.evidence
    assert "1/4 of LoRA's parameters" in good.evidence
    half = _by_number(claims({"trials": _trials(reduced_params=2000)}))[3]
    assert half.verdict == "does not hold (reduced uses 1/2 of LoRA's parameters, not <= 1/4)"


def test_claim3_per_task_and_one_seed() -> None:
    t = pd.concat([_trials("print_attack"), _trials("cross_domain", reduced_params=2000)])
    c3 = _by_number(claims({"trials": t}))[3]
    assert c3.verdict.startswith("holds on print_attack (")
    one = _by_number(claims({"trials": _trials(seeds=(0,))}))[3]
    assert one.verdict == NOT_MEASURED and "fewer than 2 seeds" in one.evidence


def test_claim4_on_real_captures() -> None:
    real = _trials("real")
    c4 = _by_number(claims({"trials": pd.concat([_trials(), real])}))[4]
    assert c4.verdict == "holds", c4.evidence
    # reduced far worse than LoRA on every seed: significantly worse, so it does not hold
    worse = real.assign(main=np.where(real.method == "reduced", real.main + 0.04, real.main))
    assert _by_number(claims({"trials": worse}))[4].verdict == "does not hold"
    absent = _by_number(claims({"trials": _trials()}))[4]
    assert absent.verdict == NOT_MEASURED and "`real`" in absent.evidence


def _overlaps(dist: float, overlap: float) -> pd.DataFrame:
    rows = [{"extraction": ext, "layer": layer, "factor_a": a, "factor_b": b,
             "scale_inv_distance": dist, "rand_scale_inv_distance": 0.95,
             "col_angle_min": 70.0, "rand_col_angle_min": 80.0, "overlap": overlap,
             "rand_overlap": 0.05}
            for ext, layer, (a, b) in itertools.product(
                ("mean", "irls"), ("l0", "l1"), itertools.combinations("abc", 2))]
    return pd.DataFrame(rows)


def test_claim2_distance_and_overlap_against_random() -> None:
    assert _by_number(claims({"overlaps": _overlaps(0.8, 0.08)}))[2].verdict == "holds"
    assert _by_number(claims({"overlaps": _overlaps(0.3, 0.08)}))[2].verdict == "does not hold"
    c2 = _by_number(claims({"overlaps": _overlaps(0.8, 0.2)}))[2]
    assert c2.verdict == "does not hold" and "irls extraction, 6 (layer, pair) rows" in c2.evidence
    assert choose_extraction(_overlaps(0.8, 0.2)) == "irls"


def _evidence(p: float) -> pd.DataFrame:
    rows = []
    for side in ("col", "row"):
        common = {"extraction": "irls", "seed": 0, "side": side, "layer": "all",
                  "factor": "all", "adapter": None, "rank": 4, "dim": 64.0}
        rows += [{**common, "measure": "overlap", "within": 0.6, "cross": 0.1, "random": 0.06,
                  "p_value": p, "permutations": 2000},
                 {**common, "measure": "heldout", "within": 0.9, "cross": 0.1, "random": 0.06,
                  "p_value": None, "permutations": None}]
    return pd.DataFrame(rows)


def test_claim1_reuses_the_evidence_summary() -> None:
    c1 = _by_number(claims({"evidence": _evidence(0.001)}))[1]
    assert c1.verdict == "holds"
    assert "col side (factor-specific): overlap within 0.600 vs cross 0.100" in c1.evidence
    assert "p = 0.001 over 2000 permutations" in c1.evidence and "k/d" in c1.null
    assert _by_number(claims({"evidence": _evidence(0.2)}))[1].verdict == "does not hold"
    # a column a reader filled with nulls is missing, not a failed test
    nulls = _by_number(claims({"evidence": _evidence(0.001).assign(p_value=np.nan)}))[1]
    assert nulls.verdict == NOT_MEASURED and "no values in p_value" in nulls.evidence


def test_missing_tables_are_not_measured(tmp_path: Path) -> None:
    for source in (tmp_path, {}):
        cs = claims(source)
        assert all(c.verdict == NOT_MEASURED for c in cs), cs
    c = _by_number(claims(tmp_path))
    assert "`trials.parquet` is missing" in c[3].evidence
    assert "`evidence.parquet` is missing" in c[1].evidence
    (tmp_path / "overlaps.parquet").write_bytes(b"not parquet")
    assert "unreadable" in _by_number(claims(tmp_path))[2].evidence
    partial = _by_number(claims({"trials": _trials().drop(columns=["seed"]),
                                 "overlaps": _overlaps(0.8, 0.1).drop(columns=["rand_overlap"]),
                                 "evidence": _evidence(0.001).drop(columns=["p_value"])}))
    assert all(c.verdict == NOT_MEASURED for c in partial.values())
    assert "lacks column(s) seed" in partial[3].evidence
    assert "rand_overlap" in partial[2].evidence and "p_value" in partial[1].evidence
    with pytest.raises(DataError, match="lacks column"):
        paired_differences(_trials().drop(columns=["main"]), "print_attack")
