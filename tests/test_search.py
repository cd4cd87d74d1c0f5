"""sweeps/search.py: bad input fails before Ray; Optuna is told PRUNED, never COMPLETE, for an
early-stopped trial; a real smoke search on a local Ray (2 CPUs) writes a non-dominated Pareto
front and resumes its Optuna study without duplicate rows."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from attrsub.errors import ConfigError
from results.schema import PARETO_SCHEMA
from sweeps.config import PRESETS, from_dict, load_preset
from sweeps.job import Job
from sweeps.search import main, make_job
from sweeps.searcher import Stream, make_searcher, open_optuna, outcome, settle_stale

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(PRESETS.read_text())


def _bad(raw: dict, tmp_path: Path, change: dict) -> tuple[Path, dict]:
    cfg = copy.deepcopy(raw["smoke"])
    cfg["search"].update(copy.deepcopy(change))
    path = tmp_path / "presets.yaml"
    path.write_text(yaml.safe_dump({"smoke": cfg}))
    return path, cfg


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"space": {}}, "space is empty"),
        ({"space": {"reduced": {}}}, "search space of method 'reduced' is empty"),
        ({"space": {"reduced": {"lr": {"low": 0.1, "high": 0.001}}}}, "low 0.1 is above high"),
        ({"space": {"lora": {"rank": {"low": 6, "high": 2}}}}, "low 6 is above high 2"),
        ({"sampler": "hyperopt"}, "unknown .*sampler 'hyperopt'"),
        ({"space": {"reduced": {"rank_colour": {"low": 0, "high": 2}}}},
         "unknown search parameter.*rank_colour"),
        ({"space": {"reduced": {"ortho": ["householder"]}}}, "householder"),
        ({"space": {"reduced": {f"rank_{a}": {"low": 0, "high": 0} for a in
                                ("texture", "geometry", "camera", "lighting")}}},
         "no factor is left"),
        ({"space": {"reduced": {"rank_texture": {"low": 0, "high": 9}}}}, "extraction rank"),
        ({"space": {"lora": {"rank": {"low": 1, "high": 65}}}}, "narrowest adapted layer"),
        ({"space": {"none": {"lr": {"low": 0.1, "high": 0.2}}}}, "cannot search method"),
        ({"asha": {"grace_period": 1, "reduction_factor": 1}}, "reduction_factor"),
    ],
)
def test_bad_search_sections_fail_before_any_trial(raw: dict, tmp_path: Path, change: dict,
                                                   match: str, capsys) -> None:
    import ray

    presets, cfg = _bad(raw, tmp_path, change)
    with pytest.raises(ConfigError, match=match):
        from_dict("smoke", cfg)
    storage = tmp_path / "store"
    assert main(["--preset", "smoke", "--presets", str(presets), "--storage", str(storage),
                 "--task", "print_attack", "--method", "reduced"]) == 2
    assert "search: error:" in capsys.readouterr().err
    assert not ray.is_initialized() and not storage.exists()


def test_unknown_sampler_flag_and_missing_space_fail_before_ray(tmp_path: Path, capsys) -> None:
    import ray

    storage = tmp_path / "store"
    assert main(["--preset", "smoke", "--storage", str(storage), "--sampler", "hyperopt"]) == 2
    assert "unknown --sampler 'hyperopt'" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--storage", str(storage), "--method", "pissa"]) == 2
    assert "no search space for method 'pissa'" in capsys.readouterr().err
    assert not ray.is_initialized() and not storage.exists()


def test_cmaes_needs_its_package(tmp_path: Path, capsys) -> None:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        assert main(["--preset", "smoke", "--storage", str(tmp_path / "s"), "--sampler",
                     "cmaes"]) == 2
        assert "cmaes package" in capsys.readouterr().err
        return
    assert main(["--preset", "smoke", "--storage", str(tmp_path / "s"), "--sampler", "cmaes",
                 "--objectives", "error,params"]) == 2
    assert "one objective" in capsys.readouterr().err


def test_rank_zero_drops_the_factor_and_all_zero_is_infeasible() -> None:
    p = load_preset("smoke")
    job = make_job(p, "print_attack", "reduced",
                   {"rank_texture": 0, "rank_geometry": 3, "rank_camera": 0, "rank_lighting": 1,
                    "lr": 0.01}, "t")
    assert job.factors == ("geometry", "lighting") and job.ranks == {"geometry": 3,
                                                                      "lighting": 1}
    assert job.steps == p.downstream.steps and job.ortho == "qr"
    assert job.to_dict()["factors"] == ["geometry", "lighting"]
    zero = {f"rank_{a}": 0 for a in p.factors}
    assert make_job(p, "print_attack", "reduced", zero, "t") is None
    lora = make_job(p, "print_attack", "lora", {"rank": 5}, "t")
    assert lora.rank == 5 and lora.lr == p.downstream.lr["lora"] and lora.factors == ()


def test_outcome_never_completes_a_stopped_trial() -> None:
    both = ("error", "params")
    assert outcome({"status": "ok", "main": 0.5, "trainable_params": 10}, False, both) == (
        "COMPLETE", [0.5, 10.0])
    assert outcome({"step": 2, "loss": 0.3}, False, both) == ("PRUNED", None)
    assert outcome({"status": "failed", "loss": float("nan")}, False, both) == ("FAIL", None)
    assert outcome({"step": 1, "loss": 0.3}, True, both) == ("FAIL", None)
    assert outcome({"status": "ok", "main": float("nan"), "trainable_params": 1}, False,
                   ("error",)) == ("FAIL", None)


def test_searcher_tells_optuna_pruned_with_the_step(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    p = load_preset("smoke")
    space = p.search.space["reduced"]
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    from sweeps.search import suggest

    searcher = make_searcher([Stream(
        study, lambda t: make_job(p, "print_attack", "reduced", suggest(t, space),
                                  f"x-{t.number}"), 3, ("error", "params"))])
    assert searcher.set_search_properties(None, None, {})
    for tid in ("a", "b", "c"):
        assert searcher.suggest(tid)["job"]["method"] == "reduced"
    assert searcher.suggest("d") == searcher.FINISHED  # the budget is asked
    searcher.on_trial_result("a", {"step": 1, "loss": 2.0})
    searcher.on_trial_result("a", {"step": 2, "loss": 1.5})
    searcher.on_trial_complete("a", {"step": 3, "loss": 1.4})  # Tune's STOP result
    searcher.on_trial_complete("b", {"status": "ok", "main": 0.3, "trainable_params": 64,
                                     "steps": 4, "total_rank": 8})
    searcher.on_trial_complete("c", None, error=True)
    searcher.settle_all()  # the rows are written
    by_tune = {t.user_attrs["tune_trial"]: t for t in study.trials if "tune_trial" in t.user_attrs}
    assert by_tune["a"].state == TrialState.PRUNED and by_tune["a"].user_attrs["step"] == 3
    assert by_tune["b"].state == TrialState.COMPLETE and by_tune["b"].values == [0.3, 64.0]
    assert by_tune["c"].state == TrialState.FAIL


def test_each_run_gets_its_own_study_and_resume_picks_the_latest(tmp_path: Path) -> None:

    journal = tmp_path / "optuna.journal"
    attrs = {"study": "s", "task": "print_attack", "method": "reduced",
             "objectives": "error", "preset": "smoke", "sampler": "tpe"}
    first = open_optuna(journal, None, False, attrs, ["minimize"], None)
    second = open_optuna(journal, None, False, attrs, ["minimize"], None)
    assert first.study_name != second.study_name
    second.tell(second.ask(), 1.0)
    again = open_optuna(journal, None, True, attrs, ["minimize"], None)
    assert again.study_name == second.study_name and len(again.trials) == 1
    with pytest.raises(ConfigError, match="nothing to resume"):
        open_optuna(journal, None, True, {**attrs, "method": "lora"}, ["minimize"], None)
    with pytest.raises(ConfigError, match="objective"):
        open_optuna(journal, second.study_name, True, attrs, ["minimize", "minimize"], None)


def test_optuna_dashboard_reads_the_journal(tmp_path: Path) -> None:
    """`optuna-dashboard <study>/optuna.journal` works: the dashboard's own storage guess and
    its JSON API see our studies and their trials (called through its WSGI app)."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna.distributions import FloatDistribution
    from optuna_dashboard import wsgi

    journal = tmp_path / "optuna.journal"
    attrs = {"study": "s", "task": "print_attack", "method": "reduced",
             "objectives": "error", "preset": "smoke", "sampler": "tpe"}
    study = open_optuna(journal, None, False, attrs, ["minimize"], None)
    study.tell(study.ask({"lr": FloatDistribution(1e-4, 1e-2, log=True)}), 0.5)
    app = wsgi(str(journal))

    def get(path: str) -> dict:
        environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        setup_testing_defaults(environ)
        said: list[str] = []
        body = b"".join(app(environ, lambda status, headers, *_: said.append(status)))
        assert said[0].startswith("200"), (path, said, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [study.study_name]
    assert {"key": "task", "value": "print_attack"} in studies[0]["user_attrs"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 1 and detail["trials"][0]["values"] == [0.5]


def test_resume_settles_the_trials_a_killed_driver_left_running(tmp_path: Path) -> None:
    import optuna

    attrs = {"study": "s", "task": "print_attack", "method": "lora",
             "objectives": "error", "preset": "smoke", "sampler": "tpe"}
    study = open_optuna(tmp_path / "j", None, False, attrs, ["minimize"], None)
    jobs = {}

    def job(number: int, lr: float) -> Job:
        return Job(trial_id=f"t{number}", axis="search", task="print_attack", method="lora",
                   seed=0, lr=lr, rank=4, ranks={}, steps=2)

    def job_of(trial: optuna.trial.BaseTrial) -> Job:
        return job(trial.number, trial.suggest_float("lr", 1e-4, 1e-2))

    for name in ("unrecorded", "recorded-ok", "recorded-stopped"):
        t = study.ask()
        jobs[name] = job_of(t)
        t.set_user_attr("job", jobs[name].to_dict())
    study.ask().suggest_float("lr", 1e-4, 1e-2)  # killed before its job was stored
    study.ask()  # killed before its parameters were suggested: it never ran
    rows = {"t1": {"status": "ok", "main": 0.25, "trainable_params": 10},
            "t2": {"status": "stopped"}}
    again = open_optuna(tmp_path / "j", None, True, attrs, ["minimize"], None)
    rebuilt = job(3, again.trials[3].params["lr"])
    assert settle_stale(again, rows, ("error",), job_of) == [jobs["unrecorded"], rebuilt]
    S = optuna.trial.TrialState
    assert [t.state for t in again.trials] == [S.FAIL, S.COMPLETE, S.PRUNED, S.FAIL, S.FAIL]
    assert again.trials[1].value == 0.25
    assert settle_stale(again, rows, ("error",), job_of) == []  # nothing left running


def test_the_searcher_tells_optuna_only_once_the_row_is_written(tmp_path: Path) -> None:
    """Tune calls a searcher's on_trial_complete before the callback that writes the row: a
    driver killed in between must leave the Optuna trial RUNNING (settled from the table on
    resume), never COMPLETE without a row."""
    import optuna

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    searcher = make_searcher([Stream(study, lambda t: Job(
        trial_id="t", axis="search", task="print_attack", method="lora", seed=0,
        lr=t.suggest_float("lr", 0, 1), ranks={}, steps=5), 1)])
    assert searcher.suggest("tune-a") is not None
    searcher.on_trial_complete("tune-a", {"step": 5, "status": "ok", "main": 0.5,
                                         "trainable_params": 3})
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    searcher.settle("tune-a")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[0].value == 0.5 and searcher.told == {"COMPLETE": 1}


# ---------------------------------------------------------------------------------------------
# On a real local Ray cluster


def _search(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "search.py"), "--preset", "smoke",
         "--task", "print_attack", "--method", "reduced", "--objectives", "error,params",
         "--storage", str(storage), "--study", "s", "--num-cpus", "2", *extra],
        env=ENV, capture_output=True, text=True, timeout=900, cwd=REPO,
    )


def _non_dominated(front: pd.DataFrame) -> bool:
    pts = list(zip(front["main"], front["trainable_params"], strict=True))
    return not any(a[0] <= b[0] and a[1] <= b[1] and a != b for a in pts for b in pts)


def _check(storage: Path) -> tuple[pd.DataFrame, dict[int, str], list[str]]:
    """Search rows, Optuna state per trial number, and the Optuna study names; every row's
    status matches its Optuna state, and a stopped row holds the step ASHA stopped it at."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study_dir = storage / "s"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert trials.trial_id.is_unique
    rows = trials[trials.stage == "search"]
    assert set(rows.status) <= {"ok", "stopped", "failed"}
    assert (rows.status == "ok").any(), rows[["trial_id", "status", "error"]]
    storage_ = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    names = optuna.get_all_study_names(storage_)
    study = optuna.load_study(study_name=names[0], storage=storage_)
    by_number = {t.number: t for t in study.trials}
    for r in rows.itertuples():
        t = by_number[int(r.trial_id.rsplit("-", 1)[1])]
        want = {"ok": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}[r.status]
        assert t.state.name == want, (r.trial_id, r.status, t.state.name)
        if r.status == "stopped":
            assert r.steps == t.user_attrs["step"] < t.user_attrs["job"]["steps"]
    states = {n: t.state.name for n, t in by_number.items()}
    front = pd.read_parquet(study_dir / "pareto.parquet")
    assert list(front.columns) == PARETO_SCHEMA.names and len(front) > 0
    assert {"task", "method", "trainable_params", "main"} <= set(front.columns)
    assert (front.task == "print_attack").all() and (front.method == "reduced").all()
    assert _non_dominated(front)
    assert set(front.trial_id) <= set(rows[rows.status == "ok"].trial_id)
    return rows, states, names


@pytest.mark.slow
def test_multi_objective_search_writes_a_pareto_front_and_resumes(tmp_path: Path) -> None:
    storage = tmp_path / f"store-{uuid.uuid4().hex[:8]}"
    run = _search(storage, "--trials", "4", "--seed", "0")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "pareto front" in run.stdout
    rows, states, names = _check(storage)
    assert len(rows) == 4 and len(names) == 1

    again = _search(storage, "--trials", "2", "--seed", "1", "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows2, states2, names2 = _check(storage)
    assert names2 == names  # the same Optuna study continued
    assert len(states2) >= len(states) + 2 and len(rows2) == 6
    assert set(rows.trial_id) < set(rows2.trial_id)
    pd.testing.assert_frame_equal(  # rows of the first run are untouched
        rows.set_index("trial_id").sort_index()[["status", "steps", "main"]],
        rows2.set_index("trial_id").loc[sorted(rows.trial_id), ["status", "steps", "main"]])
