"""The same stage-2 trials through the Ray Tune sweep versus serially in one process.

Mines a study's adapters once (through the sweep, not timed), warms the dataset cache,
then runs the first ``--trials`` stage-2 jobs of the preset twice:

- serial baseline: one fresh process, torch using all ``--cpus`` threads, one
  ``attrsub.methods.finetune`` call after another, reduced bases integrated locally from the
  bank (one integration per key, as the actor would);
- sweep: ``sweeps.finetune.run_finetune`` on a local Ray cluster of ``--cpus`` CPUs, one CPU
  per trial, reduced bases served by the study's subspace actor.

Both clocks include their own start-up: the serial process its imports (torch, PEFT) and
first-call warm-up, the sweep its Tune run and its trial workers' imports. (Until
2026-11-25 the serial run reused the bench's warmed-up process, leaving its ~4 s start-up
off its clock while the sweep's stayed on; the start-up is printed on its own.)

It prints both wall times, the speed-up (target >= 1.7x on 2 CPUs), the Ray overhead per
trial (sweep wall x concurrency / trials minus the trials' own mean wall time, measured inside
each trial), the speed-up the trials' own times would allow with no overhead at all, and the
subspace actor's cache hit rate. ``--repeats`` reruns both and reports medians (the
speed-up: the median of each repeat's ratio).

Run from the repository root: ``python bench/sweep.py [--preset quick] [--trials 36]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _serial(preset_name: str, jobs: list[dict[str, Any]], banks: dict[str, str], cache: str,
            threads: int) -> tuple[float, float]:
    """The baseline, run in a fresh process (``_serial_in_fresh_process``): every job, one
    after another, each extraction's bank file (``banks``) read when a job first needs it.
    Returns (seconds from entry to its first trial, seconds of all trials). Its arguments
    are plain strings so that unpickling them imports nothing: the imports fall on its clock."""
    t_enter = time.perf_counter()
    import torch

    from attrsub.methods import finetune
    from attrsub.subspace.bank import load_bank
    from sweeps.config import load_preset

    torch.set_num_threads(threads)
    preset = load_preset(preset_name)
    loaded: dict[str, Any] = {}
    bases: dict[tuple[Any, ...], Any] = {}
    t0 = time.perf_counter()
    for j in jobs:
        basis = None
        if j["method"] == "reduced":
            key = (tuple(j["factors"]), j["rank"], j["ortho"], j["extraction"])
            if key not in bases:
                ext = j["extraction"]
                if ext not in loaded:
                    loaded[ext] = load_bank(Path(banks[ext]))
                bases[key] = loaded[ext].basis_set(j["factors"], j["rank"], j["ortho"])
            basis = bases[key]
        torch.manual_seed(0)
        finetune(
            j["task"], j["method"], base=preset.model, random_init=preset.random_init,
            basis=basis, rank=j["rank"] or preset.downstream.rank, ortho=j["ortho"] or "qr",
            steps=preset.downstream.steps, lr=j["lr"], seed=j["seed"],
            batch_size=preset.downstream.batch_size,
            train_scenes=preset.scenes["train"], eval_scenes=preset.scenes["eval"],
            views=preset.views, size=preset.size, cache=Path(cache),
        )
    return t0 - t_enter, time.perf_counter() - t0


def _serial_in_fresh_process(*args: Any) -> tuple[float, float]:
    """Run ``_serial`` in a new process, as a user's serial script would run: it pays its
    own imports (torch, PEFT) and first-call warm-up, as the sweep's trial workers do.
    Returns (wall from launch to result, the start-up part of it before the first trial)."""
    t0 = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        startup, _ = pool.submit(_serial, *args).result()
        wall = time.perf_counter() - t0
    return wall, startup


def _warm(preset: Any, jobs: list[dict[str, Any]], cache: Path) -> None:
    """Render every (task, seed) dataset once, so neither timed run pays for rendering."""
    from attrsub.methods import finetune

    for task, seed in sorted({(j["task"], j["seed"]) for j in jobs}):
        finetune(task, "lora", base=preset.model, random_init=preset.random_init,
                 rank=preset.downstream.rank, steps=1, seed=seed,
                 batch_size=preset.downstream.batch_size,
                 train_scenes=preset.scenes["train"], eval_scenes=preset.scenes["eval"],
                 views=preset.views, size=preset.size, cache=cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--trials", type=int, default=36,
                    help="first N stage-2 jobs (36: two seeds of one task, so bases repeat)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import ray

    from sweeps import actor as subspace_actor
    from sweeps.config import load_preset
    from sweeps.finetune import finetune_jobs, run_finetune
    from sweeps.mining import run_mining
    from sweeps.session import init_ray
    from sweeps.study import code_version, make_dirs, study_id, study_paths

    one_cpu = {"cpu": 1.0, "gpu": 0.0}
    preset = dataclasses.replace(load_preset(args.preset),
                                 resources={"mine": one_cpu, "finetune": one_cpu})
    jobs = finetune_jobs(preset)[: args.trials]
    plain = [j.to_dict() for j in jobs]  # the serial baseline's jobs: unpickling imports nothing
    root = Path(tempfile.mkdtemp(prefix="attrsub-bench-sweep-"))
    paths = study_paths(root, "bench", None)
    make_dirs(paths)
    version = code_version()
    init_ray(args.cpus)
    handle = subspace_actor.get_or_create(
        study_id("bench", paths), paths.local, list(preset.factors),
        preset.groups * len(preset.adapter_seeds), preset.extraction,
    )
    t0 = time.perf_counter()
    mined = run_mining(preset, "bench", paths, version)
    print(f"mined {len(mined)} adapters in {time.perf_counter() - t0:.1f} s (not timed below)")
    extractions = sorted({j.extraction for j in jobs if j.extraction})
    banks = {ext: ray.get(handle.bank_path.remote(ext)) for ext in extractions}
    _warm(preset, plain, paths.cache)

    serial, startup, sweep, overhead, trial_wall = [], [], [], [], []
    stats: dict[str, Any] = {"requests": 0, "hits": 0}
    served: list[tuple[int, int]] = []  # (requests, hits) of each repeat's sweep
    for rep in range(args.repeats):
        wall, start = _serial_in_fresh_process(args.preset, plain, banks, str(paths.cache),
                                               args.cpus)
        serial.append(wall)
        startup.append(start)
        t0 = time.perf_counter()
        rows = run_finetune(preset, "bench", paths, version, jobs)
        sweep.append(time.perf_counter() - t0)
        bad = [r["trial_id"] for r in rows if r["status"] != "ok"]
        if bad:
            raise SystemExit(f"sweep trials failed: {bad}")
        trial_wall.append(statistics.fmean(r["wall_s"] for r in rows))
        overhead.append(sweep[-1] * args.cpus / len(rows) - trial_wall[-1])
        before, stats = stats, ray.get(handle.stats.remote())
        served.append((stats["requests"] - before["requests"], stats["hits"] - before["hits"]))
        print(f"repeat {rep}: serial {serial[-1]:.1f} s, sweep {sweep[-1]:.1f} s "
              f"({serial[-1] / sweep[-1]:.2f}x), actor {served[-1][1]}/{served[-1][0]} hits")
    ray.kill(handle)
    s, w = statistics.median(serial), statistics.median(sweep)
    print(f"\n{len(jobs)} stage-2 trials of preset {args.preset!r} "
          f"({preset.downstream.steps} steps, "
          f"{preset.size} px, {preset.model}), {args.cpus} CPUs, median of {args.repeats}:")
    print(f"  serial, one process, {args.cpus} torch threads : {s:8.1f} s  (baseline; "
          f"{statistics.median(startup):.1f} s of it imports before the first trial)")
    print(f"  Ray Tune sweep, 1 CPU per trial      : {w:8.1f} s")
    # each repeat's serial and sweep ran back to back: the ratio of a pair is the fair one
    ratio = statistics.median(a / b for a, b in zip(serial, sweep, strict=True))
    print(f"  speed-up serial / sweep, per repeat  : {ratio:8.2f} x  (target >= 1.7)")
    print(f"  Ray overhead per trial               : {statistics.median(overhead):8.2f} s")
    own = statistics.median(trial_wall)
    print(f"  mean trial: serial {s / len(jobs):.2f} s on {args.cpus} threads (start-up "
          f"included), in the sweep {own:.2f} s on 1 thread beside the others;\n"
          f"    so with no Ray overhead at all the speed-up would be "
          f"{args.cpus * s / len(jobs) / own:.2f} x")
    (req, hits), later = served[0], served[1:]
    print(f"  actor cache hits, first sweep        : {hits}/{req} "
          f"(rate {hits / req if req else 0:.2f}; bank ready, no basis integrated yet)")
    if later:
        req, hits = sum(r for r, _ in later), sum(h for _, h in later)
        print(f"  actor cache hits, later sweeps       : {hits}/{req} "
              f"(rate {hits / req if req else 0:.2f})")
    print(f"  actor factor extractions             : {stats['extractions']}")


if __name__ == "__main__":
    main()
