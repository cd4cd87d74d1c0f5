"""What both stages share: where a study lives, how the driver joins Ray, the code version.

Kept apart from the stages so ``sweeps/mine.py`` and ``sweeps/ablation.py`` stay thin.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attrsub import __version__
from attrsub.base import load_base, shipped_weights
from attrsub.errors import AttrsubError, ConfigError, StorageError
from attrsub.fsio import ensure_writable_dir
from results.schema import read_table
from sweeps.config import PRESETS, Preset, load_preset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "results"


@dataclass(frozen=True)
class StudyPaths:
    """Tune's storage (local path or URI), the study's local artefact folder, its tables root."""

    storage: str
    local: Path
    tables: str

    @property
    def adapters(self) -> Path:
        return self.local / "adapters"

    @property
    def cache(self) -> Path:
        return self.local / "cache"

    def table(self, name: str) -> str:
        return f"{self.tables}/{name}.parquet"


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def study_paths(storage: str | os.PathLike[str], study: str, work_dir: str | None) -> StudyPaths:
    """Resolve and check the study's folders before any trial runs.

    With a URI (s3://, gs://) Tune and the tables go there, while the subspace actor keeps
    adapters and banks, and each node its dataset cache, under ``work_dir`` on its own disk
    (default ~/attrsub-studies); no shared filesystem is needed.
    """
    if not study or "/" in study or study.startswith("."):
        raise ConfigError(f"study name {study!r} must be a plain folder name")
    s = os.fspath(storage)
    if is_uri(s):
        local = Path(work_dir or Path.home() / "attrsub-studies") / study
        tables = f"{s.rstrip('/')}/{study}"
    else:
        root = ensure_writable_dir(Path(s.removeprefix("file://")).expanduser().resolve(),
                                   "--storage")
        s = str(root)
        local = root / study
        tables = str(local)
    ensure_writable_dir(local, "study folder")
    return StudyPaths(storage=s, local=local, tables=tables)


@dataclass(frozen=True)
class Study:
    """Everything a stage needs, checked before Ray starts."""

    preset: Preset
    name: str
    paths: StudyPaths
    version: str
    weights: str | None


def study_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every study entry point takes."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="quick", help="smoke | quick | paper, or one of --presets")
    p.add_argument("--presets", default=str(PRESETS),
                   help="presets file (default: sweeps/presets.yaml); copy it to make your own")
    p.add_argument("--study", default=None, help="study name (default: the preset's name)")
    p.add_argument("--storage", default=str(DEFAULT_STORAGE),
                   help="results root: a folder, or s3:// / gs:// (Tune storage and tables)")
    p.add_argument("--work-dir", default=None,
                   help="node-local folder for adapters, banks and the dataset cache when "
                        "--storage is a URI (default ~/attrsub-studies)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study: finished trials are not rerun")
    p.add_argument("--weights", default=None,
                   help="base weights for the preset's model (VGGT's model.pt or safetensors); "
                        "on a cluster, a path every node can read")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray")
    return p


def open_study(args: argparse.Namespace) -> Study:
    """Validate the preset, weights and storage; refuse to overwrite a study without --resume."""
    preset = load_preset(args.preset, args.presets)
    weights = check_weights(preset, args.weights)
    name = args.study or preset.name
    paths = study_paths(args.storage, name, args.work_dir)
    trials = paths.table("trials")
    if read_table(trials) and not args.resume:
        raise ConfigError(
            f"study {name!r} already has results at {trials}; pass --resume to continue it "
            f"or choose another --study"
        )
    return Study(preset, name, paths, code_version(), weights)


def check_weights(preset: Preset, weights: str | None) -> str | None:
    """The weights file the trials load (absolute), checked before any trial starts."""
    if weights is not None:
        if preset.random_init:
            raise ConfigError(f"preset {preset.name!r} uses a random-init base; drop --weights")
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--weights {weights!r} is not a file")
        load_base(preset.model, path)  # a mismatching file fails here, not in every trial
        return str(path)
    if not preset.random_init and shipped_weights(preset.model) is None:
        raise ConfigError(
            f"preset {preset.name!r} needs pretrained weights for {preset.model!r}, and none "
            f"ship with attrsub: pass --weights PATH (e.g. VGGT-1B's model.pt)"
        )
    return None


# What ends a study with one line instead of a traceback: bad input found up front, or
# storage that can no longer be written (the tables written so far stay intact).
STUDY_ERRORS = (AttrsubError, OSError)


def print_error(prog: str, exc: BaseException) -> int:
    """Print a study-ending error for a person; returns the exit status 2."""
    kind = "" if isinstance(exc, AttrsubError) else "I/O error: "
    print(f"{prog}: error: {kind}{exc}", file=sys.stderr)
    return 2


def code_version() -> str:
    """attrsub's version plus the git commit (and ``+dirty``) when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster a job runs in, or start a small local one.

    Token auth is off for a local cluster unless the caller chose otherwise (Ray 2.59+ turns
    it on for clusters ``ray.init`` starts). Workers get the repo on PYTHONPATH so trials
    import ``sweeps`` and ``results``.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(address="auto", log_to_driver=False)
        return
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"}},
    )



def progress(total: int, desc: str) -> Any:
    """A Tune callback drawing one tqdm bar over a stage's trials (Tune's own table is off)."""
    from ray import tune
    from tqdm import tqdm

    class _Progress(tune.Callback):
        def __init__(self) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True)
            self.failed = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.bar.update(1)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)
            self.bar.update(1)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.bar.close()

    return _Progress()


def recorder(table: str, row: Any, written: Callable[[str], None] | None = None) -> Any:
    """A Tune callback writing each trial's row the moment it ends, so nothing is lost.

    ``row(job, last_result, error)`` builds the row; it is upserted into the trials table
    at ``table`` by ``trial_id``, so an interrupted study resumes after its last finished
    trial and the row the driver writes at the end replaces this one. When the storage
    cannot be written (full disk, lost permission) the callback keeps the error instead of
    raising it inside Tune; ``run_config``'s stopper then ends the experiment and
    ``check()`` raises it in the driver, so the study stops with one clear message.
    ``written(trial_id)`` runs once a row is safely in the table.
    """
    from ray import tune

    from results.schema import trials_schema, upsert_table

    class _Recorder(tune.Callback):
        def __init__(self) -> None:
            self.failure: StorageError | None = None

        def _write(self, trial: Any, error: BaseException | None) -> None:
            if self.failure is not None:
                return
            try:
                upsert_table([row(trial.config["job"], trial.last_result, error)], table,
                             trials_schema)
            except StorageError as exc:
                self.failure = exc
                return
            if written is not None:
                written(trial.trial_id)

        def check(self) -> None:
            if self.failure is not None:
                raise self.failure

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, None)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, trial.get_error() or RuntimeError("trial errored"))

    return _Recorder()


def run_config(experiment: str, paths: StudyPaths, total: int, desc: str,
               rec: Any) -> Any:
    """The RunConfig every stage shares: its storage, a progress bar, ``rec`` (a
    ``recorder``) writing rows as trials end, a stop once storage fails, one retry for a
    trial whose worker died (from its last checkpoint)."""
    from ray import tune

    class _StopOnStorageFailure(tune.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return rec.failure is not None

    return tune.RunConfig(
        name=experiment, storage_path=paths.storage,
        callbacks=[progress(total, desc), rec], stop=_StopOnStorageFailure(),
        verbose=0, failure_config=tune.FailureConfig(max_failures=1),
    )


def run_grid(
    trainable: Any, jobs: list[dict[str, Any]], *, resources: dict[str, float],
    params: dict[str, Any], study: str, paths: StudyPaths, experiment: str, desc: str,
    row: Any,
) -> list[dict[str, Any]]:
    """Each job one Tune trial of ``trainable``; returns every job's row, failed ones included."""
    from ray import tune

    rec = recorder(paths.table("trials"), row)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"job": tune.grid_search(jobs), "params": params, "study": study,
                     "cache": str(paths.cache), "cpu": resources["cpu"]},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=run_config(experiment, paths, len(jobs), desc, rec),
    )
    return [row(r.config["job"], r.metrics, r.error) for r in fit(tuner, rec)]


def fit(tuner: Any, rec: Any) -> Any:
    """``tuner.fit()``, raising the recorder's StorageError once storage has failed: Tune may
    then trip over files it could not write itself (an empty error.pkl raises EOFError while
    it builds the results), which would hide the cause."""
    try:
        results = tuner.fit()
    except Exception:
        rec.check()
        raise
    rec.check()
    return results
