"""The study report from small but real Parquet tables: every figure, the expected table rows,
the claims' verdicts and the seed-paired differences, and a partial (interrupted) study that
still gets a report naming what is missing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from attrsub.adapters.update import Update
from attrsub.subspace.evidence import AdapterSet, evidence_rows
from attrsub.subspace.extract import ExtractConfig
from results.report import FIGURES, REPORT_NAME, main, pareto_front, write_report
from results.schema import (
    EVIDENCE_SCHEMA,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    study_rows,
    trials_schema,
    write_table,
)

FACTORS = ("texture", "geometry", "camera", "lighting")
LAYERS = ("aggregator.frame_blocks.0.attn.qkv", "aggregator.global_blocks.1.attn.qkv")
VERSION = "0.1.0+gabc1234"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ft(task: str, method: str, seed: int, axis: str = "main", rank: int | None = 4,
        factors: str = "+".join(FACTORS), ortho: str = "qr", extraction: str = "irls",
        **kw: Any) -> dict[str, Any]:
    reduced = method == "reduced"
    nf = len(factors.split("+"))
    width = {"reduced": (rank or 0) * nf, "psv": 16, "random": 16}.get(method)
    params = {"none": 0, "full": 100_000, "lora": 4096, "pissa": 4096}.get(
        method, (width or 0) ** 2 * 8)
    # Lower is better; reduced best, then the bases, LoRA, full; seeds shift every method.
    quality = {"none": 0.0, "full": -0.002, "lora": -0.004, "pissa": -0.003, "psv": -0.005,
               "random": -0.001, "reduced": -0.006 - 0.0005 * (rank or 0) / 4 - 0.0001 * nf}[method]
    main_value = 0.2 + 0.01 * seed + quality
    metrics = ({"test/pc_acc": main_value, "test/pc_comp": main_value + 0.1,
                "test/pc_nc": 0.8 - quality, "test/depth_absrel": 0.1,
                "test/depth_delta1": 0.9, "test/spoof_acc": 0.75}
               if task == "print_attack" else
               {"in_domain/pc_acc": main_value - 0.05, "in_domain/pc_nc": 0.85,
                "cross_domain/pc_acc": main_value, "cross_domain/pc_nc": 0.9,
                "gap/pc_acc": 0.05})
    tid = f"ft-{axis}-{task}-{method}-{factors if reduced else ''}-r{rank}-{ortho}-{extraction}"
    return {
        "trial_id": f"{tid}-s{seed}", "study": "unit", "stage": "finetune", "axis": axis,
        "task": task, "method": method, "factors": factors if reduced else None,
        "rank": rank if method not in ("none", "full") else None,
        "total_rank": width, "ortho": ortho if reduced else None,
        "extraction": extraction if reduced else None, "seed": seed, "lr": 1e-3, "steps": 2,
        "trainable_params": params, "final_loss": 0.5, "main": main_value, "wall_s": 2.0,
        "status": "ok", "base": "vggt-tiny", "base_hash": "ab" * 32, "code_version": VERSION,
        **{k.replace("/", "__"): v for k, v in metrics.items()}, **kw,
    }


def _trial_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"trial_id": f"mine-{a}-g0-s0", "study": "unit", "stage": "mine", "axis": "mine",
         "method": "lora", "factors": a, "group": 0, "rank": 4, "seed": 0, "steps": 3,
         "final_loss": 1.0, "wall_s": 1.0, "status": "ok", "code_version": VERSION}
        for a in FACTORS
    ]
    for task, seed in itertools.product(("print_attack", "cross_domain"), (0, 1)):
        rows += [_ft(task, m, seed) for m in ("none", "full", "lora", "pissa", "psv", "random",
                                              "reduced")]
        rows += [_ft(task, "reduced", seed, axis="ranks", rank=2),
                 _ft(task, "reduced", seed, axis="subsets", factors="texture"),
                 _ft(task, "reduced", seed, axis="subsets", factors="geometry+camera"),
                 _ft(task, "reduced", seed, axis="ortho", ortho="none"),
                 _ft(task, "reduced", seed, axis="extraction", extraction="mean")]
    rows.append({**_ft("print_attack", "lora", 2), "trial_id": "ft-broken-s2",
                 "status": "failed", "main": None, "error": "RuntimeError: out of memory"})
    return rows


def _overlap_rows() -> list[dict[str, Any]]:
    rows = []
    for ext, layer, (a, b) in itertools.product(("irls", "mean"), LAYERS,
                                                itertools.combinations(FACTORS, 2)):
        r: dict[str, Any] = {"study": "unit", "code_version": VERSION, "seed": 0,
                             "extraction": ext, "layer": layer, "factor_a": a, "factor_b": b,
                             "rank_a": 4, "rank_b": 4, "d_out": 96, "d_in": 32}
        for name in OVERLAPS_SCHEMA.names[11:]:
            r[name] = 60.0 if "angle" in name else 0.5
        rows.append(r)
    return rows


def _spectra_rows() -> list[dict[str, Any]]:
    rows = []
    for ext, layer, factor in itertools.product(("irls", "mean"), LAYERS, FACTORS):
        for i in range(6):
            rows.append({"study": "unit", "code_version": VERSION, "seed": 0, "extraction": ext,
                         "layer": layer, "factor": factor, "index": i,
                         "value": 1.0 / (i + 1) if i < 4 else 1e-4 / i, "rank": 4,
                         "cliff_rank": 4, "adapters": 2, "irls_iterations": 5,
                         "converged": True, "irls_weight_min": 0.9, "irls_weight_mean": 1.0,
                         "irls_weight_max": 1.1})
    return rows


def _evidence_rows() -> list[dict[str, Any]]:
    """Claim 1's measures on three adapters per factor, each near its factor's planted
    rank-2 subspace (column and row side) plus noise, from independent random inits."""
    gen = torch.Generator().manual_seed(0)
    d_out, d_in = 24, 16

    def orth(d: int) -> torch.Tensor:
        return torch.linalg.qr(torch.randn(d, 2, generator=gen))[0]

    def near(basis: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(basis.shape[0], 2, generator=gen)
        return basis @ torch.randn(2, 2, generator=gen) + 0.05 * noise

    planted = {a: {n: (orth(d_out), orth(d_in)) for n in LAYERS} for a in FACTORS}
    names, labels, updates, inits = [], [], [], []
    for a, k in itertools.product(FACTORS, range(3)):
        names.append(f"{a}-g{k}")
        labels.append(a)
        updates.append({n: Update(col=near(u), row=near(v)) for n, (u, v) in planted[a].items()})
        inits.append({n: torch.randn(2, d_in, generator=gen) for n in LAYERS})
    aset = AdapterSet(tuple(names), tuple(labels), tuple(updates), tuple(inits))
    rows = evidence_rows(aset, ExtractConfig(rank=2), permutations=300)
    return study_rows(rows, study="unit", code_version=VERSION, seed=0, extraction="irls")


def _write_trials(path: Path, rows: list[dict[str, Any]]) -> None:
    write_table(rows, trials_schema(rows), path)


@pytest.fixture(scope="module")
def full_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("study")
    _write_trials(d / "trials.parquet", _trial_rows())
    write_table(_overlap_rows(), OVERLAPS_SCHEMA, d / "overlaps.parquet")
    write_table(_spectra_rows(), SPECTRA_SCHEMA, d / "spectra.parquet")
    write_table(_evidence_rows(), EVIDENCE_SCHEMA, d / "evidence.parquet")
    (d / "study.json").write_text(json.dumps({"preset": "smoke", "wall_s": 123.4}))
    path = write_report(d)
    return d, path.read_text()


def test_every_figure_is_a_png(full_study: tuple[Path, str]) -> None:
    d, text = full_study
    for name in FIGURES.values():
        data = (d / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"]({name})" in text, name
    assert "Missing or partial" not in text


def test_report_states_the_study(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    assert "**preset**: smoke" in text
    assert "123 s (2.1 min) end to end" in text
    assert f"`{VERSION}`" in text
    assert "**seeds** (fine-tuning): [0, 1, 2]" in text  # the failed trial's seed counts too
    assert "ft-broken-s2" in text and "out of memory" in text


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    after = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    rows = []
    for line in after[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_main_table_rows_and_bold_best(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    rows = _table_rows(text, "## Main results")
    assert [r[0] for r in rows] == ["no fine-tuning", "full fine-tuning", "LoRA r=4",
                                    "PiSSA r=4", "PSV d=16", "random basis d=16",
                                    "mined subspace d=16"]
    assert rows[1][1] == "100.0 k" and rows[0][1] == "0"
    mined = rows[-1]
    assert all(c.startswith("**") for c in mined[2:]), mined  # best everywhere, lower is better
    assert rows[0][3] == "reference"
    layout = _table_rows(text, "### print_attack, in the paper's layout")
    assert len(layout) == 7 and layout[-1][2].startswith("**")
    cross = _table_rows(text, "### cross_domain, in the paper's layout")
    assert len(cross) == 7


def _claim_bullets(text: str) -> dict[int, str]:
    section = text[text.index("## The paper's claims"):text.index("## Paired differences")]
    bullets = [line for line in section.splitlines() if line.startswith("- **Claim ")]
    return {int(b.split()[2].rstrip(":")): b for b in bullets}


def test_claims_section(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    assert text.index("## Main results") < text.index("## The paper's claims") < text.index(
        "## Paired differences") < text.index("## The paper's figures")
    bullets = _claim_bullets(text)
    assert sorted(bullets) == [1, 2, 3, 4]
    assert bullets[1].startswith("- **Claim 1: holds.**"), bullets[1]
    assert "col side (factor-specific)" in bullets[1] and "*Null:*" in bullets[1]
    # every distance is exactly 0.5, so none is above it
    assert bullets[2].startswith("- **Claim 2: does not hold.**")
    assert "0% of rows above 0.5" in bullets[2]
    # reduced (d=16: 2048 values) beats every baseline, at half of LoRA r=4's 4096
    assert bullets[3].startswith("- **Claim 3: does not hold (reduced uses 1/2 of LoRA's "
                                 "parameters, not <= 1/4).**"), bullets[3]
    assert bullets[4].startswith("- **Claim 4: not measured.**")


def test_paired_differences_section(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    rows = _table_rows(text, "### Paired differences: print_attack")
    assert [r[0] for r in rows] == [
        "reduced - lora", "reduced - pissa", "reduced - psv", "reduced - random",
        "reduced - full", "reduced - none", "full - none", "lora - none", "pissa - none",
        "psv - none", "random - none"]
    first = rows[0]
    assert first[1].startswith("-0.0029") and first[2:4] == ["2", "2/2"]
    assert first[4] == "2.0 k / 4.1 k = 0.5"
    assert rows[5][4] == "2.0 k / 0"  # zero-shot trains nothing: no ratio
    assert len(_table_rows(text, "### Paired differences: cross_domain")) == 11


def test_paper_table_copied(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    paper = _table_rows(text, "The paper's micro-baseline")
    assert paper[-1] == ["mined subspace d=16", "**4.0 M**", "**3.831**", "**2.037**",
                         "**86.65**", "2.170", "98.92"]
    assert len(_table_rows(text, "The paper's clothed-humans")) == 5
    assert "arXiv 2604.10095" in text


def test_ablation_tables(full_study: tuple[Path, str]) -> None:
    _, text = full_study
    subsets = _table_rows(text, "## Factor subsets")
    assert len(subsets) == 6  # 3 subsets (the default included) x 2 tasks
    labels = [r[1] for r in subsets if r[0] == "print_attack"]
    assert labels[0] == "texture + geometry + camera + lighting (d=16) [default]"  # best first
    assert {r[1] for r in _table_rows(text, "## Orthogonalisation")} == {"qr [default]", "none"}
    assert {r[1] for r in _table_rows(text, "## Subspace extraction")} == {"irls [default]",
                                                                           "mean"}
    disent = _table_rows(text, "## Disentanglement")
    assert len(disent) == 12 and disent[0][:2] == ["irls", "texture - geometry"]
    spectra = _table_rows(text, "## Singular spectra")
    assert [r[1] for r in spectra[:4]] == list(FACTORS)


def test_partial_study_reports_what_exists(tmp_path: Path) -> None:
    rows = [r for r in _trial_rows() if r.get("task") != "cross_domain"]
    rows = [r for r in rows if not (r.get("method") == "reduced" and r["seed"] == 1)]
    _write_trials(tmp_path / "trials.parquet", rows)
    table = pq.read_table(tmp_path / "trials.parquet").drop_columns(["total_rank", "wall_s"])
    pq.write_table(table, tmp_path / "trials.parquet")
    (tmp_path / "spectra.parquet").write_bytes(b"not parquet")
    for stale in ("fig-spectra.png", "fig-disentanglement.png"):
        (tmp_path / stale).write_bytes(b"old")
    text = write_report(tmp_path).read_text()
    assert "## Missing or partial" in text
    assert "`overlaps.parquet` is missing" in text
    assert "`spectra.parquet` is unreadable" in text
    assert "`evidence.parquet` is missing" in text
    bullets = _claim_bullets(text)
    assert bullets[1].startswith("- **Claim 1: not measured.**")
    assert bullets[2].startswith("- **Claim 2: not measured.**")
    assert "### Paired differences: print_attack" in text
    assert "lacks column(s) `total_rank`, `wall_s`" in text
    assert "mined subspace d=16: 1 of 2 seeds" in text
    for name in ("rank", "params", "subsets", "ortho", "extraction"):
        assert (tmp_path / FIGURES[name]).read_bytes().startswith(PNG_MAGIC)
    for name in ("disentanglement", "disentanglement_depth", "spectra"):
        assert not (tmp_path / FIGURES[name]).exists()
        assert f"`{FIGURES[name]}` not drawn" in text
    assert [r[0] for r in _table_rows(text, "## Main results")][-1] == "mined subspace d=16"
    assert "preset**: not recorded" in text


def test_empty_folder_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2  # not a study: one line, nothing written
    assert "not a study folder" in capsys.readouterr().err and not list(tmp_path.iterdir())
    (tmp_path / "study.json").write_text('{"study": "s"}')  # a study that just started
    assert main([str(tmp_path)]) == 0
    assert "report.md" in capsys.readouterr().out
    text = (tmp_path / REPORT_NAME).read_text()
    assert "`trials.parquet` is missing" in text
    assert "No successful main-axis fine-tuning trials yet." in text
    assert "No successful main-axis fine-tuning trials to pair." in text
    assert all(b.split("**")[1].endswith(": not measured.")
               for b in _claim_bullets(text).values())
    assert not list(tmp_path.glob("*.png"))
    (tmp_path / "trials.parquet").write_bytes(b"garbage")  # damaged: an error, no report
    (tmp_path / REPORT_NAME).unlink()
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trials.parquet is unreadable" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / REPORT_NAME).exists()


def test_search_front_drawn_from_pareto_table(tmp_path: Path) -> None:
    rows = [r for r in _trial_rows() if r.get("task") in (None, "print_attack")]
    _write_trials(tmp_path / "trials.parquet", rows)
    pq.write_table(pa.table({
        "task": ["print_attack"] * 2, "trainable_params": [512, 4096], "main": [0.2, 0.19]}),
        tmp_path / "pareto.parquet")
    text = write_report(tmp_path, preset="quick", wall_s=5.0).read_text()
    assert "the Pareto front of the search (`pareto.parquet`)" in text
    assert "**preset**: quick" in text and "5.0 s end to end" in text
    assert "pareto.parquet` is missing" not in text


def test_pareto_front() -> None:
    assert pareto_front([1, 2, 3, 4], [0.5, 0.6, 0.4, 0.45]) == [0, 2]
    assert pareto_front([1, 2, 3], [0.5, 0.6, 0.4], lower=False) == [0, 1]


def test_runs_as_a_module() -> None:
    """``python -m results.report`` is the package's ``__main__``, not only ``main``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "results.report", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m results.report") and not proc.stderr
