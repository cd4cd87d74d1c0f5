"""Evaluate a model on any multi-view data: a rendered dataset or a bring-your-own folder."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrsub.data.datasets import SceneDataset, collate, find_datasets
from attrsub.data.folders import MANIFEST, FolderDataset, is_folder_dataset
from attrsub.errors import ConfigError, DataError
from attrsub.eval.align import DEPTH_ALIGN_MODES
from attrsub.eval.metrics import evaluate_batch


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
    """
    if depth_align not in DEPTH_ALIGN_MODES:
        raise ConfigError(f"depth_align must be one of {DEPTH_ALIGN_MODES}, got {depth_align!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    for i in range(n):
        batch = {k: v.to(device) for k, v in collate([dataset[i]]).items()}
        pred = model(batch["images"])
        for key, value in evaluate_batch(pred, batch, depth_align=depth_align).items():
            if math.isfinite(value):
                sums[key] += value
                counts[key] += 1
    model.train(was_training)
    out = {k: sums[k] / counts[k] for k in sorted(sums)}
    out["samples"] = float(n)
    return out
