"""Optuna search over the reduced-subspace design (and, to compare, LoRA's), as Ray Tune trials.

    python sweeps/search.py --preset smoke --task print_attack --method reduced \\
        --objectives error,params --trials 8 --storage /tmp/s --study s1
    python sweeps/search.py ... --study s1 --resume --trials 4   # the same Optuna study, 4 more

The space is data: the preset's ``search:`` section (sweeps/presets.yaml), validated before
any trial. For ``reduced`` it spans learning rate, steps, one rank per factor
(``rank_texture`` ...; 0 leaves the factor out, so the subset is searched too) and the
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
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from attrsub.cli import COUNT
from attrsub.errors import ConfigError
from attrsub.methods import REGISTRY
from attrsub.tasks import get_task
from results.schema import PARETO_SCHEMA, read_table, write_table
from sweeps.config import Preset, SearchConfig, SearchParam, check_sampler, load_preset
from sweeps.job import Job
from sweeps.mining import mine_bank
from sweeps.searcher import (
    JOURNAL,
    Stream,
    directions,
    find_optuna,
    has_complete,
    make_sampler,
    open_optuna,
    pull_journal,
    push_journal,
    record_interrupted,
    run_streams,
    settle_stale,
)
from sweeps.session import drive, session
from sweeps.study import Study, StudyPaths, ensure_task_data, open_study, study_parser

OBJECTIVES = {"error": ("error",), "error,params": ("error", "params")}


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
             trial_id: str) -> Job | None:
    """The fine-tuning job of one suggestion; parameters not searched keep the preset's value.

    None when the suggestion leaves no factor in the reduced basis (every rank 0).
    """
    common: dict[str, Any] = {
        "trial_id": trial_id, "axis": "search", "task": task, "method": method,
        "seed": preset.downstream.seeds[0],
        "lr": float(values.get("lr", preset.downstream.lr.get(method, 0.0))),
        "steps": int(values.get("steps", preset.downstream.steps)),
    }
    if REGISTRY[method].needs_bank:
        ranks = {f: int(values.get(f"rank_{f}", preset.downstream.rank)) for f in preset.factors}
        ranks = {f: r for f, r in ranks.items() if r > 0}
        if not ranks:
            return None
        return Job(**common, factors=tuple(ranks), ranks=ranks, rank=None,
                   ortho=values.get("ortho", "qr"),
                   extraction=values.get("extraction", preset.extraction.method))
    rank = int(values.get("rank", preset.downstream.rank)) if REGISTRY[method].takes_rank else None
    return Job(**common, factors=(), ranks={}, rank=rank, ortho=None, extraction=None)


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
    if not any(p.name == "lr" for p in space) and method not in preset.downstream.lr:
        raise ConfigError(f"method {method!r} has no downstream lr in preset {preset.name!r}; "
                          f"search it (lr: {{low, high}}) or add the method there")
    get_task(task).check(preset.task_size())
    return preset.search, space


# ---------------------------------------------------------------------------------------------
# The Pareto front


def pareto_rows(study: Any, name: str, version: str, objectives: str) -> list[dict[str, Any]]:
    """One row per Pareto-optimal COMPLETE trial of a two-objective study."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        j = Job.from_dict(t.user_attrs["job"])
        rows.append({
            "study": name, "optuna_study": study.study_name, "trial_id": j.trial_id,
            "optuna_trial": t.number, "task": j.task, "method": j.method,
            "objectives": objectives, "main": float(t.values[0]),
            "trainable_params": int(t.values[1]), "lr": j.lr,
            "steps": t.user_attrs.get("steps", j.steps), "rank": j.rank,
            **{f"rank_{a}": r for a, r in j.factor_ranks.items()},
            "factors": "+".join(j.factors), "total_rank": t.user_attrs.get("total_rank"),
            "ortho": j.ortho, "extraction": j.extraction, "seed": j.seed,
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
    needs_bank = args.method in REGISTRY and REGISTRY[args.method].needs_bank
    with session(st, args.num_cpus, actor=needs_bank) as handle:
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
        "best": None if len(objectives) == 2 or not has_complete(study) else {
            "value": study.best_value, "params": study.best_trial.params,
            "trial_id": study.best_trial.user_attrs["job"]["trial_id"]},
        "pareto": pareto, "tables": {n: paths.table(n) for n in ("trials", "pareto")},
        "wall_s": time.perf_counter() - t0,
    }


def _bank(preset: Preset, st: Study, handle: Any) -> None:
    """Mine the study's bank (stage 1) with its subspace actor when the study lacks it."""
    import ray

    mine_bank(st, handle)
    missing = ray.get(handle.missing.remote())
    if missing and not ray.get(handle.has_bank.remote(preset.extraction.method)):
        raise ConfigError(f"study {st.name!r} has no subspace bank: adapters missing {missing} "
                          f"(see the mining rows of {st.paths.table('trials')})")
    ray.get(handle.bank_path.remote(preset.extraction.method))


def search_jobs(preset: Preset, space: tuple[SearchParam, ...], task: str, method: str,
                study_name: str) -> Callable[[Any], Job | None]:
    """The job of each trial of one search study, from its suggestions and number."""

    def job_of(trial: Any) -> Job | None:
        return make_job(preset, task, method, suggest(trial, space),
                        f"search-{study_name}-{trial.number:04d}")

    return job_of


def _search(preset: Preset, cfg: SearchConfig, space: tuple[SearchParam, ...], study: Any,
            job_of: Callable[[Any], Job | None], name: str, paths: StudyPaths,
            version: str, weights: str | None, args: argparse.Namespace,
            objectives: tuple[str, ...], trials: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Run ``trials`` Tune trials driven by the Optuna study; rows are written as they end."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    steps = next((p for p in space if p.name == "steps"), None)
    max_t = int(steps.high) if steps is not None else preset.downstream.steps
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

    def body() -> int:
        print(summary(run(args)))
        return 0

    return drive("search", body, argv)


if __name__ == "__main__":
    sys.exit(main())
