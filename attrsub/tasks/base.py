"""The task interface: what a downstream benchmark provides, and the rendered-scene kind.

A ``Task`` names its data (a training set and named evaluation splits), its metrics and the
one main metric a sweep ranks by. ``Task`` itself only fixes that interface and runs its
splits through the evaluation loop (``attrsub.eval.evaluate.run_split``); ``SceneTask`` gets
its data by rendering procedural scenes through the dataset cache, and a real-data task (the
paper's face or clothed-human sets) plugs in by overriding ``train_data`` / ``eval_data``
with datasets from another source.

Every scene draw uses its own numpy stream keyed by (seed, task, split, scene, factor)
(``attrsub.scenes.draw.keyed_stream``), so splits are deterministic from the seed and never
share scenes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from attrsub.checks import int_in
from attrsub.data.datasets import SceneDataset, build_dataset
from attrsub.errors import ConfigError
from attrsub.eval.align import DEPTH_ALIGN_MODES
from attrsub.eval.evaluate import run_split
from attrsub.eval.metrics import POINT_SOURCES
from attrsub.scenes.draw import LightingRanges, TextureRanges, keyed_stream
from attrsub.scenes.spec import SceneSpec
from attrsub.size import check_size

PathLike = str | os.PathLike[str]
# Factor streams of one scene draw (the last key of ``keyed_stream``).
LABEL_STREAM, TEXTURE_STREAM, GEOMETRY_STREAM, CAMERA_STREAM, LIGHTING_STREAM = range(5)
MAX_SEED = 2**31 - 1
MAX_VIEWS = 64
# One white sun and a moderate sky: the lighting of print_attack and the cross_domain source.
TASK_LIGHTING = LightingRanges(
    ambient=(0.25, 0.35),
    lights=(1, 1),
    saturation=(0.0, 0.1),
    intensity=(1.2, 1.6),
    elevation_deg=(45.0, 60.0),
    point_prob=0.0,
    exposure=(0.9, 1.1),
)

# The tasks' albedo: 2-4 colour palettes, moderate frequency and gloss; each task picks the
# pattern kinds.
TASK_TEXTURE = TextureRanges(
    kinds=("checker", "noise", "patchwork"),
    frequency=(0.8, 4.0),
    colours=(2, 4),
    saturation=(0.2, 0.8),
    value=(0.25, 0.95),
    specular=(0.02, 0.2),
    shininess=(8.0, 64.0),
)


def check_seed(seed: Any) -> int:
    """The seed as an int, or ConfigError before any work."""
    return int_in(seed, "seed", 0, MAX_SEED)


@dataclass(frozen=True)
class TaskSize:
    """How much data a task run uses: scenes per split, views per scene, image size (px)."""

    train_scenes: int = 16
    eval_scenes: int = 16
    views: int = 4
    size: int = 112

    def __post_init__(self) -> None:
        int_in(self.train_scenes, "train_scenes", 1, 100_000)
        int_in(self.eval_scenes, "eval_scenes", 1, 100_000)
        int_in(self.views, "views", 2, MAX_VIEWS)
        check_size(self.size, "task image size")




def check_task_size(size: Any) -> TaskSize:
    """``size`` if it is a TaskSize (every task's first check)."""
    if not isinstance(size, TaskSize):
        raise ConfigError(f"size must be a TaskSize, got {type(size).__name__}")
    return size


@dataclass(frozen=True)
class TaskRun:
    """One checked evaluation run: what a task metric may need to load or run more data."""

    model: nn.Module
    cache: PathLike | None
    size: TaskSize
    seed: int
    device: torch.device


@dataclass(frozen=True)
class Task:
    """A downstream benchmark: data sources, metrics, and the main metric to rank runs by.

    ``main_metric`` is a key of ``evaluate``'s output ("<split>/<metric>" or a task metric);
    subclasses provide ``train_data`` and ``eval_data`` from wherever their data live.
    """

    name: str
    description: str
    main_metric: str
    lower_is_better: bool = True
    # How predicted depth is aligned to ground truth before AbsRel/delta1 (attrsub.eval.align).
    depth_align: str = "median"
    # Where the point clouds of pc_acc/pc_comp/pc_nc come from: the depth head unprojected
    # with the predicted cameras, as VGGT evaluates, so fine-tuning the depth and camera
    # heads (what the downstream loss trains) moves them; "world_points" reads the point
    # head, which downstream fine-tuning does not train.
    points_from: str = "depth"

    def __post_init__(self) -> None:
        if self.depth_align not in DEPTH_ALIGN_MODES:
            raise ConfigError(
                f"task {self.name!r}: depth_align must be one of {DEPTH_ALIGN_MODES}, got "
                f"{self.depth_align!r}"
            )
        if self.points_from not in POINT_SOURCES:
            raise ConfigError(
                f"task {self.name!r}: points_from must be one of {POINT_SOURCES}, got "
                f"{self.points_from!r}"
            )

    def stream(self, seed: int, split: str, index: int, factor: int) -> np.random.Generator:
        """The numpy stream of one factor of scene ``index`` of ``split`` (index 0: the
        split's own draws, such as its labels or order)."""
        return keyed_stream(seed, f"{self.name}/{split}", index, factor)

    def check(self, size: TaskSize) -> TaskSize:
        """Reject sizes this task cannot use (before rendering or loading anything)."""
        return check_task_size(size)

    def require_data(self, cache: PathLike | None) -> None:
        """DataError, before any trial, when data this task cannot make itself are absent
        (none by default: scene tasks render theirs)."""

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> torch.utils.data.Dataset:
        """The fine-tuning dataset (items as ``SceneDataset``'s)."""
        raise NotImplementedError

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        """The named evaluation splits."""
        raise NotImplementedError

    def sample_stats(
        self, pred: dict[str, Any], batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Per-sample numbers a task metric needs later (none by default)."""
        return {}

    def task_metrics(
        self, run: TaskRun, stats: dict[str, list[dict[str, float]]], metrics: dict[str, float]
    ) -> dict[str, float]:
        """Task-specific metrics from the per-split ``sample_stats`` and the flattened split
        ``metrics`` (none by default)."""
        return {}

    def evaluate(
        self,
        model: nn.Module,
        cache: PathLike | None,
        size: TaskSize,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> dict[str, float]:
        """Mean metrics per split as "<split>/<metric>" (plus "<split>/samples"), task metrics,
        and ``main``. A metric the model cannot produce (no camera head, say) is NaN."""
        size, seed, dev = self._check_run(model, size, seed, device)
        out: dict[str, float] = {}
        stats: dict[str, list[dict[str, float]]] = {}
        for split, dataset in self.eval_data(cache, size, seed, device=str(dev)).items():
            means, stats[split] = run_split(
                model, dataset, dev, self.sample_stats, depth_align=self.depth_align,
                points_from=self.points_from,
            )
            out.update({f"{split}/{k}": v for k, v in means.items()})
            out[f"{split}/samples"] = float(len(stats[split]))
        run = TaskRun(model, cache, size, seed, dev)
        out.update(self.task_metrics(run, stats, dict(out)))
        if self.main_metric not in out:
            raise ConfigError(
                f"task {self.name!r}: main metric {self.main_metric!r} is not among its "
                f"outputs {sorted(out)}"
            )
        out["main"] = out[self.main_metric]
        return out

    def _check_run(
        self, model: Any, size: Any, seed: Any, device: Any
    ) -> tuple[TaskSize, int, torch.device]:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
        size = self.check(size)
        seed = check_seed(seed)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"bad device {device!r}: {err}") from None
        return size, seed, dev


@dataclass(frozen=True)
class SceneTask(Task):
    """A task whose data are rendered procedural scenes (cached by ``build_dataset``)."""

    def train_scenes(self, seed: int = 0, size: TaskSize | None = None) -> list[SceneSpec]:
        """The training scenes, deterministic from ``seed``."""
        raise NotImplementedError

    def eval_sets(self, seed: int = 0, size: TaskSize | None = None) -> dict[str, list[SceneSpec]]:
        """The evaluation splits' scenes, deterministic from ``seed``."""
        raise NotImplementedError

    def _build(
        self,
        scenes: list[SceneSpec],
        split: str,
        cache: PathLike | None,
        size: TaskSize,
        seed: int,
        device: str,
    ) -> SceneDataset:
        meta = {"kind": "task", "task": self.name, "split": split, "seed": seed}
        path = build_dataset(
            scenes, size.size, cache, label=f"task-{self.name}-{split}", meta=meta, device=device
        )
        return SceneDataset(path)

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> SceneDataset:
        size, seed = self.check(size), check_seed(seed)
        return self._build(self.train_scenes(seed, size), "train", cache, size, seed, device)

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        size, seed = self.check(size), check_seed(seed)
        return {
            split: self._build(scenes, split, cache, size, seed, device)
            for split, scenes in self.eval_sets(seed, size).items()
        }
