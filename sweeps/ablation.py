"""The study, end to end: mine adapters (stage 1), then the ablation trials (stage 2).

    python sweeps/ablation.py                      # the quick preset on a local Ray
    python sweeps/ablation.py --preset smoke --storage /tmp/s
    ray job submit --working-dir . -- python sweeps/ablation.py --preset paper --storage s3://b/p

Stage 1 is skipped when the study's bank already exists. Stage 2 runs every method x task x
seed, plus the reduced method's ablation axes (ranks, factor subsets, orthogonalisation,
extraction), each one attrsub.methods.finetune call in its own Tune trial; the reduced
trials get their bank from the study's shared subspace actor. Failed trials are recorded
with their error, never dropped. Tables land in ``<storage>/<study>/`` (results/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attrsub.errors import AttrsubError, DivergenceError
from attrsub.train.loop import StepInfo
from results.schema import (
    EVIDENCE_SCHEMA,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    metric_column,
    read_record,
    read_table,
    trials_schema,
    upsert_table,
    write_record,
    write_table,
)
from sweeps.config import Preset
from sweeps.runtime import (
    STUDY_ERRORS,
    StudyPaths,
    ensure_task_data,
    open_study,
    print_error,
    print_interrupted,
    publish_report,
    run_grid,
    session,
    study_parser,
)

_ROW_KEYS = {"task", "method", "factors", "rank", "total_rank", "ortho", "steps", "lr", "seed",
             "base", "base_hash", "trainable_params", "train_wall_s", "final_loss", "main",
             "resumed_step"}


def finetune_jobs(preset: Preset) -> list[dict[str, Any]]:
    """Every stage-2 trial: the main grid, then one axis at a time around the reduced default."""
    main_ext, all_f = preset.extraction.method, list(preset.factors)
    base = {"rank": preset.rank, "ortho": "qr", "extraction": main_ext, "factors": all_f}
    jobs = []
    for task in preset.tasks:
        for seed in preset.seeds:
            for method in preset.methods:
                jobs.append({**base, "axis": "main", "task": task, "method": method, "seed": seed})
            if ("reduced" not in preset.methods or seed not in preset.ablation_seeds
                    or task not in preset.ablation_tasks):
                continue
            variants = (
                [("ranks", {"rank": r}) for r in preset.ablation_ranks if r != preset.rank]
                + [("subsets", {"factors": list(s)}) for s in preset.ablation_subsets
                   if list(s) != all_f]
                + [("ortho", {"ortho": o}) for o in preset.ablation_ortho if o != "qr"]
                + [("extraction", {"extraction": e}) for e in preset.ablation_extraction
                   if e != main_ext]
            )
            for axis, change in variants:
                jobs.append({**base, **change, "axis": axis, "task": task, "method": "reduced",
                             "seed": seed})
    for j in jobs:
        if j["method"] != "reduced":
            j.update(factors=[], ortho=None, extraction=None)
            if j["method"] in ("none", "full"):
                j["rank"] = None
            elif j["method"] in ("psv", "random"):
                j["rank"] = preset.rank * len(all_f)  # the reduced default's budget, D x D
        j["lr"] = preset.lr.get(j["method"])  # None for the zero-shot row
        j["trial_id"] = _trial_id(j)
    return jobs


def _trial_id(j: dict[str, Any]) -> str:
    parts = [j["axis"], j["task"], j["method"], "+".join(j["factors"]) or "-",
             f"r{j['rank']}", j["ortho"] or "-", j["extraction"] or "-", f"s{j['seed']}"]
    return "ft-" + "-".join(str(p) for p in parts)


def finetune_trial(config: dict[str, Any]) -> None:
    """One Tune trial: one attrsub.methods.finetune call; bad input is recorded, not retried.

    Serves the ablation and sweeps/search.py alike: a job may carry per-attribute ``ranks``
    and its own ``steps``. The last step's loss is not reported (the final report carries
    it without ``step``), so an ASHA scheduler never stops a trial that finished training;
    every report carries ``loss``, as Tune's metric check wants once a scheduler is set.
    """
    import torch
    from ray import tune

    from attrsub.methods import finetune
    from sweeps import actor as subspace_actor

    torch.set_num_threads(max(1, int(config["cpu"])))
    # A random-init base is drawn from torch's global RNG before the library seeds it;
    # seed it here so every trial of a study (reused actors included) gets the same base.
    torch.manual_seed(0)
    j, p = config["job"], config["params"]
    t0 = time.perf_counter()
    ensure_task_data(j["task"], config["cache"], config.get("real_data"))
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
        if j["method"] == "reduced":
            basis = subspace_actor.fetch_bases(
                config["study_id"], j["factors"], j.get("ranks") or j["rank"], j["ortho"],
                j["extraction"],
            )
        row = finetune(
            j["task"], j["method"], base=p["model"], weights=p["weights"],
            random_init=p["random_init"], basis=basis,
            factors=j["factors"], rank=j["rank"] or p["rank"], ortho=j["ortho"] or "qr",
            steps=j["steps"] if "steps" in j else p["steps"], lr=j["lr"], seed=j["seed"],
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
        else j["rank"] if j["method"] in ("psv", "random") else None,
        trial_wall_s=time.perf_counter() - t0,
        loss=row["final_loss"] if row["final_loss"] is not None else math.nan,
    )
    tune.report(out)


# A trial's wall time relative to a trained one's (quick preset: full 5.9 s, the low-rank
# methods 4.3-5.0 s, zero-shot 1 s); only the order matters.
_EXPECTED_COST = {"full": 1.3, "none": 0.2}


def longest_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``jobs`` in the order Tune should start them: full fine-tuning first, zero-shot
    evaluations last, the rest as given. The run then ends on short trials, so no worker
    idles long while another finishes (bench/sweep.py: 0.27 -> 0.23 s overhead per trial)."""
    return sorted(jobs, key=lambda j: -_EXPECTED_COST.get(j["method"], 1.0))


def run_finetune(
    preset: Preset, study: str, paths: StudyPaths, version: str, jobs: list[dict[str, Any]],
    weights: str | None = None,
) -> list[dict[str, Any]]:
    """Run stage 2's ``jobs`` (longest first); returns one trials-table row per job (failed
    ones included)."""
    if not jobs:
        return []
    jobs = longest_first(jobs)
    params = {"model": preset.model, "weights": weights, "random_init": preset.random_init,
              "steps": preset.steps, "report_every": preset.report_every,
              "rank": preset.rank, "batch_size": preset.batch_size,
              "views": preset.views, "size": preset.size, **preset.scenes}
    return run_grid(
        finetune_trial, jobs, resources=preset.resources["finetune"], params=params,
        study=study, paths=paths, experiment=f"{study}-ablation", desc="ablation",
        row=lambda job, m, err: finetune_row(preset, study, version, job, m, err),
    )


def finetune_row(
    preset: Preset, study: str, version: str, job: dict[str, Any],
    metrics: dict[str, Any] | None, error: BaseException | None,
) -> dict[str, Any]:
    """The trials-table row of one stage-2 trial, failed or not."""
    m = dict(metrics or {})
    status = m.get("status") if error is None else "failed"
    message = m.get("error") or (f"{type(error).__name__}: {error}"[:2000]
                                 if error is not None else None)
    if status is None:
        status, message = "failed", message or "trial ended without its final report"
    row = {
        "trial_id": job["trial_id"], "study": study, "stage": "finetune", "axis": job["axis"],
        "task": job["task"], "method": job["method"], "factors": "+".join(job["factors"]),
        "rank": job["rank"], "ortho": job["ortho"], "extraction": job["extraction"],
        "seed": job["seed"], "lr": job["lr"], "wall_s": m.get("trial_wall_s"),
        "status": status, "error": message or None, "base": preset.model,
        "code_version": version,
        **{f"rank_{a}": job["rank"] for a in job["factors"]},
    }
    row.update({k: v for k, v in m.items() if k not in _TUNE_KEYS})
    row["steps"] = m.get("steps", m.get("step"))  # a trial that died reports how far it got
    return row


_TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id",
              "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
              "time_since_restore", "iterations_since_restore", "config", "status", "error",
              "trial_wall_s", "experiment_tag", "step", "loss"}


def summary(rows: list[dict[str, Any]]) -> str:
    """Per task: method -> main metric (mean ± 95% CI over seeds), trainable parameters,
    learning rate (tuned, with lr_search), wall time; then the reduced method's ablation
    axes, one line per variant; then the main-axis methods' differences paired on the seed
    (results.claims.paired_differences), which separate methods the seed spread hides.
    Learning-rate search trials (stage search) are not listed."""
    import pandas as pd

    from attrsub.methods import METHODS
    from attrsub.tasks import get_task
    from results.claims import PAIR_NEEDED, fmt_difference, mean_ci, paired_differences

    ok = [r for r in rows if r["stage"] == "finetune" and r["status"] == "ok"]
    frame = pd.DataFrame(rows)
    pairable = all(c in frame.columns for c in PAIR_NEEDED)
    lines: list[str] = []
    for task in sorted({r["task"] for r in ok}):
        t = get_task(task)
        better = "lower" if t.lower_is_better else "higher"
        lines += [f"\n{task}: main = {t.main_metric} ({better} is better), mean ± 95% CI "
                  f"over seeds",
                  f"  {'method':<34}{'main':>9} {'± CI':<8}{'n':>3}{'trainable':>11}"
                  f"{'lr':>10}{'wall_s':>8}"]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in ok:
            if r["task"] == task:
                label = r["method"] if r["axis"] == "main" else (
                    f"reduced {r['axis']}=" + {
                        "ranks": str(r["rank"]), "subsets": r["factors"],
                        "ortho": str(r["ortho"]), "extraction": str(r["extraction"]),
                    }[r["axis"]])
                groups.setdefault(label, []).append(r)
        order = {m: i for i, m in enumerate(METHODS)}
        for label, rs in sorted(groups.items(),
                                key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            mean, ci, _ = mean_ci([r["main"] for r in rs if r.get("main") is not None])
            wall = statistics.fmean(r["wall_s"] or 0.0 for r in rs)
            lr = f"{rs[0]['lr']:.3g}" if rs[0].get("lr") is not None else "-"
            lines.append(f"  {label:<34}{mean:>9.4f} {ci:<8.4f}{len(rs):>3}"
                         f"{rs[0].get('trainable_params') or 0:>11}{lr:>10}{wall:>8.1f}")
        pairs = paired_differences(frame, task) if pairable else pd.DataFrame()
        if len(pairs):
            lines.append("  paired on seeds, a - b (mean ± 95% CI):")
        for _, p in pairs.iterrows():
            n = int(p["n"])
            lines.append(f"  {p['a'] + ' - ' + p['b']:<17}{fmt_difference(p['mean'], p['ci'])} "
                         f"(n {n}, better on {int(p['wins'])}/{n})")
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    if failed:
        lines.append(f"\n{len(failed)} trial(s) not ok: {', '.join(failed[:10])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything, then stage 1 (unless its bank exists), stage 2, the tables."""
    import ray

    from sweeps.mine import run_mining

    t0 = time.perf_counter()

    st = open_study(args)
    preset, study, paths, version, weights = st.preset, st.name, st.paths, st.version, st.weights
    for task in preset.tasks:  # data a task cannot make (real captures) exist, or stop here
        ensure_task_data(task, paths.cache, paths.real_data)
    trials_path = paths.table("trials")
    jobs = finetune_jobs(preset)
    with session(st, args.num_cpus) as handle:
        main_ext = preset.extraction.method
        if not ray.get(handle.has_bank.remote(main_ext)):
            upsert_table(run_mining(preset, study, paths, version, weights), trials_path,
                         trials_schema)
        tuned = {}
        if preset.lr_search is not None:  # each method at its own best rate, equal budgets
            from sweeps.search import tune_lrs

            tuned = tune_lrs(preset, study, paths, version, weights)
            for j in jobs:
                j["lr"] = tuned.get((j["task"], j["method"]), j["lr"])
        done = {r["trial_id"] for r in read_table(trials_path) if r["status"] == "ok"}
        todo = [j for j in jobs if j["trial_id"] not in done]
        missing = ray.get(handle.missing.remote())
        if missing:
            print(f"ablation: mining incomplete ({missing}); reduced trials will fail",
                  file=sys.stderr)
        else:
            ray.get(handle.bank_path.remote(main_ext))
        upsert_table(run_finetune(preset, study, paths, version, todo, weights), trials_path,
                     trials_schema)
        analysis: dict[str, list[dict[str, Any]]] = {"overlaps": [], "spectra": [],
                                                     "evidence": []}
        if not missing:
            for ext in dict.fromkeys([main_ext, *preset.ablation_extraction]):
                rows = ray.get(handle.analysis.remote(ext, study, version, preset.adapter_seeds[0]))
                for name, table in analysis.items():
                    table += rows[name]
        for name, schema in (("overlaps", OVERLAPS_SCHEMA), ("spectra", SPECTRA_SCHEMA),
                             ("evidence", EVIDENCE_SCHEMA)):
            write_table(analysis[name], schema, paths.table(name))
        actor_stats = ray.get(handle.stats.remote())
    wall = time.perf_counter() - t0
    write_record(st.record, {
        **(read_record(st.record) or {}),
        "study": study, "preset": preset.name, "seeds": list(preset.seeds),
        "adapter_seeds": list(preset.adapter_seeds), "wall_s": wall,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "storage": paths.storage, "command": " ".join(sys.argv), "code_version": version,
        "tuned_lr": {f"{t}/{m}": lr for (t, m), lr in sorted(tuned.items())},
    })
    report = publish_report(paths, preset.name, wall)
    return {
        "study": study,
        "tables": {n: paths.table(n) for n in ("trials", "overlaps", "spectra", "evidence")},
        "rows": read_table(trials_path), "actor": actor_stats, "wall_s": wall, "report": report,
        "tuned_lr": tuned,
    }


def main(argv: list[str] | None = None) -> int:
    args = study_parser("ablation", __doc__).parse_args(argv)
    try:
        out = run(args)
    except STUDY_ERRORS as exc:
        return print_error("ablation", exc)
    except KeyboardInterrupt:
        return print_interrupted("ablation", argv)
    print(summary(out["rows"]))
    print(f"\nstudy {out['study']}: {len(out['rows'])} trials in {out['wall_s']:.1f} s")
    print(f"subspace actor: {json.dumps(out['actor'], sort_keys=True)}")
    for name, path in out["tables"].items():
        print(f"{name}: {path}")
    print(f"report: {out['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
