"""Fine-tuning methods by name, so a sweep swaps them with one string.

``prepare(method, model, ...)`` returns the model ready for attrsub.train.loop (exactly the
method's parameters have ``requires_grad``) and the exact trainable count:

- ``none``: nothing trains (the zero-shot row).
- ``full``: every base parameter except the patch encoder.
- ``lora`` / ``pissa``: PEFT LoRA of rank ``rank`` on the frame and global blocks' four
  linears (PiSSA: ``init_lora_weights="pissa"``).
- ``reduced``: the mined bank's bases, integrated from ``factors`` with per-attribute
  ``ranks`` (``rank`` when ``ranks`` is None), orthogonalised by ``ortho``, optionally
  truncated to ``total_rank``; only M trains.
- ``psv``: top-``rank`` singular vectors of each pretrained W as frozen U, V (paper ablation).
- ``random``: seeded random orthonormal U, V of width ``rank``.

AdaLoRA is not offered: PEFT's AdaLoRA adds its orthogonality regulariser to ``outputs.loss``
inside ``PeftModel.forward``, which our model (a dict of predictions, no ``loss``) does not
have, so it would silently train without it; its rank allocation also needs
``update_and_allocate(step)`` with the gradients still present after every optimiser step,
and a ``total_step`` fixed in the config. Supporting it means a loss hook and a schedule
hook in attrsub.train.loop, which the other methods do not need.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from attrsub.adapters.lora import FROZEN_PREFIX, LoraSpec, apply_lora, target_modules
from attrsub.checks import check_render_fits, check_training_fits, positive_int
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_creatable, publish_dir, write_json
from attrsub.methods.reduced import (
    apply_reduced,
    named_basis_hash,
    psv_bases,
    random_bases,
    trainable_count,
)
from attrsub.subspace.bank import BasisSet
from attrsub.train.loop import StepInfo

METHODS = ("none", "full", "lora", "pissa", "psv", "random", "reduced")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def prepare(
    method: str,
    model: nn.Module,
    *,
    bank: Any = None,
    basis: BasisSet | None = None,
    factors: Sequence[str] = (),
    ranks: Mapping[str, int] | int | None = None,
    ortho: str = "qr",
    rank: int = 16,
    seed: int = 0,
    total_rank: int | None = None,
    base_hash: str = "",
) -> tuple[nn.Module, int]:
    """Set ``model`` up for ``method``; returns (model, exact number of trainable values).

    The reduced method takes a ready ``basis`` (from a subspace server) or integrates one
    from ``bank``, ``factors``, ``ranks``/``rank``, ``ortho`` and ``total_rank``.
    """
    check_method(method)
    positive_int(rank, "rank")
    if method == "none":
        for p in model.parameters():
            p.requires_grad_(False)
        return model, 0
    if method == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_PREFIX))
        return model, _count(model)
    if method in ("lora", "pissa"):
        spec = LoraSpec(rank=rank)
        peft_model = apply_lora(model, spec, init="pissa" if method == "pissa" else "default")
        return peft_model, _count(peft_model)
    layers = target_modules(model, LoraSpec(rank=rank))
    if method == "psv":
        model = apply_reduced(
            model, psv_bases(model, layers, rank), named_basis_hash("psv", base_hash, rank)
        )
    elif method == "random":
        model = apply_reduced(
            model,
            random_bases(model, layers, rank, seed),
            named_basis_hash("random", base_hash, rank, seed),
        )
    else:
        if basis is None:
            if bank is None:
                raise ConfigError("method 'reduced' needs a subspace bank (--bank FILE)")
            if not factors:
                raise ConfigError(f"method 'reduced' needs factors; the bank has {bank.factors}")
            per = rank if ranks is None else ranks
            basis = bank.basis_set(factors, per, ortho, total_rank)
        if base_hash and basis.weights_hash != base_hash:
            raise DataError(
                f"the bank was mined on base weights {basis.weights_hash} but the model's base "
                f"has {base_hash}"
            )
        model = apply_reduced(model, basis.bases, basis.basis_hash)
    return model, trainable_count(model)


def finetune(
    task: str,
    method: str,
    *,
    base: str = "vggt-tiny",
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
    bank: str | os.PathLike[str] | None = None,
    basis: BasisSet | None = None,
    factors: Sequence[str] = (),
    ranks: Mapping[str, int] | None = None,
    rank: int = 8,
    total_rank: int | None = None,
    ortho: str = "qr",
    steps: int = 100,
    lr: float | None = 1e-4,
    seed: int = 0,
    batch_size: int = 2,
    train_scenes: int = 16,
    eval_scenes: int = 16,
    views: int = 4,
    size: int = 112,
    cache: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    callback: Callable[[StepInfo], bool | None] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Fine-tune one method on one downstream task (attrsub.tasks); returns the metrics row.

    ``callback`` sees every training step (a sweep reports through it; returning True stops
    early, and the row then says how many ``steps`` ran); with ``checkpoint_dir`` the
    training checkpoints every ``checkpoint_every`` steps and a rerun resumes from there.

    With ``out``, writes ``metrics.json`` there plus the trained adapter (M matrices for the
    reduced family, the PEFT folder for lora; a PiSSA adapter is tied to the residual base
    PiSSA made in memory, so it is not saved).
    """
    from attrsub import tasks
    from attrsub.adapters.lora import save_adapter
    from attrsub.methods.reduced import save_reduced
    from attrsub.model.base import load_base
    from attrsub.subspace.bank import load_bank
    from attrsub.train.loop import TrainConfig, seed_everything, train

    check_method(method)
    the_task = tasks.get_task(task)
    data_size = the_task.check(tasks.TaskSize(train_scenes, eval_scenes, views, size))
    cfg = None if method == "none" else TrainConfig(
        steps=steps, lr=lr, seed=seed, batch_size=batch_size, checkpoint_every=checkpoint_every
    )
    out_dir = check_new_run(out) if out is not None else None
    if method == "reduced" and bank is None and basis is None:
        raise ConfigError("method 'reduced' needs --bank FILE (a bank from `attrsub bank build`)")
    if cfg is not None:
        check_training_fits(train_scenes, views, size)
    check_render_fits(eval_scenes, views, size)
    b = load_base(base, weights, device=device, random_init=random_init)
    the_bank = load_bank(bank, b) if method == "reduced" and basis is None else None
    seed_everything(seed)
    model, count = prepare(
        method, b.model, bank=the_bank, basis=basis, factors=factors, ranks=ranks, rank=rank,
        ortho=ortho, seed=seed, total_rank=total_rank, base_hash=b.weights_hash,
    )
    t0 = time.perf_counter()
    final_loss: float | None = None  # None, not NaN: the row stays strict JSON
    ran, resumed = 0, None
    if cfg is not None and count > 0:
        data = the_task.train_data(cache, data_size, seed, device=device)
        result = train(model, data, cfg, device=device, progress=False, callback=callback,
                       checkpoint_dir=checkpoint_dir, desc=f"{task}/{method}")
        final_loss, ran, resumed = result.final_loss, result.steps, result.resumed_from
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {
        "task": task, "method": method,
        "factors": list(basis.factors) if basis is not None else list(factors), "rank": rank,
        "total_rank": total_rank, "ortho": ortho, "steps": ran, "lr": lr if cfg else None,
        "seed": seed, "base": base, "base_hash": b.weights_hash, "trainable_params": count,
        "train_wall_s": wall, "final_loss": final_loss, "resumed_step": resumed,
        **the_task.evaluate(model, cache, data_size, seed, device),
    }
    if out_dir is not None:
        def fill(tmp: Path) -> None:
            if method in ("reduced", "psv", "random"):
                save_reduced(model, tmp / "reduced.safetensors", base_hash=b.weights_hash)
            elif method == "lora":
                save_adapter(model, tmp / "lora-adapter", {
                    "base": {"name": base, "weights_hash": b.weights_hash}, "task": task,
                    "seed": seed, "rank": rank, "steps": steps, "final_loss": final_loss,
                })
            write_json(tmp / "metrics.json", row)

        if out_dir.is_dir():
            out_dir.rmdir()  # empty (check_new_run), so the whole run appears at once
        publish_dir(out_dir, fill)
    return row


def check_new_run(out: str | os.PathLike[str]) -> Path:
    """``out`` if a run can be written there: a new or empty folder (an earlier run's folder
    is never overwritten)."""
    p = check_creatable(out, "--out")
    if p.exists() and any(p.iterdir()):
        raise ConfigError(
            f"--out {str(p)!r} already holds files (an earlier run?); choose a new folder"
        )
    return p


def load_trained(
    base: Any, path: str | os.PathLike[str], *, bank: str | os.PathLike[str] | None = None
) -> nn.Module:
    """``base`` (an attrsub.model.base.BaseModel) with a trained adapter from ``path`` applied.

    ``path`` is a LoRA adapter folder (``attrsub mine-adapter``, or ``lora-adapter`` inside a
    ``finetune --out`` folder) or a ``finetune --out`` folder of the reduced family, whose
    ``metrics.json`` names the method and integration key; the reduced method rebuilds its
    frozen basis from ``bank`` (the saved M matrices carry the basis hash, so a different
    basis is refused).
    """
    import json

    from attrsub.adapters.lora import SIDECAR, load_adapter
    from attrsub.methods.reduced import load_reduced
    from attrsub.subspace.bank import load_bank

    root = Path(path)
    if (root / SIDECAR).is_file():
        return load_adapter(root, base)
    if (root / "lora-adapter" / SIDECAR).is_file():
        return load_adapter(root / "lora-adapter", base)
    weights = root / "reduced.safetensors"
    if not weights.is_file():
        raise DataError(
            f"{str(root)!r} holds no adapter: expected {SIDECAR}, lora-adapter/ or "
            f"reduced.safetensors (a mine-adapter or finetune --out folder)"
        )
    try:
        row = json.loads((root / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{str(root)!r} has no readable metrics.json: {exc}") from exc
    method = row.get("method")
    if method == "reduced" and bank is None:
        raise ConfigError(f"{str(root)!r} is a reduced adapter: pass the bank it used (--bank)")
    model, _ = prepare(
        method, base.model, bank=load_bank(bank, base) if method == "reduced" else None,
        factors=row.get("factors") or (), rank=row["rank"], ortho=row.get("ortho", "qr"),
        seed=row.get("seed", 0), total_rank=row.get("total_rank"), base_hash=base.weights_hash,
    )
    return load_reduced(model, weights, base_hash=base.weights_hash)
