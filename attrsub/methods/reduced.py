"""The reduced-subspace adapter: dW = U M V^T with frozen bases U, V and only M trained.

PEFT 0.21 has no layer with frozen custom bases and a trainable middle matrix, so this is a
small module of our own. ``ReducedLinear`` wraps a base nn.Linear and computes
base(x) + ((x V) M^T) U^T: two thin projections around a D_out x D_in matrix, never a dense
d_out x d_in update, so a step costs about what LoRA of rank D costs. M starts at zero, so
the adapted model equals the base model at init. U and V are non-persistent buffers: they
belong to a basis (a bank integration, the pretrained weights' singular vectors or a seeded
random draw) identified by its hash, and only M is saved, tagged with that hash and the
base weights hash, so M can never be loaded onto a different basis or base.

Bases: ``bank_bases`` (via attrsub.subspace.bank), ``psv_bases`` (top-D singular vectors of each
pretrained W, the paper's PSV ablation) and ``random_bases`` (seeded random orthonormal).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from attrsub import __version__
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import atomic_path
from attrsub.subspace.integrate import IntegratedBasis

KIND = "reduced"


class ReducedLinear(nn.Module):
    """A frozen nn.Linear plus U M V^T, with U [d_out, D_out], V [d_in, D_in], M [D_out, D_in]."""

    def __init__(self, base: nn.Linear, U: Tensor, V: Tensor, basis_hash: str) -> None:
        super().__init__()
        d_out, d_in = base.weight.shape
        if U.ndim != 2 or V.ndim != 2 or U.shape[0] != d_out or V.shape[0] != d_in:
            raise ConfigError(
                f"bases U {tuple(U.shape)} and V {tuple(V.shape)} do not fit a weight of shape "
                f"({d_out}, {d_in}); need U [{d_out}, D] and V [{d_in}, D']"
            )
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        dev, dtype = base.weight.device, base.weight.dtype
        self.register_buffer("U", U.detach().to(dev, dtype).contiguous(), persistent=False)
        self.register_buffer("V", V.detach().to(dev, dtype).contiguous(), persistent=False)
        self.M = nn.Parameter(torch.zeros(U.shape[1], V.shape[1], device=dev, dtype=dtype))
        self.basis_hash = basis_hash

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x @ self.V, self.M), self.U)

    def delta(self) -> Tensor:
        """The dense update U M V^T (for merging and checks)."""
        return self.U @ self.M @ self.V.T


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"the model has no module {name!r} to adapt") from exc


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def basis_hash(bases: Mapping[str, IntegratedBasis]) -> str:
    """Content hash of a set of bases (layer names, shapes and values)."""
    h = hashlib.sha256()
    for name in sorted(bases):
        b = bases[name]
        h.update(name.encode())
        for t in (b.U, b.V):
            t = t.detach().float().contiguous().cpu()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def apply_reduced(
    model: nn.Module, bases: Mapping[str, IntegratedBasis], basis_id: str | None = None
) -> nn.Module:
    """Replace each named nn.Linear by a ReducedLinear; freeze everything else; M trainable.

    ``basis_id`` names the basis (e.g. ``Bank.basis_hash``); default: its content hash.
    """
    if not bases:
        raise ConfigError("apply_reduced needs at least one layer basis, got none")
    for name, b in bases.items():
        mod = _get(model, name)
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
        _set(model, name, ReducedLinear(_get(model, name), b.U, b.V, ident))
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


def _check_rank(name: str, weight: Tensor, rank: int) -> None:
    width = min(weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= width:
        raise ConfigError(
            f"rank {rank!r} is out of range for layer {name!r} of width {width} "
            f"(shape {tuple(weight.shape)}); valid: 1..{width}"
        )


def psv_bases(model: nn.Module, layers: Sequence[str], rank: int) -> dict[str, IntegratedBasis]:
    """Top-``rank`` singular vectors of each pretrained weight (the paper's PSV ablation)."""
    out = {}
    for name in layers:
        w = _get(model, name).weight.detach().double().cpu()
        _check_rank(name, w, rank)
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        out[name] = IntegratedBasis(
            U=u[:, :rank].float(), V=vh[:rank].T.float(), attributes=("psv",),
            ranks=(rank,), method="svd",
        )
    return out


def random_bases(
    model: nn.Module, layers: Sequence[str], rank: int, seed: int = 0
) -> dict[str, IntegratedBasis]:
    """Seeded random orthonormal U, V of width ``rank`` (the chance baseline)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in layers:
        w = _get(model, name).weight
        _check_rank(name, w, rank)
        u = torch.linalg.qr(torch.randn(w.shape[0], rank, generator=gen, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(w.shape[1], rank, generator=gen, dtype=torch.float64))[0]
        out[name] = IntegratedBasis(
            U=u.float(), V=v.float(), attributes=("random",), ranks=(rank,), method="qr"
        )
    return out


def named_basis_hash(kind: str, base_hash: str, rank: int, seed: int | None = None) -> str:
    """A stable id for a generated basis (psv, random) that does not depend on round-off."""
    key = json.dumps({"kind": kind, "base": base_hash, "rank": rank, "seed": seed}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()
