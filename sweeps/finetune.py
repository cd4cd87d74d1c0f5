"""Stage 2, the fine-tuning grid: every method x task x seed, plus the reduced method's
ablation axes, each one attrsub.methods.finetune call in its own Tune trial."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attrsub.methods import PAPER_METHOD, REGISTRY
from sweeps.config import Preset
from sweeps.job import Job
from sweeps.rows import trial_row
from sweeps.study import StudyPaths
from sweeps.trainables import finetune_trial
from sweeps.tune_run import run_grid


def finetune_jobs(preset: Preset) -> list[Job]:
    """Every stage-2 trial: the main grid, then one axis at a time around the reduced default."""
    main_ext, all_f = preset.extraction.method, tuple(preset.factors)
    down, abl = preset.downstream, preset.ablation
    jobs = []
    for task in down.tasks:
        for seed in down.seeds:
            for method in down.methods:
                jobs.append(_job("main", task, method, seed, preset, all_f, down.rank, "qr",
                                 main_ext))
            if (PAPER_METHOD not in down.methods or seed not in abl.seeds
                    or task not in abl.tasks):
                continue
            variants = (
                [("ranks", all_f, r, "qr", main_ext) for r in abl.ranks if r != down.rank]
                + [("subsets", tuple(s), down.rank, "qr", main_ext)
                   for s in abl.subsets if tuple(s) != all_f]
                + [("ortho", all_f, down.rank, o, main_ext) for o in abl.ortho if o != "qr"]
                + [("extraction", all_f, down.rank, "qr", e)
                   for e in abl.extraction if e != main_ext]
            )
            for axis, factors, rank, ortho, extraction in variants:
                jobs.append(_job(axis, task, PAPER_METHOD, seed, preset, factors, rank, ortho,
                                 extraction))
    return jobs


def _job(axis: str, task: str, method: str, seed: int, preset: Preset,
         factors: tuple[str, ...], rank: int | None, ortho: str | None,
         extraction: str | None) -> Job:
    """One stage-2 job: the reduced method's as given; another method trains no basis, and
    psv and random get the reduced default's budget (D x D)."""
    m = REGISTRY[method]
    if not m.needs_bank:
        factors, ortho, extraction = (), None, None
        if not m.takes_rank:
            rank = None
        elif m.basis_family:
            rank = preset.downstream.rank * len(preset.factors)
    parts = [axis, task, method, "+".join(factors) or "-", f"r{rank}", ortho or "-",
             extraction or "-", f"s{seed}"]
    return Job(trial_id="ft-" + "-".join(str(p) for p in parts), axis=axis, task=task,
               method=method, seed=seed, lr=preset.downstream.lr.get(method),  # None for zero-shot
               factors=factors, rank=rank, ortho=ortho, extraction=extraction)


def with_lrs(jobs: list[Job], tuned: dict[tuple[str, str], float]) -> list[Job]:
    """``jobs`` at the tuned rate of their (task, method), where it was tuned."""
    return [replace(j, lr=tuned.get((j.task, j.method), j.lr)) for j in jobs]


def longest_first(jobs: list[Job]) -> list[Job]:
    """``jobs`` in the order Tune should start them: full fine-tuning first, zero-shot
    evaluations last, the rest as given. The run then ends on short trials, so no worker
    idles long while another finishes (bench/sweep.py: 0.27 -> 0.23 s overhead per trial)."""
    return sorted(jobs, key=lambda j: -REGISTRY[j.method].relative_cost)


def finetune_params(preset: Preset, weights: str | None) -> dict[str, Any]:
    """The preset's values every fine-tuning trial shares (``config["params"]``)."""
    down = preset.downstream
    return {"model": preset.model, "weights": weights, "random_init": preset.random_init,
            "steps": down.steps, "report_every": down.report_every, "rank": down.rank,
            "batch_size": down.batch_size, "views": preset.views, "size": preset.size,
            **preset.scenes}


def run_finetune(
    preset: Preset, study: str, paths: StudyPaths, version: str, jobs: list[Job],
    weights: str | None = None,
) -> list[dict[str, Any]]:
    """Run stage 2's ``jobs`` (longest first); returns one trials-table row per job (failed
    ones included)."""
    if not jobs:
        return []
    return run_grid(
        finetune_trial, [j.to_dict() for j in longest_first(jobs)],
        resources=preset.resources["finetune"], params=finetune_params(preset, weights),
        study=study, paths=paths, experiment=f"{study}-ablation", desc="ablation",
        row=lambda job, m, err: trial_row(preset, study, version, "finetune",
                                          Job.from_dict(job), m, err),
    )
