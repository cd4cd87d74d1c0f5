"""What a person watching a stage sees: one tqdm bar over its trials and one line per
finished trial (readable in ``ray job logs --follow`` too)."""

from __future__ import annotations

from typing import Any

_BARS: set[Any] = set()  # the progress bars drawing now


def close_bars() -> None:
    """Close every bar still drawing (before a message that must not be drawn over)."""
    for bar in list(_BARS):
        bar.close()


def progress(total: int, desc: str) -> Any:
    """A Tune callback drawing one tqdm bar over a stage's trials (Tune's own table is off)."""
    from ray import tune
    from tqdm import tqdm

    class _Progress(tune.Callback):
        def __init__(self) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True)
            _BARS.add(self.bar)
            self.failed = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.bar.update(1)
            self._say(trial, "ok")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)
            self.bar.update(1)
            self._say(trial, "failed")

        def _say(self, trial: Any, status: str) -> None:
            """One line per finished trial, readable in ``ray job logs --follow`` too."""
            self.bar.write(status_line(desc, self.bar.n, total, trial.config.get("job", {}),
                                       trial.last_result or {}, status))

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.bar.close()
            _BARS.discard(self.bar)

    return _Progress()


def status_line(stage: str, done: int, total: int, job: dict[str, Any],
                result: dict[str, Any], status: str) -> str:
    """``mining 3/8 ok factor=texture group=1 seed=0 loss=0.412 12.3 s``: one finished trial."""
    what = " ".join(f"{k}={v}" for k, v in job.items()
                    if k in ("factor", "group", "seed", "task", "method", "factors", "rank",
                             "ortho", "extraction", "lr"))
    stats = []
    for keys, fmt in ((("final_loss", "loss"), "loss={:.4g}"),
                      (("trial_wall_s", "train_wall_s"), "{:.1f} s")):
        value = next((result[k] for k in keys if isinstance(result.get(k), int | float)), None)
        if value is not None:
            stats.append(fmt.format(value))
    return " ".join(p for p in (f"{stage} {done}/{total} {status}", what, *stats) if p)


