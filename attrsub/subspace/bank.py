"""The subspace bank: every factor's per-layer subspaces, with provenance, in one file.

One safetensors file. Tensors are named ``<factor>/<layer>/<field>`` (fields: col_basis,
row_basis, singular_values, spectrum, weights); the metadata key ``attrsub`` holds a JSON
record: base name and weights hash, the extraction config, per factor the adapter sidecars
it came from, and per layer its rank, iterations, method, scale and convergence. One file
means one atomic write and one hash; the bank's ``content_hash`` (over the tensors) plus an
integration key names a reduced basis (``basis_hash``), which saved M matrices carry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from attrsub import __version__
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import atomic_path, read_safetensors
from attrsub.subspace.evidence import current_keys
from attrsub.subspace.extract import ExtractConfig, LayerSubspace
from attrsub.subspace.integrate import IntegratedBasis, integrate_all

FIELDS = ("col_basis", "row_basis", "singular_values", "spectrum", "weights")
META_KEY = "attrsub"
FORMAT = 1


@dataclass(frozen=True, eq=False)
class BasisSet:
    """One integration of a bank, ready for the reduced adapter.

    What a subspace server hands to trainers, so they need neither the bank file nor the
    integration work; ``weights_hash`` lets the trainer check it has the bank's base.
    """

    bases: dict[str, IntegratedBasis]
    basis_hash: str
    weights_hash: str
    factors: tuple[str, ...]

    @property
    def total_rank(self) -> int:
        """Width of the integrated basis (the largest layer's, when truncation differs)."""
        return max((b.U.shape[1] for b in self.bases.values()), default=0)


@dataclass(frozen=True, eq=False)
class Bank:
    """All factors' LayerSubspaces of one base model (factor -> layer -> subspace)."""

    base_name: str
    weights_hash: str
    config: ExtractConfig
    subspaces: dict[str, dict[str, LayerSubspace]]
    sources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # attrsub.subspace.evidence rows over all layers (claim 1 beside its nulls), when the
    # adapters were at hand; the per-layer rows go to a study's evidence.parquet.
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def factors(self) -> list[str]:
        return list(self.subspaces)

    @property
    def layers(self) -> list[str]:
        first = next(iter(self.subspaces.values()), {})
        return list(first)

    def content_hash(self) -> str:
        """sha256 of every tensor (names, shapes, values) and the extraction config."""
        h = hashlib.sha256(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        for name, t in sorted(_tensors(self.subspaces).items()):
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def integrate(
        self,
        factors: Sequence[str],
        ranks: Mapping[str, int] | int | None = None,
        ortho: str = "qr",
        total_rank: int | None = None,
    ) -> dict[str, IntegratedBasis]:
        """The reduced adapter's bases per layer for the chosen factors."""
        unknown = [f for f in factors if f not in self.subspaces]
        if unknown:
            raise ConfigError(f"unknown factor(s) {unknown}; this bank has {self.factors}")
        return integrate_all(self.subspaces, list(factors), ranks, ortho, total_rank)

    def basis_hash(
        self,
        factors: Sequence[str],
        ranks: Mapping[str, int] | int | None = None,
        ortho: str = "qr",
        total_rank: int | None = None,
    ) -> str:
        """Id of the basis ``integrate`` gives for this key (independent of LAPACK round-off)."""
        key = {
            "bank": self.content_hash(),
            "factors": list(factors),
            "ranks": dict(ranks) if isinstance(ranks, Mapping) else ranks,
            "ortho": ortho,
            "total_rank": total_rank,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def basis_set(
        self,
        factors: Sequence[str],
        ranks: Mapping[str, int] | int | None = None,
        ortho: str = "qr",
        total_rank: int | None = None,
    ) -> BasisSet:
        """``integrate`` plus the ids a trainer needs, as one value."""
        return BasisSet(
            self.integrate(factors, ranks, ortho, total_rank),
            self.basis_hash(factors, ranks, ortho, total_rank),
            self.weights_hash,
            tuple(factors),
        )


def _tensors(subspaces: Mapping[str, Mapping[str, LayerSubspace]]) -> dict[str, torch.Tensor]:
    out = {}
    for factor, layers in subspaces.items():
        for layer, sub in layers.items():
            for f in FIELDS:
                out[f"{factor}/{layer}/{f}"] = getattr(sub, f).detach().float().cpu().contiguous()
    return out


def _layer_meta(sub: LayerSubspace) -> dict[str, Any]:
    return {
        "rank": sub.rank,
        "iterations": sub.iterations,
        "method": sub.method,
        "scale": sub.scale,
        "converged": sub.converged,
        "weights": [float(w) for w in sub.weights],
    }


def save_bank(bank: Bank, path: str | os.PathLike[str]) -> Path:
    """Write the bank as one safetensors file with its provenance in the metadata, atomically."""
    if not bank.subspaces:
        raise ConfigError("cannot save an empty bank (no factors)")
    record = {
        "format": FORMAT,
        "attrsub_version": __version__,
        "base": {"name": bank.base_name, "weights_hash": bank.weights_hash},
        "extract": dataclasses.asdict(bank.config),
        "factors": list(bank.subspaces),
        "sources": bank.sources,
        "evidence": bank.evidence,
        "layers": {
            f: {layer: _layer_meta(s) for layer, s in layers.items()}
            for f, layers in bank.subspaces.items()
        },
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(_tensors(bank.subspaces), str(tmp), metadata={META_KEY: json.dumps(record)})
    return path


def read_record(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    p = Path(path)
    meta, tensors = read_safetensors(p, "subspace bank")
    if META_KEY not in meta:
        raise DataError(
            f"{str(p)!r} is not a subspace bank: a safetensors file without the {META_KEY!r} "
            f"record (an adapter's weights?); make a bank with `attrsub bank build`"
        )
    try:
        record = json.loads(meta[META_KEY])
        record["base"]["weights_hash"]
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"subspace bank {str(p)!r} has a damaged {META_KEY!r} record: {exc!r}"
                        ) from exc
    return record, tensors


def load_bank(path: str | os.PathLike[str], base: Any = None) -> Bank:
    """Read a bank; with ``base`` (a ``model.base.BaseModel``) refuse one mined on other weights."""
    record, tensors = read_record(path)
    want = record["base"]["weights_hash"]
    if base is not None and base.weights_hash != want:
        raise DataError(
            f"subspace bank {str(path)!r} was mined on base weights {want} but the base given "
            f"has {base.weights_hash}"
        )
    subspaces: dict[str, dict[str, LayerSubspace]] = {}
    try:
        for factor in record["factors"]:
            subspaces[factor] = {}
            for layer, m in record["layers"][factor].items():
                t = {f: tensors[f"{factor}/{layer}/{f}"] for f in FIELDS}
                subspaces[factor][layer] = LayerSubspace(
                    **t,
                    iterations=m["iterations"],
                    rank=m["rank"],
                    method=m["method"],
                    scale=m["scale"],
                    converged=m["converged"],
                )
    except KeyError as exc:
        raise DataError(f"subspace bank {str(path)!r} lacks tensor or field {exc}") from exc
    return Bank(
        base_name=record["base"]["name"],
        weights_hash=want,
        config=ExtractConfig(**record["extract"]),
        subspaces=subspaces,
        sources=record.get("sources", {}),
        evidence=[current_keys(r) for r in record.get("evidence", [])],
    )


def summary(bank: Bank, seed: int = 0) -> dict[str, Any]:
    """What ``attrsub bank info`` prints: sizes, ranks, spectral cliffs, claim 1's evidence
    (when the bank carries it) and claim 2's pairwise angles and distances beside random."""
    from attrsub.subspace.disentangle import pairwise
    from attrsub.subspace.evidence import claim_summary
    from attrsub.subspace.extract import select_rank

    cliff = ExtractConfig(rank="cliff-gap")
    per_factor = {}
    for f, layers in bank.subspaces.items():
        ranks = [s.rank for s in layers.values()]
        cliffs = [select_rank(s.spectrum, cliff) for s in layers.values()]
        per_factor[f] = {
            "adapters": len(bank.sources.get(f, [])),
            "layers": len(layers),
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "cliff_per_layer": dict(zip(layers, cliffs, strict=True)),
        }
    pairs: dict[str, dict[str, list[float]]] = {}
    names = ("col_angle_min", "col_angle_mean", "scale_inv_distance")
    for row in pairwise(bank.subspaces, seed=seed, draws=1):
        key = f"{row['factor_a']}-{row['factor_b']}"
        acc = pairs.setdefault(key, {})
        for name in names:
            acc.setdefault(name, []).append(float(row[name]))
            acc.setdefault(f"rand_{name}", []).append(float(row[f"rand_{name}"]))
    return {
        "base": {"name": bank.base_name, "weights_hash": bank.weights_hash},
        "extract": dataclasses.asdict(bank.config),
        "factors": per_factor,
        "layers": len(bank.layers),
        "claim1": claim_summary(bank.evidence) if bank.evidence else None,
        "pairs": {k: {n: sum(v) / len(v) for n, v in acc.items()} for k, acc in pairs.items()},
    }
