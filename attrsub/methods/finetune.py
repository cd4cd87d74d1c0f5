"""One fine-tuning run: a method on a downstream task, then its evaluation (the metrics row).

``FinetuneSpec`` holds every setting of a run with its default, once: ``finetune`` takes the
same names as keywords, and the ``attrsub finetune`` command reads its defaults from here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attrsub import tasks
from attrsub.checks import check_render_fits, check_training_fits
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_creatable, publish_dir, write_json
from attrsub.methods.base import Context
from attrsub.methods.registry import REGISTRY, prepare
from attrsub.model.base import load_base
from attrsub.subspace.bank import BasisSet, load_bank
from attrsub.train.loop import StepInfo, TrainConfig, seed_everything, train

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class FinetuneSpec:
    """Every setting of one run; the method reads the ones it uses (``Method.config``)."""

    task: str
    method: str
    base: str = "vggt-tiny"
    weights: PathLike | None = None
    random_init: bool = False
    bank: PathLike | None = None
    factors: Sequence[str] = ()
    ranks: Mapping[str, int] | None = None
    rank: int = 8
    total_rank: int | None = None
    ortho: str = "qr"
    steps: int = 100
    lr: float | None = 1e-4
    seed: int = 0
    batch_size: int = 2
    train_scenes: int = 16
    eval_scenes: int = 16
    views: int = 4
    size: int = 112
    cache: PathLike | None = None
    out: PathLike | None = None
    device: str = "cpu"
    checkpoint_dir: PathLike | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        REGISTRY[self.method]  # an unknown method is refused first, naming the valid ones

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one setting (for a command line that offers it)."""
        return cls.__dataclass_fields__[name].default


def finetune(
    task: str,
    method: str,
    *,
    basis: BasisSet | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune one method on one downstream task (attrsub.tasks); returns the metrics row.

    ``settings`` are ``FinetuneSpec``'s fields. ``basis``: a ready basis for the reduced
    method (a subspace server's), instead of integrating one from ``bank``. ``callback``
    sees every training step (a sweep reports through it; returning True stops early, and
    the row then says how many ``steps`` ran); with ``checkpoint_dir`` the training
    checkpoints every ``checkpoint_every`` steps and a rerun resumes from there.

    With ``out``, writes ``metrics.json`` there plus what the method keeps (``Method.save``:
    the M matrices of the basis family, the PEFT folder of LoRA).
    """
    return run(FinetuneSpec(task, method, **settings), basis=basis, callback=callback)


def run(
    spec: FinetuneSpec,
    *,
    basis: BasisSet | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
) -> dict[str, Any]:
    """``finetune`` for a ready spec."""
    s = spec
    the_method = REGISTRY[s.method]
    the_task = tasks.get_task(s.task)
    data_size = the_task.check(tasks.TaskSize(s.train_scenes, s.eval_scenes, s.views, s.size))
    cfg = TrainConfig(
        steps=s.steps, lr=s.lr, seed=s.seed, batch_size=s.batch_size,
        checkpoint_every=s.checkpoint_every,
    ) if the_method.trains else None
    out_dir = check_new_run(s.out) if s.out is not None else None
    if the_method.needs_bank and s.bank is None and basis is None:
        raise ConfigError(
            f"method {s.method!r} needs --bank FILE (a bank from `attrsub bank build`)"
        )
    if cfg is not None:
        check_training_fits(s.train_scenes, s.views, s.size)
    check_render_fits(s.eval_scenes, s.views, s.size)
    b = load_base(s.base, s.weights, device=s.device, random_init=s.random_init)
    the_bank = load_bank(s.bank, b) if the_method.needs_bank and basis is None else None
    seed_everything(s.seed)
    model, count = prepare(
        s.method, b.model, bank=the_bank, basis=basis, factors=s.factors, ranks=s.ranks,
        rank=s.rank, ortho=s.ortho, seed=s.seed, total_rank=s.total_rank,
        base_hash=b.weights_hash,
    )
    t0 = time.perf_counter()
    final_loss: float | None = None  # None, not NaN: the row stays strict JSON
    ran, resumed = 0, None
    if cfg is not None and count > 0:
        data = the_task.train_data(s.cache, data_size, s.seed, device=s.device)
        result = train(model, data, cfg, device=s.device, progress=False, callback=callback,
                       checkpoint_dir=s.checkpoint_dir, desc=f"{s.task}/{s.method}")
        final_loss, ran, resumed = result.final_loss, result.steps, result.resumed_from
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {
        "task": s.task, "method": s.method,
        "factors": list(basis.factors) if basis is not None else list(s.factors),
        "rank": s.rank, "total_rank": s.total_rank, "ortho": s.ortho, "steps": ran,
        "lr": s.lr if cfg else None, "seed": s.seed, "base": s.base,
        "base_hash": b.weights_hash, "trainable_params": count, "train_wall_s": wall,
        "final_loss": final_loss, "resumed_step": resumed,
        **the_task.evaluate(model, s.cache, data_size, s.seed, s.device),
    }
    if out_dir is not None:
        ctx = Context(base_hash=b.weights_hash, seed=s.seed)
        record = {
            "base": {"name": s.base, "weights_hash": b.weights_hash}, "task": s.task,
            "seed": s.seed, "rank": s.rank, "steps": s.steps, "final_loss": final_loss,
        }

        def fill(tmp: Path) -> None:
            the_method.save(model, tmp, ctx, record)
            write_json(tmp / "metrics.json", row)

        if out_dir.is_dir():
            out_dir.rmdir()  # empty (check_new_run), so the whole run appears at once
        publish_dir(out_dir, fill)
    return row


def check_new_run(out: PathLike) -> Path:
    """``out`` if a run can be written there: a new or empty folder (an earlier run's folder
    is never overwritten)."""
    p = check_creatable(out, "--out")
    if p.exists() and any(p.iterdir()):
        raise ConfigError(
            f"--out {str(p)!r} already holds files (an earlier run?); choose a new folder"
        )
    return p


def load_trained(base: Any, path: PathLike, *, bank: PathLike | None = None) -> nn.Module:
    """``base`` (an attrsub.model.base.BaseModel) with a trained adapter from ``path`` applied.

    ``path`` is a LoRA adapter folder (``attrsub mine-adapter``) or a ``finetune --out``
    folder, whose ``metrics.json`` names the method and its settings; the method loads what
    it saved (``Method.load``). The reduced method rebuilds its frozen basis from ``bank``
    (the saved M matrices carry the basis hash, so a different basis is refused).
    """
    from attrsub.adapters.lora import SIDECAR, load_adapter

    root = Path(path)
    if (root / SIDECAR).is_file():
        return load_adapter(root, base)
    saved = sorted({m.saved_as for m in REGISTRY.values() if m.saved_as})
    if not any((root / name).exists() for name in saved):
        raise DataError(
            f"{str(root)!r} holds no adapter: expected {SIDECAR}, "
            f"{' or '.join(saved)} (a mine-adapter or finetune --out folder)"
        )
    try:
        row = json.loads((root / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{str(root)!r} has no readable metrics.json: {exc}") from exc
    method = REGISTRY[row.get("method")]
    if method.needs_bank and bank is None:
        raise ConfigError(f"{str(root)!r} is a {method.name} adapter: pass the bank it used "
                          f"(--bank)")
    ctx = Context(base_hash=base.weights_hash, seed=row.get("seed", 0),
                  bank=load_bank(bank, base) if method.needs_bank else None)
    return method.load(base, root, method.config(row), ctx)
