"""The Tune trainables: plain functions of their config that call the library and report.

``config`` holds the ``job`` (a mining job, or a ``Job.to_dict``), the stage's ``params``
(the preset's values every trial of the stage shares), ``study_id`` (which subspace actor
serves the study), ``cache``, ``real_data`` and the trial's ``cpu`` count.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from attrsub.errors import AttrsubError, DivergenceError
from attrsub.methods import REGISTRY
from attrsub.train.loop import StepInfo
from results.schema import metric_column
from sweeps.job import Job, mining_trial_id
from sweeps.study import ensure_task_data

# What the library's finetune row holds besides the metrics: reported by name, not as metrics.
_ROW_KEYS = {"task", "method", "factors", "rank", "total_rank", "ortho", "steps", "lr", "seed",
             "base", "base_hash", "trainable_params", "train_wall_s", "final_loss", "main",
             "resumed_step"}


def _start(config: dict[str, Any]) -> None:
    """What every trial does first: its thread count, and the same random-init base."""
    import torch

    torch.set_num_threads(max(1, int(config["cpu"])))
    # A random-init base is drawn from torch's global RNG before the library seeds it;
    # seed it here so every trial of a study (reused actors included) gets the same base.
    torch.manual_seed(0)


def mine_trial(config: dict[str, Any]) -> None:
    """One Tune trial: train one adapter (unless the actor holds it), hand it to the actor.

    The adapter is built in node-local scratch and its files travel to the actor through
    Ray, so nodes need no shared disk; a retried trial resumes from its Tune checkpoint.
    """
    import ray
    from ray import tune

    from attrsub.subspace.mine import mine_adapter
    from sweeps import actor as subspace_actor

    _start(config)
    job, p = config["job"], config["params"]
    name = mining_trial_id(job)
    actor = subspace_actor.get(config["study_id"])
    t0 = time.perf_counter()
    meta = ray.get(actor.adapter_meta.remote(name))
    if meta is None:
        scratch = Path(tempfile.mkdtemp(prefix="attrsub-mine-"))
        try:
            ckdir = scratch / "checkpoint"
            ckdir.mkdir()
            restored = tune.get_checkpoint()
            if restored is not None:
                restored.to_directory(str(ckdir))
            every = p["report_every"]

            def report(info: StepInfo) -> None:
                if info.step % every and info.step != info.steps:
                    return
                ckpt = tune.Checkpoint.from_directory(str(ckdir)) if info.checkpoint else None
                tune.report({"step": info.step, "loss": info.loss, "done": False},
                            checkpoint=ckpt)

            out = mine_adapter(
                job["factor"], job["group"], job["seed"], scratch / name,
                base=p["model"], weights=p["weights"], random_init=p["random_init"],
                scenes=p["scenes"], views=p["views"], size=p["size"], steps=p["steps"],
                lr=p["lr"], rank=p["rank"], init_scale=p["init_scale"],
                batch_size=p["batch_size"], cache=config["cache"],
                callback=report, checkpoint_dir=ckdir, checkpoint_every=every,
            )
            files = {f.relative_to(out).as_posix(): f.read_bytes()
                     for f in sorted(out.rglob("*")) if f.is_file()}
            meta = ray.get(actor.add_adapter.remote(name, files))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    tune.report({
        "step": meta["steps"], "loss": meta["final_loss"], "done": True,
        "final_loss": meta["final_loss"], "train_wall_s": meta["train"]["wall_s"],
        "trial_wall_s": time.perf_counter() - t0, "base_hash": meta["base"]["weights_hash"],
        "resumed_step": meta["train"].get("resumed_from"),
        **{k: float(v) for k, v in meta.get("movement", {}).items()},
    })


def finetune_trial(config: dict[str, Any]) -> None:
    """One Tune trial: one attrsub.methods.finetune call; bad input is recorded, not retried.

    Serves the ablation and sweeps/search.py alike: a job may carry per-factor ``ranks``
    and its own ``steps``. The last step's loss is not reported (the final report carries
    it without ``step``), so an ASHA scheduler never stops a trial that finished training;
    every report carries ``loss``, as Tune's metric check wants once a scheduler is set.
    """
    from ray import tune

    from attrsub.methods import finetune
    from sweeps import actor as subspace_actor

    _start(config)
    j, p = Job.from_dict(config["job"]), config["params"]
    t0 = time.perf_counter()
    ensure_task_data(j.task, config["cache"], config.get("real_data"))
    scratch = Path(tempfile.mkdtemp(prefix="attrsub-ft-"))
    restored = tune.get_checkpoint()
    if restored is not None:  # a retried trial resumes its training
        restored.to_directory(str(scratch))
    every = p["report_every"]

    def report(info: StepInfo) -> None:
        if info.step % every or info.step >= info.steps:
            return
        ckpt = tune.Checkpoint.from_directory(str(scratch)) if info.checkpoint else None
        tune.report({"step": info.step, "loss": info.loss}, checkpoint=ckpt)

    try:
        basis = None
        if REGISTRY[j.method].needs_bank:
            basis = subspace_actor.fetch_bases(
                config["study_id"], list(j.factors), j.ranks or j.rank, j.ortho, j.extraction,
            )
        row = finetune(
            j.task, j.method, base=p["model"], weights=p["weights"],
            random_init=p["random_init"], basis=basis,
            factors=list(j.factors), rank=j.rank or p["rank"], ortho=j.ortho or "qr",
            steps=j.steps if j.steps is not None else p["steps"], lr=j.lr, seed=j.seed,
            batch_size=p["batch_size"],
            train_scenes=p["train"], eval_scenes=p["eval"], views=p["views"], size=p["size"],
            cache=config["cache"], callback=report, checkpoint_dir=scratch,
            checkpoint_every=every,
        )
    except AttrsubError as exc:  # bad input or a diverged run: recorded, not retried
        failed = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "loss": math.nan, "trial_wall_s": time.perf_counter() - t0}
        if isinstance(exc, DivergenceError):
            failed["steps"] = exc.step  # how far it got
        tune.report(failed)
        return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = {metric_column(k): float(v) for k, v in row.items()
           if k not in _ROW_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update(
        status="ok", error="", steps=row["steps"], trainable_params=row["trainable_params"],
        final_loss=row["final_loss"] if row["final_loss"] is not None else math.nan,
        main=float(row["main"]), base_hash=row["base_hash"], resumed_step=row["resumed_step"],
        total_rank=basis.total_rank if basis is not None
        else j.rank if REGISTRY[j.method].basis_family else None,
        trial_wall_s=time.perf_counter() - t0,
        loss=row["final_loss"] if row["final_loss"] is not None else math.nan,
    )
    tune.report(out)
