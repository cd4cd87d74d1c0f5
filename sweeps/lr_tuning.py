"""The ablation's learning-rate tuning: one Optuna study per (task, method), equal budgets,
all of them in one Tune run, before stage 2 trains each method at its own best rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from attrsub.errors import ConfigError
from attrsub.methods import REGISTRY
from results.schema import read_table
from sweeps.config import Preset
from sweeps.finetune import finetune_jobs
from sweeps.job import Job
from sweeps.searcher import (
    JOURNAL,
    Stream,
    directions,
    has_complete,
    journal,
    make_sampler,
    pull_journal,
    push_journal,
    record_interrupted,
    run_streams,
    settle_stale,
)
from sweeps.study import StudyPaths


def lr_study_name(study: str, task: str, method: str) -> str:
    """The Optuna study of one (task, method) in the study's journal."""
    return f"{study}-lr-{task}-{method}"


def tune_lrs(preset: Preset, name: str, paths: StudyPaths, version: str,
             weights: str | None) -> dict[tuple[str, str], float]:
    """The best learning rate of every trained method on every task (preset.downstream.lr_search).

    Each (task, method) has its own Optuna study in the study's journal, so a resumed study
    asks only for the trials still missing; all of them run in one Tune run. A method with
    no completed trial keeps its preset rate.
    """
    import optuna

    cfg = preset.downstream.lr_search
    if cfg is None:
        raise ConfigError(f"preset {preset.name!r} has no downstream.lr_search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pull_journal(paths)
    store = journal(paths.local / JOURNAL)
    recorded = {r["trial_id"]: r for r in read_table(paths.table("trials"))}
    streams, studies, stale = [], {}, []
    for task in preset.downstream.tasks:
        for method in preset.downstream.methods:
            if not REGISTRY[method].trains:
                continue
            lr = preset.downstream.lr[method]
            sampler = (_grid_sampler({"lr": cfg.rates(lr)}, cfg.seed) if cfg.sampler == "grid"
                       else make_sampler(cfg.sampler, cfg.seed, 0, 1))
            study = optuna.create_study(
                storage=store, study_name=lr_study_name(name, task, method),
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
    return {key: (s.best_params["lr"] if has_complete(s) else preset.downstream.lr[key[1]])
            for key, s in studies.items()}


def _lr_job(preset: Preset, task: str, method: str) -> Callable[[Any], Job]:
    """Jobs of one (task, method) learning-rate study: exactly the method's main-grid job
    (same ranks, basis, budget), at the search seed, with the suggested rate."""
    cfg = preset.downstream.lr_search
    assert cfg is not None
    main = next(j for j in finetune_jobs(preset)
                if j.axis == "main" and j.task == task and j.method == method)
    low, high = cfg.bounds(preset.downstream.lr[method])

    def job_of(trial: Any) -> Job:
        return replace(main, axis="lr", seed=cfg.seed,
                       ranks={a: main.rank for a in main.factors},
                       lr=trial.suggest_float("lr", low, high, log=True),
                       trial_id=f"lr-{task}-{method}-{trial.number:03d}")

    return job_of


def _grid_sampler(grid: dict[str, list[float]], seed: int) -> Any:
    """Optuna's GridSampler for ask/tell: its ``after_trial`` stops ``study.optimize`` once
    the grid is done, which raises outside ``optimize``; here the budget is the grid."""
    import optuna

    class AskTellGrid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGrid(grid, seed=seed)


