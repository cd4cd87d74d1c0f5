"""Injection of the reduced layer into a model, and its M matrices on disk (PEFT's "model").

``apply_reduced`` swaps each named nn.Linear for a ``ReducedLinear`` carrying that layer's
frozen basis and freezes everything else; ``save_reduced`` writes only the M matrices,
tagged with the basis hash and the base weights hash, so M can never be loaded onto a
different basis or base; ``merge`` folds U M V^T back into plain nn.Linear weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from attrsub import __version__
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import atomic_path
from attrsub.methods.reduced.bases import basis_hash
from attrsub.methods.reduced.layer import ReducedLinear, get_module
from attrsub.subspace.integrate import IntegratedBasis

KIND = "reduced"


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_reduced(
    model: nn.Module, bases: Mapping[str, IntegratedBasis], basis_id: str | None = None
) -> nn.Module:
    """Replace each named nn.Linear by a ReducedLinear; freeze everything else; M trainable.

    ``basis_id`` names the basis (e.g. ``Bank.basis_hash``); default: its content hash.
    """
    if not bases:
        raise ConfigError("apply_reduced needs at least one layer basis, got none")
    for name, b in bases.items():
        mod = get_module(model, name)
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"{name!r} is a {type(mod).__name__}, not an nn.Linear")
        d_out, d_in = mod.weight.shape
        if b.U.shape[0] != d_out or b.V.shape[0] != d_in:
            raise ConfigError(
                f"basis of {name!r} has U {tuple(b.U.shape)}, V {tuple(b.V.shape)}; the layer "
                f"is {d_out} x {d_in}"
            )
    ident = basis_id or basis_hash(bases)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, b in bases.items():
        _set(model, name, ReducedLinear(get_module(model, name), b.U, b.V, ident))
    return model


def reduced_layers(model: nn.Module) -> dict[str, ReducedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ReducedLinear)}


def trainable_count(model: nn.Module) -> int:
    """Exact number of trained values: the sum of D_out * D_in over every M."""
    return sum(m.M.numel() for m in reduced_layers(model).values())


def _single_hash(layers: Mapping[str, ReducedLinear]) -> str:
    if not layers:
        raise ConfigError("the model has no reduced-subspace layers")
    hashes = {m.basis_hash for m in layers.values()}
    if len(hashes) != 1:
        raise ConfigError(f"the model mixes reduced layers of several bases: {sorted(hashes)}")
    return hashes.pop()


def save_reduced(
    model: nn.Module, path: str | os.PathLike[str], *, base_hash: str
) -> Path:
    """Write the M matrices (by layer name) plus basis and base hashes, atomically."""
    layers = reduced_layers(model)
    meta = {
        "kind": KIND,
        "basis_hash": _single_hash(layers),
        "base_hash": base_hash,
        "attrsub_version": __version__,
        "shapes": json.dumps({n: list(m.M.shape) for n, m in layers.items()}),
    }
    tensors = {n: m.M.detach().cpu().float().contiguous() for n, m in layers.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_reduced(
    model: nn.Module, path: str | os.PathLike[str], *, base_hash: str | None = None
) -> nn.Module:
    """Load saved M matrices into a model that already carries the same basis."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a handle, not a dict)
    except Exception as exc:
        raise DataError(f"reduced adapter {str(path)!r} is missing or corrupt: {exc}") from exc
    if meta.get("kind") != KIND:
        raise DataError(f"{str(path)!r} is not a reduced-subspace adapter")
    layers = reduced_layers(model)
    have = _single_hash(layers)
    if meta.get("basis_hash") != have:
        raise DataError(
            f"reduced adapter {str(path)!r} belongs to basis {meta.get('basis_hash')} but the "
            f"model carries basis {have}"
        )
    if base_hash is not None and meta.get("base_hash") != base_hash:
        raise DataError(
            f"reduced adapter {str(path)!r} was trained on base weights {meta.get('base_hash')}"
            f" but the base given has {base_hash}"
        )
    if set(tensors) != set(layers):
        raise DataError(f"reduced adapter {str(path)!r} covers other layers than the model's")
    with torch.no_grad():
        for name, t in tensors.items():
            m = layers[name].M
            if t.shape != m.shape:
                raise DataError(f"M of {name!r} is {tuple(t.shape)}, the model's {tuple(m.shape)}")
            m.copy_(t)
    return model


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold U M V^T into the base weights and put plain nn.Linear back (no inference overhead)."""
    for name, layer in reduced_layers(model).items():
        base = layer.base
        base.weight.add_(layer.delta().to(base.weight.dtype))
        _set(model, name, base)
    return model
