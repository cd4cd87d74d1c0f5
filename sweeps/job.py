"""A trial's job: the adapter a mining trial trains (a plain dict), and the fine-tuning
``Job`` that ``finetune_trial`` trains and its trials row describes.

A ``Job`` is frozen and checked when made, so a bad job fails in the driver, before Tune.
Tune's ``param_space`` and Optuna's user attributes hold plain dicts: ``to_dict`` and
``from_dict`` convert at that boundary, and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attrsub.errors import ConfigError
from sweeps.config import Preset

# "main": the method x task x seed grid; the reduced method's ablation axes; "search": a
# sweeps/search.py trial; "lr": the ablation's learning-rate tuning.
AXES = ("main", "ranks", "subsets", "ortho", "extraction", "search", "lr")

# The dicts' key order: the progress lines print a job's keys in it, Tune names trial
# folders from it and the Optuna journal stores it, so it stays the order each kind of job
# has always had. Optional keys (None) are left out of a grid job's dict.
_GRID_KEYS = ("rank", "ortho", "extraction", "factors", "axis", "task", "method", "seed", "lr",
              "trial_id", "ranks", "steps")
_SEARCH_KEYS = ("trial_id", "axis", "task", "method", "seed", "lr", "steps", "factors",
                "ranks", "rank", "ortho", "extraction")


@dataclass(frozen=True)
class Job:
    """One downstream fine-tuning trial.

    ``ranks`` gives each factor its own rank (a search, the learning-rate tuning); None
    means ``rank`` for every factor. ``steps`` None means the preset's downstream steps.
    """

    trial_id: str
    axis: str
    task: str
    method: str
    seed: int
    lr: float | None
    factors: tuple[str, ...] = ()
    rank: int | None = None
    ortho: str | None = None
    extraction: str | None = None
    ranks: dict[str, int] | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        where = f"job {self.trial_id!r}"
        if not isinstance(self.trial_id, str) or not self.trial_id:
            raise ConfigError(f"a job needs a trial_id, got {self.trial_id!r}")
        if self.axis not in AXES:
            raise ConfigError(f"{where}: axis {self.axis!r} is not one of {AXES}")
        for name in ("task", "method"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{where}: {name} must be a name, got {getattr(self, name)!r}")
        if not isinstance(self.factors, tuple) or not all(isinstance(f, str)
                                                          for f in self.factors):
            raise ConfigError(f"{where}: factors must be a tuple of names, got {self.factors!r}")
        for name in ("seed", "rank", "steps"):
            value = getattr(self, name)
            if (value is not None or name == "seed") and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(
                self.lr, (int, float)) or not math.isfinite(self.lr)):
            raise ConfigError(f"{where}: lr must be a finite number, got {self.lr!r}")
        if self.ranks is not None and set(self.ranks) != set(self.factors):
            raise ConfigError(f"{where}: ranks {self.ranks!r} must name exactly the factors "
                              f"{list(self.factors)}")
        if self.axis == "search" and (self.ranks is None or self.steps is None):
            raise ConfigError(f"{where}: a search job names its ranks and steps")

    @property
    def factor_ranks(self) -> dict[str, int | None]:
        """Each factor's rank: ``ranks``, or ``rank`` for every factor."""
        if self.ranks is not None:
            return dict(self.ranks)
        return {a: self.rank for a in self.factors}

    def to_dict(self) -> dict[str, Any]:
        """The plain dict Tune's param_space and Optuna's user attributes hold."""
        out: dict[str, Any] = {}
        for key in _SEARCH_KEYS if self.axis == "search" else _GRID_KEYS:
            value = getattr(self, key)
            if key == "factors":
                value = list(value)
            elif key == "ranks" and value is not None:
                value = dict(value)
            elif value is None and key in ("ranks", "steps"):
                continue
            out[key] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        """The job a ``to_dict`` dict describes (from a Tune config or the Optuna journal)."""
        ranks = d.get("ranks")
        return cls(
            trial_id=d["trial_id"], axis=d["axis"], task=d["task"], method=d["method"],
            seed=d["seed"], lr=d["lr"], factors=tuple(d["factors"]), rank=d["rank"],
            ortho=d["ortho"], extraction=d["extraction"],
            ranks=None if ranks is None else dict(ranks), steps=d.get("steps"),
        )


def mining_jobs(preset: Preset) -> list[dict[str, Any]]:
    """Stage 1's jobs, one per adapter: (factor, group, seed)."""
    return [
        {"factor": f, "group": g, "seed": s}
        for f in preset.factors
        for g in range(preset.groups)
        for s in preset.adapter_seeds
    ]


def mining_trial_id(job: Mapping[str, Any]) -> str:
    """A mining job's trial id, which is also its adapter's name in the study."""
    return f"mine-{job['factor']}-g{job['group']}-s{job['seed']}"
