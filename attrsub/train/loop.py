"""The training loop every fine-tuning method shares (pretraining, LoRA mining, downstream).

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast where the
device supports it, frozen-module selection, checkpoint and resume, and a per-step
callback through which a sweep reports metrics and checkpoints. The loop trains whatever
parameters have ``requires_grad``; adapters (PEFT LoRA, the reduced subspace) decide that.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from attrsub.data.datasets import collate
from attrsub.errors import ConfigError, DataError, DivergenceError
from attrsub.fsio import atomic_path
from attrsub.train.losses import LossWeights, compute_loss

PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the paper (AdamW, wd 0.05, 5% warm-up, clip 1)."""

    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: float = 0.05
    clip: float = 1.0
    batch_size: int = 2
    frames: int | None = None
    seed: int = 0
    precision: str = "auto"
    freeze: tuple[str, ...] = ("aggregator.patch_embed",)
    log_every: int = 10
    checkpoint_every: int = 0
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")
        if self.clip <= 0:
            raise ConfigError(f"clip must be > 0, got {self.clip!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.frames is not None and self.frames < 2:
            raise ConfigError(f"frames must be None (all) or >= 2, got {self.frames!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if self.log_every < 1 or self.checkpoint_every < 0:
            raise ConfigError("log_every must be >= 1 and checkpoint_every >= 0")
        object.__setattr__(self, "freeze", tuple(self.freeze))


@dataclass(frozen=True)
class StepInfo:
    """What the callback sees after a step: enough for a sweep to report and checkpoint."""

    step: int
    steps: int
    loss: float
    parts: dict[str, float]
    lr: float
    checkpoint: Path | None


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    history: list[dict[str, float]]
    wall_s: float
    stopped_early: bool = False
    # The step a checkpoint resumed this run from (0 for a fresh run): a retried sweep trial
    # says so in its row.
    resumed_from: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is reproducible from its seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def apply_freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze parameters whose name starts with any prefix; returns how many were frozen.

    An unknown prefix is an error, so a typo cannot silently train the patch encoder.
    """
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hits = [n for n in names if _matches(n, prefix)]
        if not hits:
            raise ConfigError(f"freeze prefix {prefix!r} matches no parameter of the model")
        for n, p in model.named_parameters():
            if _matches(n, prefix):
                p.requires_grad_(False)
                frozen += 1
    return frozen


def _matches(name: str, prefix: str) -> bool:
    # PEFT wraps the model as base_model.model.<name>; match either spelling.
    return name.startswith(prefix) or f".model.{prefix}" in name


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lr_lambda(warmup_steps: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


def select_frames(batch: dict[str, torch.Tensor], frames: int | None, gen: torch.Generator):
    """Keep view 0 (the world frame) plus a random ordered subset of the others."""
    views = batch["images"].shape[1]
    if frames is None or frames >= views:
        return batch
    rest = torch.randperm(views - 1, generator=gen)[: frames - 1] + 1
    idx = torch.cat([torch.zeros(1, dtype=torch.long), rest.sort().values])
    return {k: v[:, idx] if v.dim() > 1 else v for k, v in batch.items()}


def batch_for_step(dataset: Any, cfg: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    """The batch of step ``step`` depends only on (seed, step), so a resumed run sees the same."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    n = len(dataset)
    idx = torch.randint(n, (cfg.batch_size,), generator=gen).tolist()
    return select_frames(collate([dataset[i] for i in idx]), cfg.frames, gen)


def train(
    model: nn.Module,
    dataset: Any,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.steps`` steps; resume from a checkpoint if any.

    ``callback`` runs after every step; returning True stops the run early (a scheduler
    decision). A NaN or infinite loss raises DivergenceError at once.
    """
    if len(dataset) == 0:
        raise ConfigError("cannot train on an empty dataset")
    device = torch.device(device)
    model.to(device)
    if cfg.freeze:
        apply_freeze(model, cfg.freeze)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (everything is frozen)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    warmup_steps = max(1, round(cfg.warmup * cfg.steps)) if cfg.warmup > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(warmup_steps, cfg.steps))
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start = 0
    history: list[dict[str, float]] = []
    if ckpt_path is not None and ckpt_path.is_file():
        start, history = _load_checkpoint(ckpt_path, model, optim, sched)
    seed_everything(cfg.seed + start)
    bf16 = use_bf16(cfg.precision, device)
    model.train()
    t0 = time.perf_counter()
    window: list[float] = []
    stopped = False
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not progress, leave=False)
    done = start
    for step in range(start, cfg.steps):
        batch = {k: v.to(device) for k, v in batch_for_step(dataset, cfg, step).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(batch["images"], heads=cfg.loss.heads)
        pred = {k: _to_float(v) for k, v in pred.items()}
        loss, parts = compute_loss(pred, batch, cfg.loss)
        value = float(loss.detach())
        if not math.isfinite(value):
            bar.close()
            raise DivergenceError(step, value)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optim.step()
        sched.step()
        window.append(value)
        done = step + 1
        saved: Path | None = None
        if done % cfg.log_every == 0 or done == cfg.steps:
            history.append({"step": done, "loss": float(np.mean(window)), **parts})
            window = []
        if ckpt_path is not None and (
            done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        ):
            _save_checkpoint(ckpt_path, model, optim, sched, done, history)
            saved = ckpt_path
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if callback is not None:
            info = StepInfo(done, cfg.steps, value, parts, sched.get_last_lr()[0], saved)
            if callback(info):
                stopped = done < cfg.steps
                break
    bar.close()
    final = history[-1]["loss"] if history else float("nan")
    return TrainResult(done, final, history, time.perf_counter() - t0, stopped, start)


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.float()
    if isinstance(v, list):
        return [_to_float(x) for x in v]
    return v


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained, by name: all a checkpoint of a fine-tune needs."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    history: list[dict[str, float]],
) -> None:
    state = {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": optim.state_dict(),
        "scheduler": sched.state_dict(),
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict[str, float]]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint {path} is unreadable ({exc}); delete it to restart") from exc
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    got = set(state["trainable"])
    if got != expected:
        diff = sorted(got ^ expected)[:5]
        raise DataError(
            f"checkpoint {path} was written for different trainable parameters "
            f"(first differing names: {diff}); delete it or use another checkpoint folder"
        )
    with torch.no_grad():
        for n, t in state["trainable"].items():
            own[n].copy_(t)
    optim.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state["history"])
