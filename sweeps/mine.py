"""Stage 1: the mining sweep. Ray Tune fans attrsub.subspace.mine.mine_adapter out over factors x
groups x adapter seeds; each finished adapter is handed to the study's subspace actor.

    python sweeps/mine.py --preset quick --study NAME    # stage 1 alone, then the bank

``sweeps/ablation.py`` runs this as its first stage; run alone, it mines, writes the
mining rows of ``trials.parquet`` and the persisted bank, and a later
``sweeps/ablation.py --study NAME --resume`` skips straight to stage 2.

A trial reports with ``ray.tune.report`` every ``report_every`` steps, attaching the
training checkpoint, so a retried trial resumes where it stopped; an adapter that already
exists is reported at once and never retrained (a resumed study skips finished work).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from attrsub.train.loop import StepInfo
from sweeps import actor as subspace_actor
from sweeps.config import Preset
from sweeps.runtime import (
    STUDY_ERRORS,
    StudyPaths,
    open_study,
    print_error,
    print_interrupted,
    run_grid,
    session,
    study_parser,
)


def mining_jobs(preset: Preset) -> list[dict[str, Any]]:
    """One job per adapter: (factor, group, seed)."""
    return [
        {"factor": f, "group": g, "seed": s}
        for f in preset.factors
        for g in range(preset.groups)
        for s in preset.adapter_seeds
    ]


def trial_id(job: dict[str, Any]) -> str:
    return f"mine-{job['factor']}-g{job['group']}-s{job['seed']}"


def mine_trial(config: dict[str, Any]) -> None:
    """One Tune trial: train one adapter (unless the actor holds it), hand it to the actor.

    The adapter is built in node-local scratch and its files travel to the actor through
    Ray, so nodes need no shared disk; a retried trial resumes from its Tune checkpoint.
    """
    import torch

    from attrsub.subspace.mine import mine_adapter

    torch.set_num_threads(max(1, int(config["cpu"])))
    # A random-init base is drawn from torch's global RNG before the library seeds it;
    # seed it here so every trial of a study (reused actors included) gets the same base.
    torch.manual_seed(0)
    job, p = config["job"], config["params"]
    name = trial_id(job)
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


def run_mining(
    preset: Preset, study: str, paths: StudyPaths, code_version: str, weights: str | None = None
) -> list[dict[str, Any]]:
    """Run stage 1; returns one trials-table row per adapter (failed ones included)."""
    jobs = mining_jobs(preset)
    params = {
        "model": preset.model, "weights": weights, "random_init": preset.random_init,
        "scenes": preset.scenes["mine"], "views": preset.views, "size": preset.size,
        **preset.mining,
    }
    return run_grid(
        mine_trial, jobs, resources=preset.resources["mine"], params=params, study=study,
        paths=paths, experiment=f"{study}-mine", desc="mining",
        row=lambda job, m, err: mine_row(preset, study, code_version, job, m, err),
    )


def mine_row(
    preset: Preset, study: str, code_version: str, job: dict[str, Any],
    metrics: dict[str, Any] | None, error: BaseException | None,
) -> dict[str, Any]:
    """The trials-table row of one mining trial, failed or not."""
    m = metrics or {}
    ok = error is None and m.get("done") is True
    return {
        "trial_id": trial_id(job), "study": study, "stage": "mine", "axis": "mine",
        "method": "lora", "factors": job["factor"], "group": job["group"],
        "rank": preset.mining["rank"], "seed": job["seed"], "lr": preset.mining["lr"],
        "steps": m.get("step"), "final_loss": m.get("final_loss"),
        "wall_s": m.get("trial_wall_s"), "status": "ok" if ok else "failed",
        "error": None if ok else _error(error), "base": preset.model,
        "base_hash": m.get("base_hash"), "resumed_step": m.get("resumed_step"),
        "lora_a_change": m.get("lora_a_change"), "update_norm": m.get("update_norm"),
        "code_version": code_version,
    }


def _error(err: BaseException | None) -> str:
    if err is None:
        return "trial ended without its final report"
    return f"{type(err).__name__}: {err}"[:2000]


def main(argv: list[str] | None = None) -> int:
    args = study_parser("mine", __doc__).parse_args(argv)
    try:
        return _mine(args)
    except STUDY_ERRORS as exc:
        return print_error("mine", exc)
    except KeyboardInterrupt:
        return print_interrupted("mine", argv)


def _mine(args: argparse.Namespace) -> int:
    from results.schema import trials_schema, upsert_table

    st = open_study(args)
    p = st.preset
    with session(st, args.num_cpus) as handle:
        rows = run_mining(p, st.name, st.paths, st.version, st.weights)
        upsert_table(rows, st.paths.table("trials"), trials_schema)
        missing = ray.get(handle.missing.remote())
        bank = None if missing else ray.get(handle.bank_path.remote(p.extraction.method))
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    print(f"mined {len(rows) - len(failed)}/{len(rows)} adapters; trials: "
          f"{st.paths.table('trials')}")
    print(f"bank: {bank}" if bank else f"no bank: adapters missing {missing}; failed: {failed}")
    return 0 if bank else 1


if __name__ == "__main__":
    sys.exit(main())
