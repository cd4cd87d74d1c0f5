"""The frozen bases a reduced adapter can carry, each identified by a hash.

- a mined bank's integration (``subspace.bank.Bank.basis_set``, the paper's method);
- ``psv_bases``: the top-D singular vectors of each pretrained W (the paper's PSV ablation);
- ``random_bases``: seeded random orthonormal U, V (the chance baseline).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attrsub.errors import ConfigError
from attrsub.methods.reduced.layer import get_module
from attrsub.subspace.integrate import IntegratedBasis


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
        w = get_module(model, name).weight.detach().double().cpu()
        _check_rank(name, w, rank)
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        out[name] = IntegratedBasis(
            U=u[:, :rank].float(), V=vh[:rank].T.float(), factors=("psv",),
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
        w = get_module(model, name).weight
        _check_rank(name, w, rank)
        u = torch.linalg.qr(torch.randn(w.shape[0], rank, generator=gen, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(w.shape[1], rank, generator=gen, dtype=torch.float64))[0]
        out[name] = IntegratedBasis(
            U=u.float(), V=v.float(), factors=("random",), ranks=(rank,), method="qr"
        )
    return out


def named_basis_hash(kind: str, base_hash: str, rank: int, seed: int | None = None) -> str:
    """A stable id for a generated basis (psv, random) that does not depend on round-off."""
    key = json.dumps({"kind": kind, "base": base_hash, "rank": rank, "seed": seed}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()
