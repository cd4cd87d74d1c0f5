"""End to end on a real local Ray cluster (2 CPUs): the smoke study, its tables, a resume,
and the same study submitted as a Ray job to a `ray start --head` cluster."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from results.schema import OVERLAPS_SCHEMA, SPECTRA_SCHEMA, TRIAL_COLUMNS
from sweeps.config import PRESETS, load_preset
from sweeps.finetune import finetune_jobs
from sweeps.job import mining_jobs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _study(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--preset", "smoke",
         "--storage", str(storage), "--num-cpus", "2", *extra],
        env=ENV, capture_output=True, text=True, timeout=900, cwd=REPO,
    )


def _check_tables(study_dir: Path) -> pd.DataFrame:
    preset = load_preset("smoke")
    trained = [m for m in preset.downstream.methods if m != "none"]
    n_lr = len(preset.downstream.tasks) * len(trained) * preset.downstream.lr_search.trials
    n = len(mining_jobs(preset)) + len(finetune_jobs(preset)) + n_lr
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == n and trials.trial_id.is_unique
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    assert (trials.status == "ok").all(), trials[trials.status != "ok"][["trial_id", "error"]]
    ft = trials[trials.stage == "finetune"]
    down = preset.downstream
    assert set(ft.method) == set(down.methods) and set(ft.task) == set(down.tasks)
    for task, rows in ft.groupby("task"):  # each task's own metrics, all finite
        metrics = [c for c in rows.columns if "__" in c and rows[c].notna().any()] + ["main"]
        assert "test__depth_absrel" in metrics
        # pc_nc alone may be null: clouds are depth unprojected with the predicted cameras,
        # and a random-init smoke model can predict a field of view of 0, whose cloud is a
        # line with no surface normals (Acc and Comp are still defined)
        finite = [c for c in metrics if not c.endswith("__pc_nc")]
        assert all(math.isfinite(v) for v in rows[finite].to_numpy().ravel()), task
    assert (ft.set_index("method").trainable_params.loc["none"] == 0).all()
    # every trained method ran at the rate its learning-rate search found best
    lr_rows = trials[trials.axis == "lr"]
    assert len(lr_rows) == n_lr and (lr_rows.stage == "search").all()
    assert set(lr_rows.seed) == {preset.downstream.lr_search.seed}
    for (task, method), rows in lr_rows.groupby(["task", "method"]):
        best = set(rows.loc[rows["main"] == rows["main"].min(), "lr"])  # ties: any of them
        used = set(ft[(ft.task == task) & (ft.method == method)].lr)
        assert len(used) == 1 and used <= best, (task, method, used, best)
    overlaps = pd.read_parquet(study_dir / "overlaps.parquet")
    spectra = pd.read_parquet(study_dir / "spectra.parquet")
    assert list(overlaps.columns) == OVERLAPS_SCHEMA.names and len(overlaps) > 0
    assert list(spectra.columns) == SPECTRA_SCHEMA.names and len(spectra) > 0
    assert set(spectra.extraction) == {"irls", "mean"}
    assert overlaps[["scale_inv_distance", "overlap"]].notna().all().all()
    return trials


def _worker_pids(experiment: Path) -> set[int]:
    """The processes a Tune experiment's trials ran in (Tune adds ``pid`` to each result)."""
    return {json.loads(line)["pid"] for f in experiment.glob("*/result.json")
            for line in f.read_text().splitlines() if line.strip()}


def test_smoke_study_end_to_end_and_resume(tmp_path) -> None:
    storage = tmp_path / f"store-{uuid.uuid4().hex[:8]}"
    run = _study(storage)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "reduced" in run.stdout and "trials.parquet" in run.stdout
    actor = json.loads(re.search(r"subspace actor: (\{.*\})", run.stdout).group(1))
    # every factor extracted once per method (irls as mining completes it, mean on demand),
    # however many trials asked; every basis key integrated once
    assert actor["extractions"] == 2 * 4 and actor["bank_loads"] == 0
    assert actor["requests"] == actor["cached"] + actor["hits"]
    first = _check_tables(storage / "smoke")
    assert (storage / "smoke" / "banks" / "bank-irls.safetensors").is_file()
    # every stage fans out: its trials ran in two or more trial workers (one: one at a time)
    for stage in ("smoke-mine", "smoke-lr-*", "smoke-ablation"):
        (folder,) = storage.glob(stage)
        assert len(_worker_pids(folder)) >= 2, stage
    report = (storage / "smoke" / "report.md").read_text()
    assert "print_attack" in report and (storage / "smoke" / "fig-rank.png").is_file()

    # the study's fingerprint: a resume with another preset is refused before anything runs
    other = yaml.safe_load(PRESETS.read_text())["smoke"]
    other["downstream"]["steps"] = 3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"smoke": other}))
    refused = _study(storage, "--resume", "--presets", str(tmp_path / "other.yaml"))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "preset.downstream.steps: 2 -> 3" in refused.stderr.strip().splitlines()[-1]
    pd.testing.assert_frame_equal(first, pd.read_parquet(storage / "smoke" / "trials.parquet"))

    again = _study(storage, "--resume")  # the same preset: nothing reruns, no row is added
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    actor = json.loads(re.search(r"subspace actor: (\{.*\})", again.stdout).group(1))
    # the restarted actor reloads the persisted banks instead of extracting again
    assert actor["extractions"] == 0 and actor["bank_loads"] == 2
    second = _check_tables(storage / "smoke")
    pd.testing.assert_frame_equal(first.sort_values("trial_id").reset_index(drop=True),
                                  second.sort_values("trial_id").reset_index(drop=True))


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_ray_job_submit(tmp_path) -> None:
    storage = tmp_path / "jobstore"
    temp = Path("/tmp") / f"rayjob-{uuid.uuid4().hex[:6]}"
    port = 6390 + os.getpid() % 200
    dash = 8270 + os.getpid() % 200
    start = subprocess.run(
        ["ray", "start", "--head", "--num-cpus", "2", f"--port={port}",
         f"--dashboard-port={dash}", "--include-dashboard=true", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=ENV, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        job = subprocess.run(
            ["ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", ".",
             "--", "python", "sweeps/ablation.py", "--preset", "smoke", "--storage",
             str(storage)],
            env={**ENV, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}, capture_output=True,
            text=True, timeout=900, cwd=REPO,
        )
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-3000:]
        _check_tables(storage / "smoke")
    finally:
        subprocess.run(["ray", "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_lr_search_of_one_study_runs_its_rates_side_by_side(tmp_path) -> None:
    """A grid's rates do not wait for results: with a single (task, method) to tune, as when
    a resumed study has one search left, its trials still run on both CPUs."""
    smoke = yaml.safe_load((REPO / "sweeps" / "presets.yaml").read_text())["smoke"]
    smoke.update(factors=["texture"], groups=1)
    smoke["ablation"]["subsets"] = [["texture"]]
    smoke["search"]["space"] = {"lora": smoke["search"]["space"]["lora"]}
    smoke["downstream"].update(tasks=["print_attack"], methods=["none", "lora"],
                               lr_search={"trials": 4, "span": 10})
    presets = tmp_path / "presets.yaml"
    presets.write_text(yaml.safe_dump({"one": smoke}))
    storage = tmp_path / "store"
    run = _study(storage, "--presets", str(presets), "--preset", "one")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trials = pd.read_parquet(storage / "one" / "trials.parquet")
    lr_rows = trials[trials.axis == "lr"]
    assert len(lr_rows) == 4 and (lr_rows.status == "ok").all()
    assert lr_rows.lr.nunique() == 4  # the grid's four rates, each once
    (folder,) = storage.glob("one-lr-*")
    assert len(_worker_pids(folder)) >= 2
