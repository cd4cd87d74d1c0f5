"""The Tune run every stage shares: its RunConfig, the callback that writes each trial's row
as it ends, and ``fit``, which turns a Ctrl-C or a failed storage into one clear exception."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrsub.errors import StorageError
from sweeps.progress import progress
from sweeps.session import interrupted, tune_running
from sweeps.study import StudyPaths, study_id


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
            r = row(trial.config["job"], trial.last_result, error)
            if interrupted() and r.get("status") != "ok":
                return  # stopped by Ctrl-C: no row, so --resume runs it again
            try:
                upsert_table([r], table, trials_schema)
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
            return rec.failure is not None or interrupted()

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
        param_space={"job": tune.grid_search(jobs), "params": params,
                     "study_id": study_id(study, paths), "real_data": paths.real_data,
                     "cache": str(paths.cache), "cpu": resources["cpu"]},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=run_config(experiment, paths, len(jobs), desc, rec),
    )
    return [row(r.config["job"], r.metrics, r.error) for r in fit(tuner, rec)]


def fit(tuner: Any, rec: Any) -> Any:
    """``tuner.fit()``, raising KeyboardInterrupt after a Ctrl-C stopped it (see
    ``sweeps.session``), and the recorder's StorageError once storage has failed: Tune may
    then trip over files it could not write itself (an empty error.pkl raises EOFError while
    it builds the results), which would hide the cause."""
    with tune_running():
        try:
            results = tuner.fit()
        except Exception:
            rec.check()
            raise
    if interrupted():
        raise KeyboardInterrupt
    rec.check()
    return results
