"""Evidence that factor subspaces exist: the paper's claim 1, measured on the adapters.

A bank's subspaces are only factor subspaces if adapters trained on one factor's
family share update directions that adapters of other factors do not. Three measures,
each beside its null, per adapted layer and over all layers:

- ``overlap``: for every pair of adapters, the overlap ||P^T Q||_F^2 / k of the top-k
  singular subspaces of their updates dW = B A (k = the adapters' rank; 1 = the same
  subspace), on the column side (span of B: the outputs an update writes) and the row side
  (span of A: the inputs it reads). ``within`` is the mean over pairs of one factor,
  ``cross`` over pairs of different factors. Nulls: random k-dimensional subspaces
  (k / d), and a permutation test that shuffles the factor labels over the adapters
  (group sizes kept): p = (1 + #{perm: within - cross >= observed}) / (1 + perms).
- ``heldout``: leave one adapter out, extract its factor's subspace from the other k - 1
  adapters (the study's extraction), and ask what fraction of the held-out update's energy
  it captures, ||U^T dW||^2 / ||dW||^2 on the column side and ||dW V||^2 / ||dW||^2 on the
  row side. ``within`` is that fraction, ``cross`` the mean fraction captured by the other
  factors' subspaces (extracted from all their adapters, so the comparison favours them),
  ``random`` the expectation for a random subspace of the same size, d' / d.
- ``init``: the overlap of each adapter's row space with the span of its own LoRA init A0
  (redrawn from the key in its sidecar); near 1 means training never left the init and the
  row space says nothing about the data. Its null is k / d as well.

Everything works on the factored updates (QR of the stacked factors, small SVDs), never on
a dense d_out x d_in matrix, so it runs at VGGT-1B shapes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attrsub.adapters.update import Update
from attrsub.errors import ConfigError, DataError
from attrsub.subspace.extract import ExtractConfig, LayerSubspace, extract_all

SIDES = ("col", "row")
MEASURES = ("overlap", "heldout", "init")
ALL_LAYERS = "all"
ALL_FACTORS = "all"
# p below this, on both sides, with held-out energy above the other factors': claim 1 holds.
ALPHA = 0.01
# A side whose subspaces overlap their own LoRA init more than this is still mostly the
# init (LoRA's A barely moves in short runs), so it cannot show what the data taught.
INIT_MAX = 0.5
# Banks saved before the word "factor" was settled key an evidence row's factor "attribute".
LEGACY_KEYS = {"attribute": "factor"}


@dataclass(frozen=True)
class AdapterSet:
    """Adapters by factor: their names, per-layer updates and (when known) LoRA inits."""

    names: tuple[str, ...]
    labels: tuple[str, ...]  # each adapter's factor
    updates: tuple[dict[str, Update], ...]
    inits: tuple[dict[str, Tensor] | None, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if not n == len(self.labels) == len(self.updates) == len(self.inits):
            raise ConfigError("an AdapterSet needs one name, factor, update set and init each")
        if n == 0:
            raise ConfigError("an AdapterSet needs at least one adapter")
        layers = set(self.updates[0])
        for name, ups in zip(self.names, self.updates, strict=True):
            if set(ups) != layers:
                raise DataError(f"adapter {name!r} adapts other layers than {self.names[0]!r}")

    @property
    def layers(self) -> list[str]:
        return list(self.updates[0])

    @property
    def factors(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def of(self, factor: str) -> list[int]:
        return [i for i, a in enumerate(self.labels) if a == factor]


def current_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """An evidence row read from an older bank, with its ``LEGACY_KEYS`` under today's names."""
    return {LEGACY_KEYS.get(k, k): v for k, v in row.items()}


def load_adapters(adapters_by_factor: Mapping[str, Sequence[str | os.PathLike[str]]]) -> AdapterSet:
    """Read adapter folders (``{factor: [folder, ...]}``) and redraw their inits."""
    from attrsub.adapters.lora import keyed_lora_a, read_sidecar, read_updates

    names, labels, updates, inits = [], [], [], []
    for factor, dirs in adapters_by_factor.items():
        for d in dirs:
            d = Path(d)
            meta = read_sidecar(d)
            ups = read_updates(d)
            init = meta.get("init")
            a0 = None
            if isinstance(init, dict) and "key" in init:
                a0 = {layer: keyed_lora_a(init["key"], layer, (u.rank, u.shape[1]),
                                          float(init.get("scale", 1.0)))
                      for layer, u in ups.items()}
            names.append(d.name)
            labels.append(factor)
            updates.append(ups)
            inits.append(a0)
    return AdapterSet(tuple(names), tuple(labels), tuple(updates), tuple(inits))


def update_bases(u: Update, k: int | None = None) -> tuple[Tensor, Tensor]:
    """Orthonormal bases [d_out, k] and [d_in, k] of the top-k singular subspaces of
    dW = col row^T, from the factors (k defaults to the update's rank)."""
    k = u.rank if k is None else k
    qa, ra = torch.linalg.qr(u.col.detach().double())
    qb, rb = torch.linalg.qr(u.row.detach().double())
    uc, _, vch = torch.linalg.svd(ra @ rb.T)
    return qa @ uc[:, :k], qb @ vch[:k].T


def _overlap(p: Tensor, q: Tensor) -> float:
    return float((p.T @ q).square().sum()) / min(p.shape[1], q.shape[1])


def overlap_matrices(aset: AdapterSet, k: int | None = None) -> dict[str, np.ndarray]:
    """Per side, the [layers, n, n] pairwise overlaps of the adapters' top-k subspaces."""
    n, layers = len(aset.names), aset.layers
    out = {s: np.ones((len(layers), n, n)) for s in SIDES}
    for li, layer in enumerate(layers):
        bases = [update_bases(ups[layer], k) for ups in aset.updates]
        for i, j in itertools.combinations(range(n), 2):
            for si, side in enumerate(SIDES):
                v = _overlap(bases[i][si], bases[j][si])
                out[side][li, i, j] = out[side][li, j, i] = v
    return out


def permutation_test(
    mats: np.ndarray, labels: Sequence[str], permutations: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Within- and cross-factor means of [L, n, n] pair matrices, and the permutation p of
    within - cross per matrix (labels shuffled, group sizes kept, one draw set for all L)."""
    n = len(labels)
    if mats.shape[-2:] != (n, n):
        raise ConfigError(f"pair matrices {mats.shape} do not match {n} labels")
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    pairs = np.triu_indices(n, 1)
    vals = mats[:, pairs[0], pairs[1]]  # [L, P]

    def stat(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        same = c[pairs[0]] == c[pairs[1]]
        if not same.any() or same.all():
            raise ConfigError("the permutation test needs pairs within and across factors")
        return vals[:, same].mean(1), vals[:, ~same].mean(1)

    within, cross = stat(codes)
    observed = within - cross
    rng = np.random.default_rng([seed, n, 0xE71D])
    exceed = np.zeros(len(mats))
    for _ in range(permutations):
        w, c = stat(rng.permutation(codes))
        exceed += (w - c) >= observed - 1e-12
    return {"within": within, "cross": cross, "p_value": (1 + exceed) / (1 + permutations)}


def _energy(u: Update, basis: Tensor, side: str) -> float:
    """Fraction of ||dW||_F^2 inside span(basis) on one side, from the factors alone."""
    c, r = u.col.detach().double(), u.row.detach().double()
    gc, gr = c.T @ c, r.T @ r
    total = float(torch.trace(gc @ gr))
    if total <= 0:
        return math.nan
    b = basis.double()
    if side == "col":
        pc = c.T @ b
        return float(torch.trace((pc @ pc.T) @ gr)) / total
    pr = r.T @ b
    return float(torch.trace(gc @ (pr @ pr.T))) / total


def _basis(sub: LayerSubspace, side: str) -> Tensor:
    return sub.col_basis if side == "col" else sub.row_basis


def heldout_energy(aset: AdapterSet, cfg: ExtractConfig) -> list[dict[str, Any]]:
    """Per held-out adapter, layer and side: the energy its factor's leave-one-out
    subspace captures, the other factors' mean, and the random expectation."""
    full = {a: _extract(aset, aset.of(a), cfg) for a in aset.factors}
    rows: list[dict[str, Any]] = []
    for factor in aset.factors:
        idx = aset.of(factor)
        if len(idx) < 2:
            continue
        others = [o for o in aset.factors if o != factor]
        for i in idx:
            own = _extract(aset, [j for j in idx if j != i], cfg)
            for layer in aset.layers:
                u = aset.updates[i][layer]
                for side in SIDES:
                    basis = _basis(own[layer], side)
                    d = basis.shape[0]
                    other = [_energy(u, _basis(full[o][layer], side), side) for o in others]
                    rows.append({
                        "adapter": aset.names[i], "factor": factor, "layer": layer,
                        "side": side, "within": _energy(u, basis, side),
                        "cross": float(np.mean(other)) if other else math.nan,
                        "random": basis.shape[1] / d, "rank": basis.shape[1], "dim": d,
                    })
    return rows


def _extract(aset: AdapterSet, idx: Sequence[int], cfg: ExtractConfig) -> dict[str, LayerSubspace]:
    return extract_all({layer: [aset.updates[i][layer] for i in idx] for layer in aset.layers},
                       cfg)


def init_overlap(aset: AdapterSet, k: int | None = None) -> list[dict[str, Any]]:
    """Per adapter and layer: the overlap of its row space with the span of its init A0."""
    rows = []
    for name, factor, ups, a0 in zip(aset.names, aset.labels, aset.updates, aset.inits,
                                   strict=True):
        if a0 is None:
            continue
        for layer, u in ups.items():
            _, row = update_bases(u, k)
            q, _ = torch.linalg.qr(a0[layer].double().T)
            rows.append({"adapter": name, "factor": factor, "layer": layer, "side": "row",
                         "within": _overlap(row, q), "random": row.shape[1] / row.shape[0],
                         "rank": row.shape[1], "dim": row.shape[0]})
    return rows


def evidence_rows(
    aset: AdapterSet, cfg: ExtractConfig, *, permutations: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Every evidence row (schema: results.schema.EVIDENCE_SCHEMA, less the study columns).

    ``overlap`` rows: per layer and over all layers (``layer="all"``, the pair overlaps
    averaged over layers), for all factors (with the permutation p) and per factor
    (its within pairs against its cross pairs). ``heldout`` and ``init`` rows: per adapter
    and layer, plus each adapter's and each factor's mean over layers.
    """
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ConfigError(f"permutations must be a positive integer, got {permutations!r}")
    rows: list[dict[str, Any]] = []
    labels = list(aset.labels)
    k = min(u.rank for ups in aset.updates for u in ups.values())
    if len(aset.factors) >= 2 and len(labels) > len(aset.factors):
        mats = overlap_matrices(aset, k)
        names = [*aset.layers, ALL_LAYERS]
        for side in SIDES:
            m = np.concatenate([mats[side], mats[side].mean(0, keepdims=True)])
            test = permutation_test(m, labels, permutations, seed)
            dims = [_dim(aset, layer, side) for layer in aset.layers]
            nulls = [k / d for d in dims]
            dims.append(float(np.mean(dims)))
            nulls.append(float(np.mean(nulls)))  # the mean of the layers' nulls
            for li, layer in enumerate(names):
                rows.append(_row("overlap", side, layer, ALL_FACTORS, None,
                                 test["within"][li], test["cross"][li], nulls[li],
                                 test["p_value"][li], permutations, k, dims[li]))
                for factor in aset.factors:
                    w, c = _factor_means(m[li], labels, factor)
                    rows.append(_row("overlap", side, layer, factor, None, w, c, nulls[li],
                                     None, None, k, dims[li]))
    per = heldout_energy(aset, cfg) + init_overlap(aset, k)
    for r in per:
        r["measure"] = "heldout" if "cross" in r else "init"
    rows += [_row(r["measure"], r["side"], r["layer"], r["factor"], r["adapter"],
                  r["within"], r.get("cross"), r["random"], None, None, r["rank"], r["dim"])
             for r in per]
    rows += _means(per)
    return rows


def _dim(aset: AdapterSet, layer: str, side: str) -> float:
    d_out, d_in = aset.updates[0][layer].shape
    return float(d_out if side == "col" else d_in)


def _factor_means(m: np.ndarray, labels: Sequence[str], factor: str) -> tuple[float, float]:
    idx = [i for i, a in enumerate(labels) if a == factor]
    rest = [i for i, a in enumerate(labels) if a != factor]
    within = [m[i, j] for i, j in itertools.combinations(idx, 2)]
    cross = [m[i, j] for i in idx for j in rest]
    return (float(np.mean(within)) if within else math.nan,
            float(np.mean(cross)) if cross else math.nan)


def _row(measure: str, side: str, layer: str, factor: str, adapter: str | None,
         within: float, cross: float | None, random: float, p: float | None,
         permutations: int | None, rank: int, dim: float) -> dict[str, Any]:
    return {"measure": measure, "side": side, "layer": layer, "factor": factor,
            "adapter": adapter, "within": float(within),
            "cross": None if cross is None else float(cross), "random": float(random),
            "p_value": None if p is None else float(p), "permutations": permutations,
            "rank": int(rank), "dim": float(dim)}


def _means(per: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per adapter, per factor and overall: the mean over layers of held-out and init
    rows (``layer="all"``; ``adapter`` None for the factor and overall means)."""
    out = []
    keys = {(r["measure"], r["side"]) for r in per}
    for measure, side in sorted(keys):
        rs = [r for r in per if r["measure"] == measure and r["side"] == side]
        groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for r in rs:
            groups.setdefault((r["factor"], r["adapter"]), []).append(r)
            groups.setdefault((r["factor"], None), []).append(r)
            groups.setdefault((ALL_FACTORS, None), []).append(r)
        for (factor, adapter), g in groups.items():
            cross = [r["cross"] for r in g if r.get("cross") is not None]
            out.append(_row(measure, side, ALL_LAYERS, factor, adapter,
                            float(np.nanmean([r["within"] for r in g])),
                            float(np.nanmean(cross)) if cross else None,
                            float(np.mean([r["random"] for r in g])), None, None,
                            g[0]["rank"], float(np.mean([r["dim"] for r in g]))))
    return out


def claim_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Claim 1 from evidence rows: the overall numbers per side, a status per side and a
    verdict.

    A side is ``factor-specific`` when within-factor overlap exceeds cross-factor
    with p < ALPHA, the held-out adapters' own factor captures more of their energy than
    the other factors do, and the side's subspaces are learned, not their init (overlap
    with the own init at most INIT_MAX; the column side starts from B = 0, so it always is).
    Otherwise the side is ``still the init`` or ``not factor-specific``. Claim 1 holds
    when both sides are factor-specific, holds on one side when one is.
    """
    out: dict[str, Any] = {}
    status = {}
    for side in SIDES:
        ov = _pick(rows, "overlap", side)
        ho = _pick(rows, "heldout", side)
        it = _pick(rows, "init", side)
        out[side] = {
            "overlap_within": ov and ov["within"], "overlap_cross": ov and ov["cross"],
            "overlap_random": ov and ov["random"], "p_value": ov and ov["p_value"],
            "permutations": ov and ov["permutations"],
            "heldout_own": ho and ho["within"], "heldout_other": ho and ho["cross"],
            "heldout_random": ho and ho["random"],
            "init_overlap": it and it["within"],
        }
        if it is not None and it["within"] > INIT_MAX:
            status[side] = "still the init"
        elif (ov and ho and ov["p_value"] is not None and ov["p_value"] < ALPHA
              and ov["within"] > ov["cross"] and ho["within"] > (ho["cross"] or 0)):
            status[side] = "factor-specific"
        else:
            status[side] = "not factor-specific"
        out[side]["status"] = status[side]
    good = [s for s in SIDES if status[s] == "factor-specific"]
    out["verdict"] = ("holds" if len(good) == 2 else
                      f"holds on the {good[0]} side only" if good else "does not hold")
    return out


def _pick(rows: Sequence[Mapping[str, Any]], measure: str, side: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["measure"] == measure and r["side"] == side and r["layer"] == ALL_LAYERS
                and r["factor"] == ALL_FACTORS and r.get("adapter") is None):
            return dict(r)
    return None
