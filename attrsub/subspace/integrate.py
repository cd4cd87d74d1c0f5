"""Combine several factors' subspaces of one layer into the frozen bases of the reduced adapter.

The reduced adapter trains only M in dW = U M V^T (paper, step 6); U concatenates the
chosen factors' column bases, V their row bases, each factor contributing its
first r_a directions. Columns and rows are treated separately and identically.

Orthogonalisation methods (``METHODS``), applied to the concatenation B = [B_1 .. B_m]:
- ``"none"``: B as is (the paper's plain concatenation; not orthonormal);
- ``"qr"``: QR with column pivoting (rank-revealing; directions enter in order of the
  largest remaining norm);
- ``"svd"``: the left singular vectors of B, so truncation keeps the strongest directions;
- ``"loewdin"``: symmetric orthogonalisation B (B^T B)^(-1/2) = U_B V_B^T, the orthonormal
  basis closest to B in Frobenius norm; it treats every factor alike;
- ``"gram-schmidt"``: Gram-Schmidt with re-orthogonalisation (CGS2, as stable as modified
  Gram-Schmidt and vectorised), column by column in the given factor order, so earlier
  factors keep their spans and later ones only add what is new.

"qr", "svd" and "loewdin" work on the small Gram matrix B^T B (pivoted Cholesky, eigh)
followed by a second orthonormalisation pass (CholeskyQR2, a Loewdin polish): LAPACK on a
tall n x m matrix is slow on a loaded multi-user CPU (threaded LAPACK spins), gemm is not.
The second pass restores orthonormality to round-off for condition numbers up to 1/rtol.

Rank deficiency: a direction is dropped when its norm after removing the earlier ones
(|R_jj| for qr, the singular value for svd, the residual norm for gram-schmidt) is at most
``rtol`` times the largest column norm (qr, gram-schmidt) or singular value (svd) of B;
``rtol`` (default 1e-6) must lie in [1e-7, 1), the resolution of the Gram matrices.
Loewdin cannot drop directions; a concatenation whose smallest singular value is at most
``rtol`` times the largest raises ConfigError (use "svd" or "gram-schmidt" instead).
Hence U and V can have different widths when only one side is deficient; M is then
[U.shape[1], V.shape[1]].

Truncation to a total rank D: "svd" keeps the top D singular directions, "qr" the first D
pivots, "gram-schmidt" the first D surviving directions, "none" and "loewdin" the first D
columns of B (factor order) before orthogonalising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from attrsub.errors import ConfigError
from attrsub.subspace.extract import LayerSubspace

METHODS = ("none", "qr", "svd", "loewdin", "gram-schmidt")
DEFAULT_RTOL = 1e-6
MIN_RTOL = 1e-7


@dataclass(frozen=True, eq=False)
class IntegratedBasis:
    """Frozen bases of one layer's reduced adapter: dW = U M V^T with only M trained."""

    U: Tensor
    V: Tensor
    factors: tuple[str, ...]
    ranks: tuple[int, ...]
    method: str

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the trainable middle matrix M."""
        return (self.U.shape[1], self.V.shape[1])


def rank_of(ranks: Mapping[str, int] | int | None, factor: str, available: int,
            where: str = "") -> int:
    """The rank ``ranks`` gives ``factor`` (one int for all, per factor, or None: all
    ``available`` directions), or ConfigError when it is not in 1..available."""
    r = ranks.get(factor, available) if isinstance(ranks, Mapping) else ranks
    r = available if r is None else r
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= available:
        raise ConfigError(
            f"rank {r!r} for factor {factor!r} is out of range{where}; its subspace has "
            f"1..{available} directions"
        )
    return r


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown orthogonalisation method {method!r}; valid: {METHODS}")


def orthogonalize(
    b: Tensor | np.ndarray,
    method: str = "qr",
    total_rank: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> Tensor:
    """Apply one of ``METHODS`` to the columns of b [n, m] (float64 inside, float32 out)."""
    _check_method(method)
    a = np.asarray(b.detach().double() if isinstance(b, Tensor) else b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ConfigError(f"orthogonalize needs a non-empty [n, m] matrix, got {a.shape}")
    n, m = a.shape
    limit = m if method == "none" else min(n, m)
    if total_rank is not None and not 1 <= total_rank <= limit:
        raise ConfigError(
            f"total rank {total_rank} is out of range for {m} columns in R^{n}; valid: 1..{limit}"
        )
    if not MIN_RTOL <= rtol < 1:
        raise ConfigError(
            f"rtol must be in [{MIN_RTOL}, 1) (the resolution of the Gram matrices), got {rtol!r}"
        )
    if method in ("none", "loewdin") and total_rank is not None:
        a = a[:, :total_rank]
    out = _METHOD_FNS[method](a, rtol)
    if method in ("qr", "svd", "gram-schmidt") and total_rank is not None:
        out = out[:, :total_rank]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _none(a: np.ndarray, rtol: float) -> np.ndarray:
    return a


def _qr(a: np.ndarray, rtol: float) -> np.ndarray:
    """Pivoted QR as pivoted Cholesky of the Gram matrix plus a CholeskyQR2 polish."""
    g = a.T @ a
    top = float(np.diag(g).max()) if g.size else 0.0
    if top <= 0:
        return np.zeros((a.shape[0], 0))
    c, piv, rank, _ = scipy.linalg.lapack.dpstrf(g, lower=0, tol=(rtol**2) * top)
    r = np.triu(c[:rank, :rank])
    q = scipy.linalg.solve_triangular(r, a[:, piv[:rank] - 1].T, trans="T").T
    r2 = scipy.linalg.cholesky(q.T @ q)
    return scipy.linalg.solve_triangular(r2, q.T, trans="T").T


def _svd(a: np.ndarray, rtol: float) -> np.ndarray:
    """Left singular vectors from the Gram matrix's eigenvectors, then a Loewdin polish."""
    lam, vec = np.linalg.eigh(a.T @ a)
    lam, vec = lam[::-1], vec[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    if s[0] <= 0:
        return np.zeros((a.shape[0], 0))
    keep = s > rtol * s[0]
    return _polish((a @ vec[:, keep]) / s[keep])


def _loewdin(a: np.ndarray, rtol: float) -> np.ndarray:
    if a.shape[1] > a.shape[0]:
        raise ConfigError(
            f"loewdin needs at most {a.shape[0]} columns in R^{a.shape[0]}, got {a.shape[1]}; "
            "use 'svd' or 'gram-schmidt', which drop dependent directions"
        )
    lam = np.clip(np.linalg.eigvalsh(a.T @ a), 0.0, None)
    s_min, s_max = float(np.sqrt(lam[0])), float(np.sqrt(lam[-1]))
    if s_max <= 0 or s_min <= rtol * s_max:
        cond = float("inf") if s_min <= 0 else s_max / s_min
        raise ConfigError(
            f"loewdin needs linearly independent columns; the concatenation has condition "
            f"number {cond:.3g} (> 1/rtol = {1 / rtol:.3g}); use 'svd' or 'gram-schmidt', "
            "which drop dependent directions"
        )
    return _polish(_polish(a))


def _polish(q: np.ndarray) -> np.ndarray:
    """q (q^T q)^(-1/2): the closest orthonormal basis (one pass is Loewdin itself; a second
    pass on a nearly orthonormal q removes the round-off of working on Gram matrices)."""
    lam, vec = np.linalg.eigh(q.T @ q)
    return q @ ((vec / np.sqrt(lam)) @ vec.T)


def _gram_schmidt(a: np.ndarray, rtol: float) -> np.ndarray:
    cut = rtol * _max_col_norm(a)
    q = np.zeros((a.shape[0], min(a.shape)))
    k = 0
    for j in range(a.shape[1]):
        if k == q.shape[1]:
            break
        v = a[:, j].copy()
        for _ in range(2):
            v -= q[:, :k] @ (q[:, :k].T @ v)
        norm = float(np.linalg.norm(v))
        if norm > cut:
            q[:, k] = v / norm
            k += 1
    return q[:, :k]


def _max_col_norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a, axis=0).max()) if a.size else 0.0


_METHOD_FNS = {
    "none": _none,
    "qr": _qr,
    "svd": _svd,
    "loewdin": _loewdin,
    "gram-schmidt": _gram_schmidt,
}


def _resolve_ranks(
    layer: Mapping[str, LayerSubspace],
    factors: Sequence[str],
    ranks: Mapping[str, int] | int | None,
) -> tuple[int, ...]:
    if len(factors) == 0:
        raise ConfigError("integration needs at least one factor, got none")
    if len(set(factors)) != len(factors):
        raise ConfigError(f"factors repeat: {list(factors)}")
    for factor in factors:
        if factor not in layer:
            raise ConfigError(f"unknown factor {factor!r}; valid: {sorted(layer)}")
    if isinstance(ranks, Mapping):
        extra = set(ranks) - set(factors)
        if extra:
            raise ConfigError(
                f"ranks given for factors not integrated: {sorted(extra)}; "
                f"integrated: {list(factors)}"
            )
    out = []
    for factor in factors:
        sub = layer[factor]
        r = rank_of(ranks, factor, sub.rank)
        out.append(r)
    return tuple(out)


def _factor(basis: Tensor, sub: LayerSubspace, r: int) -> np.ndarray:
    """``col_factor``/``row_factor`` in float64 numpy (torch's threaded elementwise ops on
    small tensors are slow on a loaded machine)."""
    out = basis[:, :r].detach().numpy().astype(np.float64)
    if sub.scale == "sqrt":
        s = sub.singular_values[:r].detach().numpy().astype(np.float64)
        out *= np.sqrt(np.clip(s, 0.0, None))
    return out


def integrate(
    layer: Mapping[str, LayerSubspace],
    factors: Sequence[str],
    ranks: Mapping[str, int] | int | None = None,
    method: str = "qr",
    total_rank: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> IntegratedBasis:
    """The reduced adapter's bases for one layer from its per-factor subspaces.

    ``ranks``: per-factor r_a (a mapping, missing factors use their full rank), one int
    for all, or None for every subspace's full rank. Uses ``col_factor``/``row_factor``, so
    S^1/2 is in the bases when the extraction kept it (it matters for "none", "qr"'s pivot
    order, "svd"'s truncation and "loewdin").
    """
    _check_method(method)
    factors = tuple(factors)
    rs = _resolve_ranks(layer, factors, ranks)
    pairs = list(zip(factors, rs, strict=True))
    cols = np.concatenate([_factor(layer[a].col_basis, layer[a], r) for a, r in pairs], axis=1)
    rows = np.concatenate([_factor(layer[a].row_basis, layer[a], r) for a, r in pairs], axis=1)
    width = min(cols.shape[0], rows.shape[0])
    if total_rank is not None and not 1 <= total_rank <= min(sum(rs), width):
        raise ConfigError(
            f"total rank {total_rank} is out of range; valid: 1..{min(sum(rs), width)} "
            f"(sum of ranks {sum(rs)}, layer width {width})"
        )
    return IntegratedBasis(
        U=orthogonalize(cols, method, total_rank, rtol),
        V=orthogonalize(rows, method, total_rank, rtol),
        factors=factors,
        ranks=rs,
        method=method,
    )


def integrate_all(
    subspaces: Mapping[str, Mapping[str, LayerSubspace]],
    factors: Sequence[str],
    ranks: Mapping[str, int] | int | None = None,
    method: str = "qr",
    total_rank: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> dict[str, IntegratedBasis]:
    """``integrate`` for every layer that all chosen factors have (factor -> layer ->)."""
    _check_method(method)
    if len(factors) == 0:
        raise ConfigError("integration needs at least one factor, got none")
    for factor in factors:
        if factor not in subspaces:
            raise ConfigError(f"unknown factor {factor!r}; valid: {sorted(subspaces)}")
    first = subspaces[factors[0]]
    return {
        name: integrate(
            {a: subspaces[a][name] for a in factors},
            factors,
            ranks,
            method,
            total_rank,
            rtol,
        )
        for name in first
        if all(name in subspaces[a] for a in factors)
    }
