"""Evaluate a model on any multi-view data: a rendered dataset, a bring-your-own folder, or a
task's split. One loop (``_accumulate``) serves ``evaluate`` and the tasks' ``run_split``."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrsub.data.datasets import SceneDataset, collate, find_datasets
from attrsub.data.folders import MANIFEST, FolderDataset, is_folder_dataset
from attrsub.errors import ConfigError, DataError
from attrsub.eval.align import DEPTH_ALIGN_MODES
from attrsub.eval.metrics import evaluate_batch

# Scenes per evaluation forward in ``run_split``: one batched forward instead of one per
# scene; metrics are still computed per scene, so every number is a per-scene mean.
EVAL_BATCH = 8
StatsFn = Callable[[dict[str, Any], dict[str, torch.Tensor]], dict[str, float]]


def open_data(path: str | os.PathLike[str], size: int = 112) -> torch.utils.data.Dataset:
    """A rendered dataset folder, or a bring-your-own folder (``attrsub-folder.json``)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data folder {str(p)!r} does not exist")
    if is_folder_dataset(p):
        return FolderDataset(p, size=size)
    try:
        found = find_datasets(p)
    except DataError as exc:
        raise DataError(
            f"{str(p)!r} is neither a rendered dataset (no spec.json in it or its sub-folders) "
            f"nor a bring-your-own folder (no {MANIFEST}, the manifest that gives depth_unit; "
            f"see attrsub.data.folders for the layout)"
        ) from exc
    if len(found) > 1:
        names = ", ".join(f.name for f in found[:5])
        raise DataError(f"{str(p)!r} holds {len(found)} datasets ({names}...); name one")
    return SceneDataset(found[0])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    device: str | torch.device = "cpu",
    max_samples: int | None = None,
    depth_align: str = "median",
) -> dict[str, float]:
    """Mean of each metric over the dataset's samples (NaN-free: absent metrics are skipped).

    Camera and point-cloud metrics need poses; a folder without them gets depth metrics.
    ``depth_align`` is how predicted depth meets the ground truth (``attrsub.eval.align``).
    Samples run one per forward with every head, as this command always has.
    """
    if depth_align not in DEPTH_ALIGN_MODES:
        raise ConfigError(f"depth_align must be one of {DEPTH_ALIGN_MODES}, got {depth_align!r}")
    totals = _accumulate(model, dataset, torch.device(device), None, depth_align=depth_align,
                         points_from="auto", metrics=True, batch_size=1, limit=max_samples)
    out = {k: totals.sums[k] / totals.counts[k] for k in sorted(totals.sums)}
    out["samples"] = float(len(totals.per_sample))
    return out


@torch.no_grad()
def run_split(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    stats_fn: StatsFn | None = None,
    *,
    depth_align: str = "median",
    points_from: str = "depth",
    metrics: bool = True,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean ``evaluate_batch`` metrics over a dataset (non-finite values skipped, as in
    ``evaluate``; a metric with no finite value is NaN) plus each sample's
    ``stats_fn(pred, batch)``; with ``metrics`` False only the latter (a pass that needs
    per-sample statistics alone). Scenes are run EVAL_BATCH at a time; a task's splits."""
    totals = _accumulate(model, dataset, device, stats_fn, depth_align=depth_align,
                         points_from=points_from, metrics=metrics, batch_size=EVAL_BATCH)
    sums, counts = totals.sums, totals.counts
    means = {k: sums[k] / counts[k] if counts[k] else math.nan for k in sorted(totals.keys)}
    return means, totals.per_sample


@dataclass
class _Totals:
    """What one pass over a dataset adds up: finite metric sums and counts, every metric key
    seen, and each sample's statistics."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    keys: set[str] = field(default_factory=set)
    per_sample: list[dict[str, float]] = field(default_factory=list)


def _accumulate(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    stats_fn: StatsFn | None,
    *,
    depth_align: str,
    points_from: str,
    metrics: bool,
    batch_size: int,
    limit: int | None = None,
) -> _Totals:
    """The one evaluation loop: ``batch_size`` samples of one image shape per forward, metrics
    and statistics per sample; the model's training mode is restored afterwards."""
    was_training = model.training
    model.eval().to(device)
    # The point head only feeds point metrics read from it; unprojected depth needs the rest.
    heads = ("camera", "depth") if points_from == "depth" else None
    n = len(dataset) if limit is None else min(limit, len(dataset))
    totals = _Totals()
    try:
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            for group in _same_shapes(items):
                batch = {k: v.to(device) for k, v in collate(group).items()}
                pred = model(batch["images"], heads=heads)
                for j in range(len(group)):
                    p, b = _sample(pred, j), _sample(batch, j)
                    scores = evaluate_batch(p, b, depth_align=depth_align,
                                            points_from=points_from) if metrics else {}
                    for key, value in scores.items():
                        totals.keys.add(key)
                        if math.isfinite(value):
                            totals.sums[key] += value
                            totals.counts[key] += 1
                    totals.per_sample.append(stats_fn(p, b) if stats_fn is not None else {})
    finally:
        model.train(was_training)
    return totals


def _same_shapes(items: list[dict[str, torch.Tensor]]) -> list[list[dict[str, torch.Tensor]]]:
    """Consecutive runs of samples whose images share a shape (one forward each)."""
    groups: list[list[dict[str, torch.Tensor]]] = []
    for item in items:
        if groups and groups[-1][0]["images"].shape == item["images"].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _sample(out: dict[str, Any], j: int) -> dict[str, Any]:
    """Sample j of a batched prediction or batch, keeping a batch axis of 1."""
    return {k: [t[j : j + 1] for t in v] if isinstance(v, list) else v[j : j + 1]
            for k, v in out.items()}
