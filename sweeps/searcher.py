"""The Optuna searcher: Optuna's ask/tell behind Tune's Searcher interface, over studies kept
in a JournalStorage file that a killed driver's successor settles and continues.

Ray's own OptunaSearch (Ray 2.60, Optuna 5.0) reads the metric from every intermediate
result, takes an ASHA-stopped or failed trial for a complete or pruned one, and reuses an
old study of its default name; ``AskTell`` asks Optuna for every Tune trial and tells it
what really happened: COMPLETE with the objective values of a trial that ran to the end,
PRUNED (user attribute ``step``) for one ASHA stopped, FAIL for a failed one. With one
objective the training losses are also Optuna's intermediate values, which orders the
pruned trials for the sampler. Used by sweeps/search.py and the ablation's learning-rate
tuning (sweeps/lr_tuning.py).
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attrsub import storage
from attrsub.errors import ConfigError
from attrsub.tasks import get_task
from results.schema import trials_schema, upsert_table
from sweeps.config import Preset, check_sampler
from sweeps.finetune import finetune_params
from sweeps.job import Job
from sweeps.rows import trial_row
from sweeps.study import StudyPaths, study_id
from sweeps.trainables import finetune_trial
from sweeps.tune_run import fit, recorder, run_config

JOURNAL = "optuna.journal"


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

    summaries = optuna.get_all_study_summaries(journal(path)) if path.is_file() else []
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

    store = journal(path)
    if resume:
        name = find_optuna(path, name, attrs)
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler)
        if [d.name.lower() for d in study.directions] != dirs:
            raise ConfigError(f"Optuna study {name!r} optimises {len(study.directions)} "
                              f"objective(s); resume it with its own --objectives")
        return study
    stamp = datetime.now(timezone.utc)
    name = name or (f"{attrs['study']}-{attrs['task']}-{attrs['method']}-"
                    f"{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}")
    study = optuna.create_study(storage=store, study_name=name, directions=dirs,
                                sampler=sampler, load_if_exists=False)
    for k, v in {**attrs, "created": stamp.isoformat()}.items():
        study.set_user_attr(k, v)
    return study


INTERRUPTED = "interrupted: the search driver stopped before this trial finished"


def record_interrupted(preset: Preset, name: str, version: str, paths: StudyPaths,
                       jobs: list[Job]) -> None:
    """One failed row per job a killed driver left unfinished (``settle_stale``'s list)."""
    if jobs:
        upsert_table([trial_row(preset, name, version, "search", j, None,
                                RuntimeError(INTERRUPTED))
                      for j in jobs], paths.table("trials"), trials_schema)


def settle_stale(study: Any, recorded: Mapping[str, Mapping[str, Any]],
                 objectives: tuple[str, ...],
                 job_of: Callable[[Any], Job | None]) -> list[Job]:
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
        stored = t.user_attrs.get("job")
        job = None if stored is None else Job.from_dict(stored)
        if job is None:
            try:
                job = job_of(FixedTrial(t.params, t.number))
            except ValueError:  # killed before every parameter was suggested: nothing ran
                job = None
        row = recorded.get(job.trial_id) if job else None
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
    job_of: Callable[[Any], Job | None]
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
                trial.set_user_attr("reason", "every rank_* is 0: no factor left")
                stream.study.tell(trial, state=TrialState.FAIL)
                self.told["FAIL"] += 1
            else:
                raise ConfigError("100 suggestions in a row left no factor in the basis; "
                                  "raise the rank_* bounds")
            self.asked[i] += 1
            trial.set_user_attr("job", job.to_dict())
            trial.set_user_attr("tune_trial", trial_id)
            self.live[trial_id] = (stream, trial)
            return {"job": job.to_dict()}

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


def has_complete(study: Any) -> bool:
    """Whether the Optuna study has a COMPLETE trial (else it has no best one)."""
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))



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

    def row(job: dict[str, Any], m: dict[str, Any] | None,
            err: BaseException | None) -> dict[str, Any]:
        return trial_row(preset, name, version, "search", Job.from_dict(job), m, err)

    rec = recorder(paths.table("trials"), row, written=searcher.settle)
    tuner = tune.Tuner(
        tune.with_resources(finetune_trial, res),
        param_space={"params": finetune_params(preset, weights), "study_id": study_id(name, paths),
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


def journal(path: Path) -> Any:
    """The Optuna storage of the journal file at ``path``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


