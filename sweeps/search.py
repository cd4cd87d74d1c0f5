"""Optuna search over the reduced-subspace design (and, to compare, LoRA's), as Ray Tune trials.

    python sweeps/search.py --preset smoke --task print_attack --method reduced \\
        --objectives error,params --trials 8 --storage /tmp/s --study s1
    python sweeps/search.py ... --study s1 --resume --trials 4   # the same Optuna study, 4 more

The space is data: the preset's ``search:`` section (sweeps/presets.yaml), validated before
any trial. For ``reduced`` it spans learning rate, steps, one rank per attribute
(``rank_texture`` ...; 0 leaves the attribute out, so the subset is searched too) and the
orthogonalisation of the integrated basis; for ``lora`` learning rate and rank. A parameter
the space leaves out keeps the preset's downstream value. ``--objectives error`` minimises the
task's main metric (maximises it where higher is better); ``error,params`` also minimises the
trainable parameters and writes the Pareto front to ``<study>/pareto.parquet``.

The Optuna study lives in a JournalStorage file, ``<study>/optuna.journal``. Each run creates
a new, uniquely named Optuna study; ``--resume`` continues the latest one of the same task,
method and objectives (or ``--optuna-study NAME``), so its trial count grows and Optuna's
trial numbers, hence the ``trial_id`` of every row (``search-<optuna study>-<number>``),
never repeat.

Why an ask/tell Searcher instead of ``ray.tune.search.optuna.OptunaSearch`` (Ray 2.60,
Optuna 5.0): OptunaSearch reads ``result[metric]`` from every intermediate result (KeyError
for a trial that reports only its training loss until it is evaluated); it decides the state
from whether the metric is present, so with two objectives an ASHA-stopped trial is told
COMPLETE with ``[None, None]`` (Optuna refuses; the trial stays RUNNING) and a trial that
failed inside is told PRUNED; and its default study name (``optuna``, loaded if it exists)
reuses an old study in persistent storage. ``AskTell`` below asks Optuna for every Tune trial
(define-by-run, so an all-zero rank suggestion is told FAIL and asked again) and tells it what
really happened: COMPLETE with the objective values of a trial that ran to the end, PRUNED
(user attribute ``step``: the step reached) for one ASHA stopped, FAIL for a failed one.
ASHA stops trials on the training loss they report every ``report_every`` steps; those rows
of ``trials.parquet`` (stage ``search``) have status ``stopped`` and the step reached. With
one objective the training losses are also Optuna's intermediate values, which orders the
pruned trials for the sampler.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attrsub import storage
from attrsub.cli import COUNT
from attrsub.errors import ConfigError
from attrsub.tasks import get_task
from results.schema import (
    PARETO_SCHEMA,
    TRIAL_COLUMNS,
    read_table,
    trials_schema,
    upsert_table,
    write_table,
)
from sweeps.ablation import finetune_jobs, finetune_trial
from sweeps.config import Preset, SearchConfig, SearchParam, check_sampler, load_preset
from sweeps.runtime import (
    STUDY_ERRORS,
    Study,
    StudyPaths,
    ensure_task_data,
    fit,
    open_study,
    print_error,
    print_interrupted,
    recorder,
    run_config,
    session,
    study_id,
    study_parser,
)

OBJECTIVES = {"error": ("error",), "error,params": ("error", "params")}
JOURNAL = "optuna.journal"
# Keys Tune adds to every result, and the trainable's bookkeeping: never trials columns.
_TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid",
              "time_since_restore", "iterations_since_restore", "trial_wall_s", "step", "loss"}
_MEASURED = {"steps", "trainable_params", "final_loss", "main", "base_hash", "total_rank",
             "resumed_step"}
_WITH_RANK = ("lora", "pissa", "psv", "random")


# ---------------------------------------------------------------------------------------------
# What Optuna searches, and the job one of its trials becomes


def suggest(trial: Any, space: tuple[SearchParam, ...]) -> dict[str, Any]:
    """Draw every parameter of ``space`` from an Optuna trial (define-by-run)."""
    values: dict[str, Any] = {}
    for p in space:
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        else:
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log)
    return values


def make_job(preset: Preset, task: str, method: str, values: Mapping[str, Any],
             trial_id: str) -> dict[str, Any] | None:
    """The fine-tuning job of one suggestion; parameters not searched keep the preset's value.

    None when the suggestion leaves no attribute in the reduced basis (every rank 0).
    """
    job: dict[str, Any] = {
        "trial_id": trial_id, "axis": "search", "task": task, "method": method,
        "seed": preset.seeds[0], "lr": float(values.get("lr", preset.lr.get(method, 0.0))),
        "steps": int(values.get("steps", preset.steps)),
    }
    if method == "reduced":
        ranks = {f: int(values.get(f"rank_{f}", preset.rank)) for f in preset.factors}
        ranks = {f: r for f, r in ranks.items() if r > 0}
        if not ranks:
            return None
        job.update(factors=list(ranks), ranks=ranks, rank=None,
                   ortho=values.get("ortho", "qr"),
                   extraction=values.get("extraction", preset.extraction.method))
    else:
        rank = int(values.get("rank", preset.rank)) if method in _WITH_RANK else None
        job.update(factors=[], ranks={}, rank=rank, ortho=None, extraction=None)
    return job


def directions(task: str, objectives: tuple[str, ...]) -> list[str]:
    """Optuna directions: the main metric the way the task ranks it, parameters minimised."""
    error = "minimize" if get_task(task).lower_is_better else "maximize"
    return [error if o == "error" else "minimize" for o in objectives]


def outcome(result: Mapping[str, Any] | None, error: bool,
            objectives: tuple[str, ...]) -> tuple[str, list[float] | None]:
    """(Optuna state name, objective values) of a finished Tune trial.

    A trial that ran to the end reports ``status``; one ASHA stopped ends on a training-loss
    report without it, so it is PRUNED, never COMPLETE.
    """
    if error or not result:
        return "FAIL", None
    status = result.get("status")
    if status is None:
        return "PRUNED", None
    if status != "ok":
        return "FAIL", None
    values = [float(result["main"] if o == "error" else result["trainable_params"])
              for o in objectives]
    if not all(math.isfinite(v) for v in values):
        return "FAIL", None
    return "COMPLETE", values


def check_space(preset: Preset, task: str, method: str) -> tuple[SearchConfig,
                                                                 tuple[SearchParam, ...]]:
    """The preset's search section and the method's space, or a ConfigError naming why not."""
    if preset.search is None:
        raise ConfigError(f"preset {preset.name!r} has no search: section (see "
                          f"sweeps/presets.yaml)")
    space = preset.search.space.get(method)
    if space is None:
        raise ConfigError(f"preset {preset.name!r} has no search space for method {method!r}; "
                          f"it has: {', '.join(preset.search.space)}")
    if not any(p.name == "lr" for p in space) and method not in preset.lr:
        raise ConfigError(f"method {method!r} has no downstream lr in preset {preset.name!r}; "
                          f"search it (lr: {{low, high}}) or add the method there")
    get_task(task).check(preset.task_size())
    return preset.search, space


def make_sampler(name: str, seed: int | None, startup: int, n_objectives: int) -> Any:
    """The Optuna sampler, checked before any trial: GP needs scipy and torch, CMA-ES the
    ``cmaes`` package and a single objective."""
    import optuna

    check_sampler(name)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                              multivariate=True)
    if name == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"sampler 'gp' needs scipy and torch: {exc}") from exc
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    try:
        import cmaes  # noqa: F401
    except ImportError as exc:
        raise ConfigError("sampler 'cmaes' needs the cmaes package (pip install cmaes)") from exc
    if n_objectives > 1:
        raise ConfigError("sampler 'cmaes' optimises one objective; use --objectives error "
                          "or another sampler")
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)


# ---------------------------------------------------------------------------------------------
# Optuna study: persistent, uniquely named, resumable


def find_optuna(path: Path, name: str | None, attrs: Mapping[str, str]) -> str:
    """The Optuna study ``--resume`` continues: ``name``, or the latest with the same task,
    method and objectives; ConfigError (and nothing written) when there is none."""
    import optuna

    summaries = optuna.get_all_study_summaries(_journal(path)) if path.is_file() else []
    if name is None:
        same = [s for s in summaries
                if all(s.user_attrs.get(k) == v for k, v in attrs.items()
                       if k in ("task", "method", "objectives"))]
        if not same:
            raise ConfigError(
                f"nothing to resume: {path} holds no search of task {attrs['task']!r}, "
                f"method {attrs['method']!r}, objectives {attrs['objectives']!r}; "
                f"run without --resume"
            )
        return max(same, key=lambda s: s.user_attrs.get("created", "")).study_name
    if name not in {s.study_name for s in summaries}:
        raise ConfigError(f"no Optuna study {name!r} in {path}; it has: "
                          f"{', '.join(s.study_name for s in summaries) or 'none'}")
    return name


def open_optuna(path: Path, name: str | None, resume: bool, attrs: Mapping[str, str],
                dirs: list[str], sampler: Any) -> Any:
    """Create a new uniquely named study in the journal at ``path``, or (``resume``) load the
    named one or the latest with the same task, method and objectives."""
    import optuna

    journal = _journal(path)
    if resume:
        name = find_optuna(path, name, attrs)
        study = optuna.load_study(study_name=name, storage=journal, sampler=sampler)
        if [d.name.lower() for d in study.directions] != dirs:
            raise ConfigError(f"Optuna study {name!r} optimises {len(study.directions)} "
                              f"objective(s); resume it with its own --objectives")
        return study
    stamp = datetime.now(timezone.utc)
    name = name or (f"{attrs['study']}-{attrs['task']}-{attrs['method']}-"
                    f"{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}")
    study = optuna.create_study(storage=journal, study_name=name, directions=dirs,
                                sampler=sampler, load_if_exists=False)
    for k, v in {**attrs, "created": stamp.isoformat()}.items():
        study.set_user_attr(k, v)
    return study


INTERRUPTED = "interrupted: the search driver stopped before this trial finished"


def record_interrupted(preset: Preset, name: str, version: str, paths: StudyPaths,
                       jobs: list[dict[str, Any]]) -> None:
    """One failed row per job a killed driver left unfinished (``settle_stale``'s list)."""
    if jobs:
        upsert_table([search_row(preset, name, version, j, None, RuntimeError(INTERRUPTED))
                      for j in jobs], paths.table("trials"), trials_schema)


def settle_stale(study: Any, recorded: Mapping[str, Mapping[str, Any]],
                 objectives: tuple[str, ...],
                 job_of: Callable[[Any], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Tell Optuna how the trials a killed driver left RUNNING ended.

    A trial whose row reached the table before the driver died is told what the row says
    (COMPLETE with its values, PRUNED when ASHA stopped it); any other one FAIL. Returns the
    jobs of the latter, so the table records them as failed (never silently dropped). A
    trial killed before its job was stored gets it back from its parameters (``job_of``
    is deterministic in them and the trial number).
    """
    from optuna.trial import FixedTrial, TrialState

    unrecorded = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job = t.user_attrs.get("job")
        if job is None:
            try:
                job = job_of(FixedTrial(t.params, t.number))
            except ValueError:  # killed before every parameter was suggested: nothing ran
                job = None
        row = recorded.get(job["trial_id"]) if job else None
        state, values = "FAIL", None
        if row is not None:
            state, values = ("PRUNED", None) if row["status"] == "stopped" else outcome(
                row, False, objectives)
        elif job is not None:
            unrecorded.append(job)
        study.tell(t.number, values, state=getattr(TrialState, state), skip_if_finished=True)
    return unrecorded


@dataclass
class Stream:
    """One Optuna study a searcher serves: its trials become jobs through ``job_of``; this run
    asks it for ``budget`` trials and tells it every outcome on ``objectives``."""

    study: Any
    job_of: Callable[[Any], dict[str, Any] | None]
    budget: int
    objectives: tuple[str, ...] = ("error",)


def make_searcher(streams: Sequence[Stream]) -> Any:
    """A Tune Searcher that asks the streams' Optuna studies, in turn, for each Tune trial and
    tells each study its own trials' outcomes; it is finished once every budget is asked.

    One stream is an ordinary search; several (the ablation's learning-rate tuning, one study
    per task and method) share one Tune run, so every CPU stays busy across them.
    """
    from optuna.trial import TrialState
    from ray.tune.search import Searcher

    class AskTell(Searcher):
        """Optuna ask/tell behind Tune's Searcher interface (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.asked = [0] * len(streams)
            self.live: dict[str, tuple[Stream, Any]] = {}
            self.steps: dict[str, int] = {}
            self.told: Counter[str] = Counter()
            self.pending: dict[str, tuple[Any, Any, Any, str]] = {}

        def set_search_properties(self, metric: str | None, mode: str | None,
                                  config: dict, **spec: Any) -> bool:
            return True  # the space is the preset's, not Tune's param_space

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            open_ = [i for i, s in enumerate(streams) if self.asked[i] < s.budget]
            if not open_:
                return Searcher.FINISHED
            i = min(open_, key=lambda k: self.asked[k])  # round robin over the studies
            stream = streams[i]
            for _ in range(100):
                trial = stream.study.ask()
                job = stream.job_of(trial)
                if job is not None:
                    break
                trial.set_user_attr("reason", "every rank_* is 0: no attribute left")
                stream.study.tell(trial, state=TrialState.FAIL)
                self.told["FAIL"] += 1
            else:
                raise ConfigError("100 suggestions in a row left no attribute in the basis; "
                                  "raise the rank_* bounds")
            self.asked[i] += 1
            trial.set_user_attr("job", job)
            trial.set_user_attr("tune_trial", trial_id)
            self.live[trial_id] = (stream, trial)
            return {"job": job}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if "step" not in result or trial_id not in self.live \
                    or self.steps.get(trial_id) == result["step"]:
                return
            self.steps[trial_id] = int(result["step"])
            stream, trial = self.live[trial_id]
            loss = result.get("loss")
            # single objective: the training loss orders pruned trials for the sampler
            if len(stream.objectives) == 1 and loss is not None and math.isfinite(loss):
                trial.report(float(loss), int(result["step"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id not in self.live:
                return
            if result and "step" in result:  # a STOP decision's result reaches only here
                self.on_trial_result(trial_id, result)
            stream, trial = self.live.pop(trial_id)
            state, values = outcome(result, error, stream.objectives)
            step = self.steps.pop(trial_id, None)
            if state == "PRUNED" and step is not None:
                trial.set_user_attr("step", step)
            if state == "COMPLETE" and result is not None:
                trial.set_user_attr("steps", result.get("steps"))
                if result.get("total_rank") is not None:
                    trial.set_user_attr("total_rank", int(result["total_rank"]))
            self.pending[trial_id] = (stream.study, trial, values, state)

        def settle(self, trial_id: str) -> None:
            """Tell Optuna a trial's outcome once its row is in the table. Tune calls
            ``on_trial_complete`` before its callbacks, so telling there would leave a
            finished Optuna trial without a row if the driver died in between; told here, a
            killed driver leaves it RUNNING and the resumed study settles it from the table."""
            if trial_id in self.pending:
                study, trial, values, state = self.pending.pop(trial_id)
                study.tell(trial, values, state=getattr(TrialState, state))
                self.told[state] += 1

        def settle_all(self) -> None:
            for trial_id in list(self.pending):
                self.settle(trial_id)

    return AskTell()


# ---------------------------------------------------------------------------------------------
# The trial


def search_row(preset: Preset, study: str, version: str, job: dict[str, Any],
               metrics: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
    """The trials-table row of one search trial: ok, failed, or stopped by ASHA (no final
    report; ``steps`` is then the last step it reported)."""
    m = dict(metrics or {})
    if error is not None:
        status, message = "failed", f"{type(error).__name__}: {error}"[:2000]
    elif m.get("status") in ("ok", "failed"):
        status, message = m["status"], m.get("error") or None
    else:
        status, message = "stopped", None
    row: dict[str, Any] = {
        "trial_id": job["trial_id"], "study": study, "stage": "search", "axis": job["axis"],
        "task": job["task"], "method": job["method"], "factors": "+".join(job["factors"]),
        "rank": job["rank"], "ortho": job["ortho"], "extraction": job["extraction"],
        "seed": job["seed"], "lr": job["lr"], "wall_s": m.get("trial_wall_s"),
        "base": preset.model, "code_version": version,
        **{f"rank_{a}": r for a, r in job["ranks"].items()},
    }
    for k, v in m.items():  # what the trial measured; Tune's own keys (its trial_id) stay out
        if k in _MEASURED or (k not in TRIAL_COLUMNS and k not in _TUNE_KEYS
                              and isinstance(v, (int, float)) and not isinstance(v, bool)):
            row[k] = v
    row.update(status=status, error=message, steps=m.get("steps", m.get("step")))
    return row


def pareto_rows(study: Any, name: str, version: str, objectives: str) -> list[dict[str, Any]]:
    """One row per Pareto-optimal COMPLETE trial of a two-objective study."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        j = t.user_attrs["job"]
        rows.append({
            "study": name, "optuna_study": study.study_name, "trial_id": j["trial_id"],
            "optuna_trial": t.number, "task": j["task"], "method": j["method"],
            "objectives": objectives, "main": float(t.values[0]),
            "trainable_params": int(t.values[1]), "lr": j["lr"],
            "steps": t.user_attrs.get("steps", j["steps"]), "rank": j["rank"],
            **{f"rank_{a}": r for a, r in j["ranks"].items()},
            "factors": "+".join(j["factors"]), "total_rank": t.user_attrs.get("total_rank"),
            "ortho": j["ortho"], "extraction": j["extraction"], "seed": j["seed"],
            "code_version": version,
        })
    return rows


def write_pareto(rows: list[dict[str, Any]], optuna_study: str, path: str) -> None:
    """Replace this Optuna study's front in ``pareto.parquet``, keeping other searches'."""
    kept = [r for r in read_table(path) if r["optuna_study"] != optuna_study]
    write_table(kept + rows, PARETO_SCHEMA, path)


# ---------------------------------------------------------------------------------------------
# The driver


def parser() -> argparse.ArgumentParser:
    p = study_parser("search", __doc__)
    p.add_argument("--task", default="print_attack", help="downstream task")
    p.add_argument("--method", default="reduced", help="reduced | lora (any with a space)")
    p.add_argument("--objectives", default="error", choices=sorted(OBJECTIVES),
                   help="error: the task's main metric; error,params: also trainable params")
    p.add_argument("--trials", type=COUNT, default=None,
                   help="trials this run adds (default: the preset's search.trials)")
    p.add_argument("--sampler", default=None,
                   help="tpe | random | gp | cmaes (default: the preset's search.sampler)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")
    p.add_argument("--optuna-study", default=None,
                   help="with --resume: the Optuna study to continue (default: the latest of "
                        "this task, method and objectives)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything, mine the bank if the study lacks it, then the search."""
    import optuna

    t0 = time.perf_counter()
    preset = load_preset(args.preset, args.presets)
    cfg, space = check_space(preset, args.task, args.method)
    objectives = OBJECTIVES.get(args.objectives)
    if objectives is None:
        raise ConfigError(f"unknown --objectives {args.objectives!r}; valid: "
                          f"{', '.join(OBJECTIVES)}")
    sampler_name = check_sampler(args.sampler or cfg.sampler, "--sampler")
    trials = cfg.trials if args.trials is None else args.trials
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    sampler = make_sampler(sampler_name, args.seed, cfg.startup_trials, len(objectives))
    st = open_study(args, adds=True)
    name, paths, version, weights = st.name, st.paths, st.version, st.weights
    ensure_task_data(args.task, paths.cache, paths.real_data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    attrs = {"study": name, "task": args.task, "method": args.method,
             "objectives": args.objectives, "preset": preset.name, "sampler": sampler_name}
    if args.optuna_study and not args.resume:
        raise ConfigError("--optuna-study names a study to continue: add --resume")
    if args.resume:  # the search to continue exists, or stop before anything is written
        pull_journal(paths)
        find_optuna(paths.local / JOURNAL, args.optuna_study, attrs)
    with session(st, args.num_cpus, actor=args.method == "reduced") as handle:
        pull_journal(paths)
        study = open_optuna(paths.local / JOURNAL, args.optuna_study, args.resume, attrs,
                            directions(args.task, objectives), sampler)
        try:
            job_of = search_jobs(preset, space, args.task, args.method, study.study_name)
            stale = settle_stale(
                study, {r["trial_id"]: r for r in read_table(paths.table("trials"))},
                objectives, job_of)
            record_interrupted(preset, name, version, paths, stale)
            before = len(study.trials)
            if handle is not None:
                _bank(preset, st, handle)
            rows, told = _search(preset, cfg, space, study, job_of, name, paths, version,
                                 weights, args, objectives, trials)
        finally:
            push_journal(paths)
    pareto = None
    if len(objectives) == 2:
        pareto = pareto_rows(study, name, version, args.objectives)
        write_pareto(pareto, study.study_name, paths.table("pareto"))
    return {
        "optuna_study": study.study_name,
        "journal": paths.file(JOURNAL) if paths.remote else str(paths.local / JOURNAL),
        "rows": rows, "told": dict(told), "trials_before": before,
        "trials_after": len(study.trials), "states": dict(Counter(
            t.state.name for t in study.trials)),
        "best": None if len(objectives) == 2 or not _has_complete(study) else {
            "value": study.best_value, "params": study.best_trial.params,
            "trial_id": study.best_trial.user_attrs["job"]["trial_id"]},
        "pareto": pareto, "tables": {n: paths.table(n) for n in ("trials", "pareto")},
        "wall_s": time.perf_counter() - t0,
    }


def _has_complete(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _bank(preset: Preset, st: Study, handle: Any) -> None:
    """Mine the study's bank (stage 1) with its subspace actor when the study lacks it."""
    import ray

    from sweeps.mine import run_mining

    if not ray.get(handle.has_bank.remote(preset.extraction.method)):
        upsert_table(run_mining(preset, st.name, st.paths, st.version, st.weights),
                     st.paths.table("trials"), trials_schema)
    missing = ray.get(handle.missing.remote())
    if missing and not ray.get(handle.has_bank.remote(preset.extraction.method)):
        raise ConfigError(f"study {st.name!r} has no subspace bank: adapters missing {missing} "
                          f"(see the mining rows of {st.paths.table('trials')})")
    ray.get(handle.bank_path.remote(preset.extraction.method))


def search_jobs(preset: Preset, space: tuple[SearchParam, ...], task: str, method: str,
                study_name: str) -> Callable[[Any], dict[str, Any] | None]:
    """The job of each trial of one search study, from its suggestions and number."""

    def job_of(trial: Any) -> dict[str, Any] | None:
        return make_job(preset, task, method, suggest(trial, space),
                        f"search-{study_name}-{trial.number:04d}")

    return job_of


def _search(preset: Preset, cfg: SearchConfig, space: tuple[SearchParam, ...], study: Any,
            job_of: Callable[[Any], dict[str, Any] | None], name: str, paths: StudyPaths,
            version: str, weights: str | None, args: argparse.Namespace,
            objectives: tuple[str, ...], trials: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Run ``trials`` Tune trials driven by the Optuna study; rows are written as they end."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    steps = next((p for p in space if p.name == "steps"), None)
    max_t = int(steps.high) if steps is not None else preset.steps
    scheduler = None
    if cfg.asha is not None and cfg.asha["grace_period"] < max_t:  # else it cannot stop any
        scheduler = AsyncHyperBandScheduler(
            time_attr="step", metric="loss", mode="min", max_t=max_t,
            grace_period=int(cfg.asha["grace_period"]),
            reduction_factor=cfg.asha["reduction_factor"],
        )
    return run_streams(
        preset, [Stream(study, job_of, trials, objectives)], name, paths, version, weights,
        experiment=f"search-{study.study_name}", desc="search", scheduler=scheduler,
        concurrency=cfg.concurrency,
    )


def run_streams(preset: Preset, streams: Sequence[Stream], name: str, paths: StudyPaths,
                version: str, weights: str | None, *, experiment: str, desc: str,
                scheduler: Any = None,
                concurrency: int | None = None) -> tuple[list[dict[str, Any]], Counter[str]]:
    """One Tune run of fine-tuning trials asked from ``streams``' Optuna studies; each row
    is written as its trial ends, and all of them (stage ``search``) are returned."""
    from ray import tune

    total = sum(s.budget for s in streams)
    searcher = make_searcher(streams)
    res = preset.resources["finetune"]
    params = {"model": preset.model, "weights": weights, "random_init": preset.random_init,
              "steps": preset.steps, "report_every": preset.report_every, "rank": preset.rank,
              "batch_size": preset.batch_size, "views": preset.views, "size": preset.size,
              **preset.scenes}

    def row(job: dict[str, Any], m: dict[str, Any] | None,
            err: BaseException | None) -> dict[str, Any]:
        return search_row(preset, name, version, job, m, err)

    rec = recorder(paths.table("trials"), row, written=searcher.settle)
    tuner = tune.Tuner(
        tune.with_resources(finetune_trial, res),
        param_space={"params": params, "study_id": study_id(name, paths),
                     "real_data": paths.real_data, "cache": str(paths.cache),
                     "cpu": res["cpu"]},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=total, max_concurrent_trials=concurrency,
                                    reuse_actors=True),
        run_config=run_config(f"{experiment}-{datetime.now(timezone.utc):%H%M%S%f}", paths,
                              total, desc, rec),
    )
    rows = [row(r.config["job"], r.metrics, r.error) for r in fit(tuner, rec)]
    upsert_table(rows, paths.table("trials"), trials_schema)
    searcher.settle_all()
    return rows, searcher.told


# ---------------------------------------------------------------------------------------------
# The ablation's learning-rate tuning: one Optuna study per (task, method), equal budgets


def lr_study_name(study: str, task: str, method: str) -> str:
    return f"{study}-lr-{task}-{method}"


def tune_lrs(preset: Preset, name: str, paths: StudyPaths, version: str,
             weights: str | None) -> dict[tuple[str, str], float]:
    """The best learning rate of every trained method on every task (preset.lr_search).

    Each (task, method) has its own Optuna study in the study's journal, so a resumed study
    asks only for the trials still missing; all of them run in one Tune run. A method with
    no completed trial keeps its preset rate.
    """
    import optuna

    cfg = preset.lr_search
    if cfg is None:
        raise ConfigError(f"preset {preset.name!r} has no downstream.lr_search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pull_journal(paths)
    journal = _journal(paths.local / JOURNAL)
    recorded = {r["trial_id"]: r for r in read_table(paths.table("trials"))}
    streams, studies, stale = [], {}, []
    for task in preset.tasks:
        for method in preset.methods:
            if method == "none":
                continue
            lr = preset.lr[method]
            sampler = (_grid_sampler({"lr": cfg.rates(lr)}, cfg.seed) if cfg.sampler == "grid"
                       else make_sampler(cfg.sampler, cfg.seed, 0, 1))
            study = optuna.create_study(
                storage=journal, study_name=lr_study_name(name, task, method),
                directions=directions(task, ("error",)), sampler=sampler, load_if_exists=True)
            job_of = _lr_job(preset, task, method)
            stale += settle_stale(study, recorded, ("error",), job_of)
            studies[task, method] = study
            budget = cfg.trials - len(study.trials)  # asked trials, failed ones included
            if budget > 0:
                streams.append(Stream(study, job_of, budget))
    record_interrupted(preset, name, version, paths, stale)
    if streams:
        # Tune lets a custom searcher keep one trial pending unless max_concurrent_trials is
        # set (ray 2.60 _get_max_pending_trials), and a fresh trial actor (torch, PEFT
        # imports) takes longer to start than a quick trial to run, so the pending trial
        # always went to the one reused actor: the search ran one trial at a time. A grid's
        # rates do not depend on results, so all may be in flight (a resumed search with one
        # study left still fills every CPU); a model-based sampler gets one trial in flight
        # per study (asked in turn), never several rates before it has seen any result.
        grid = cfg.sampler == "grid"
        concurrency = sum(s.budget for s in streams) if grid else len(streams)
        try:
            run_streams(preset, streams, name, paths, version, weights,
                        experiment=f"{name}-lr", desc="lr search", concurrency=concurrency)
        finally:
            push_journal(paths)
    return {key: (s.best_params["lr"] if _has_complete(s) else preset.lr[key[1]])
            for key, s in studies.items()}


def _lr_job(preset: Preset, task: str,
            method: str) -> Callable[[Any], dict[str, Any] | None]:
    """Jobs of one (task, method) learning-rate study: exactly the method's main-grid job
    (same ranks, basis, budget), at the search seed, with the suggested rate."""
    cfg = preset.lr_search
    assert cfg is not None
    main = next(j for j in finetune_jobs(preset)
                if j["axis"] == "main" and j["task"] == task and j["method"] == method)
    low, high = cfg.bounds(preset.lr[method])

    def job_of(trial: Any) -> dict[str, Any]:
        return {**main, "axis": "lr", "seed": cfg.seed,
                "ranks": {a: main["rank"] for a in main["factors"]},
                "lr": trial.suggest_float("lr", low, high, log=True),
                "trial_id": f"lr-{task}-{method}-{trial.number:03d}"}

    return job_of


def _grid_sampler(grid: dict[str, list[float]], seed: int) -> Any:
    """Optuna's GridSampler for ask/tell: its ``after_trial`` stops ``study.optimize`` once
    the grid is done, which raises outside ``optimize``; here the budget is the grid."""
    import optuna

    class AskTellGrid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGrid(grid, seed=seed)


def pull_journal(paths: StudyPaths) -> None:
    """A URI study's journal into this head's cache, when the cache has none (a fresh head)."""
    local, published = paths.local / JOURNAL, paths.file(JOURNAL)
    if paths.remote and not local.is_file() and storage.exists(published):
        storage.get_file(published, local)


def push_journal(paths: StudyPaths) -> None:
    """Publish a snapshot of the journal to a URI study (object stores cannot append)."""
    local = paths.local / JOURNAL
    if paths.remote and local.is_file():
        storage.put_file(local, paths.file(JOURNAL))


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def summary(out: dict[str, Any]) -> str:
    """What the run did and where its results are."""
    def counts(c: Mapping[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))

    lines = [f"optuna study {out['optuna_study']}: {out['trials_before']} -> "
             f"{out['trials_after']} trials ({counts(out['states'])})",
             f"this run: {len(out['rows'])} Tune trials "
             f"({counts(Counter(r['status'] for r in out['rows']))})"]
    if out["best"] is not None:
        lines.append(f"best: {out['best']['value']:.4f} {out['best']['params']} "
                     f"({out['best']['trial_id']})")
    if out["pareto"] is not None:
        lines.append(f"pareto front ({len(out['pareto'])} points), main vs trainable params:")
        lines += [f"  {r['main']:.4f}  {r['trainable_params']:>9}  lr={r['lr']:.2e} "
                  f"steps={r['steps']} factors={r['factors'] or '-'} rank={r['rank']} "
                  f"ortho={r['ortho']}" for r in out["pareto"]]
    lines += [f"journal: {out['journal']}", *(f"{k}: {v}" for k, v in out["tables"].items()),
              f"wall: {out['wall_s']:.1f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = run(args)
    except STUDY_ERRORS as exc:
        return print_error("search", exc)
    except KeyboardInterrupt:
        return print_interrupted("search", argv)
    print(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
