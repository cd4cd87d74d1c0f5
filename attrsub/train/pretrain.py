"""Pretrain a base model on the canonical synthetic distribution (its world).

This makes the shipped tiny base: the stand-in for VGGT-1B's pretraining on a laptop.
Its recipe, seed and held-out evaluation (against the same model untrained) are written
next to the weights, so the README's figures can be regenerated with one command.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from attrsub import __version__
from attrsub.checks import check_render_fits, check_training_fits
from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import ConfigError
from attrsub.eval.evaluate import evaluate
from attrsub.fetch import file_sha256
from attrsub.fsio import atomic_path, check_creatable, write_json
from attrsub.model import CONFIGS, build
from attrsub.model.base import WEIGHTS_DIR
from attrsub.train.loop import TrainConfig, seed_everything, train
from attrsub.train.losses import LossWeights


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pretrained weights (with the code version)."""

    config: str = "vggt-tiny"
    scenes: int = 512
    views: int = 4
    size: int = 112
    steps: int = 1500
    lr: float = 5e-4
    batch_size: int = 4
    seed: int = 0
    eval_scenes: int = 32
    eval_seed: int = 10_000

    def __post_init__(self) -> None:
        if self.config not in CONFIGS:
            raise ConfigError(f"unknown model config {self.config!r}; valid: {', '.join(CONFIGS)}")
        self.train_spec()
        TrainConfig(steps=self.steps, lr=self.lr, batch_size=self.batch_size, freeze=())

    def train_spec(self) -> DatasetSpec:
        return DatasetSpec("canonical", scenes=self.scenes, views=self.views, size=self.size,
                           seed=self.seed)

    def eval_spec(self) -> DatasetSpec:
        return DatasetSpec("canonical", scenes=self.eval_scenes, views=self.views, size=self.size,
                           seed=self.eval_seed)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            freeze=(),
            warmup=0.05,
            log_every=25,
            checkpoint_every=100,
            loss=LossWeights(camera=5.0, depth=1.0, point=1.0),
        )


def pretrain(
    recipe: PretrainRecipe,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``recipe.config`` from scratch and write ``<config>.safetensors`` + ``.json``.

    Resumes from ``out_dir/.pretrain-<config>/checkpoint.pt`` when interrupted.
    """
    out = check_creatable(out_dir, "weights folder")
    check_training_fits(recipe.scenes, recipe.views, recipe.size)
    check_render_fits(recipe.eval_scenes, recipe.views, recipe.size)
    t0 = time.perf_counter()
    train_ds = SceneDataset(render_factor_dataset(recipe.train_spec(), cache, device=device))
    eval_ds = SceneDataset(render_factor_dataset(recipe.eval_spec(), cache, device=device))
    seed_everything(recipe.seed)
    model = build(recipe.config, device=device)
    untrained = evaluate(model, eval_ds, device=device)
    result = train(
        model,
        train_ds,
        recipe.train_config(),
        device=device,
        checkpoint_dir=out / f".pretrain-{recipe.config}",
        progress=progress,
        desc=f"pretrain {recipe.config}",
    )
    trained = evaluate(model, eval_ds, device=device)
    weights = out / f"{recipe.config}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"config": recipe.config, "attrsub": __version__})
    report = {
        "recipe": dataclasses.asdict(recipe),
        "attrsub_version": __version__,
        "torch_version": torch.__version__,
        "weights_sha256": file_sha256(weights),
        "final_loss": result.final_loss,
        "history": result.history,
        "wall_s": time.perf_counter() - t0,
        "eval": {"untrained": untrained, "pretrained": trained},
    }
    write_json(out / f"{recipe.config}.json", report)
    return report


def recipe_path(config: str, out_dir: str | os.PathLike[str] = WEIGHTS_DIR) -> Path:
    return Path(out_dir) / f"{config}.json"
