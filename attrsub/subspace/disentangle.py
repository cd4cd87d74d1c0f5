"""How decoupled two factors' subspaces are, per layer (the paper's disentanglement study).

Measures between two subspaces of R^n given by bases S [n, d1] and S' [n, d2]:

- principal angles (degrees): arccos of the singular values of Q1^T Q2, with Q1, Q2
  orthonormal bases of the spans obtained from the small Gram matrices (directions whose
  singular value is below 1e-6 of the largest are dropped as rank deficiency);
- the paper's scale-invariant distance, solved as a minimum generalised eigenvalue problem:

      d(S, S') = min over (x, x') of ||S x - S' x'||^2 / (||S x||^2 + ||S' x'||^2)
               = lambda_min of  M z = lambda N z,
      M = [S, -S']^T [S, -S'],  N = blockdiag(S^T S, S'^T S').

  We use squared norms in the denominator. The paper's formula is written with plain norms
  (||Sx - S'x'|| / (||Sx|| + ||S'x'||)), whose minimum is sin(theta_1 / 2): that is 0.707,
  not 1, for orthogonal subspaces, which contradicts the paper's "1 means orthogonal". The
  squared form has the closed form 1 - cos(theta_1) (theta_1 the smallest principal angle):
  0 for shared directions, 1 for orthogonal subspaces, as the paper reports. It is a
  Rayleigh quotient, hence the generalised eigenproblem. Columns are first scaled to unit
  norm (a change of basis, which leaves the value unchanged, and keeps N well conditioned),
  then a ridge of 1e-12 is added to both M and N so rank-deficient S stay solvable; a null
  direction of S then scores 1 (it shares nothing) instead of a spurious 0.
- projection overlap ||P1 P2||_F^2 / min(d1, d2) = mean cos^2 of the principal angles:
  1 when one subspace contains the other, 0 when orthogonal.

What S is for a LoRA update: the update dW = U S V^T acts as x -> dW x, so "S x" lives in
the column space span(U) and the row-side analogue in span(V). The distance is invariant to
S -> S G for any invertible G (x absorbs G), so the orthonormal basis U, the paper's scaled
factor U S^1/2 and dW itself all give the same value; we use the orthonormal bases
(``col_basis``/``row_basis``), which is also the best-conditioned choice. The column-space
value is the headline ``scale_inv_distance``; ``row_scale_inv_distance`` is the row side.

Random baseline: each measure for random subspaces (QR of Gaussian matrices) of the same
dimensions, averaged over a few draws from a generator seeded by (seed, n, d1, d2), so a
row's baseline does not depend on which other rows are computed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from torch import Tensor

from attrsub.errors import ConfigError
from attrsub.subspace.extract import LayerSubspace

_RIDGE = 1e-12
_RANK_TOL = 1e-12


@dataclass(frozen=True)
class _Pair:
    """The Gram matrices of two bases: every measure here is a function of them alone.

    Working on Grams keeps LAPACK on small (d x d) matrices; a QR or SVD of a tall n x d
    basis is slow on a loaded machine (threaded LAPACK spins) and is not needed.
    """

    gaa: np.ndarray
    gbb: np.ndarray
    gab: np.ndarray


def _array(s: Tensor | np.ndarray) -> np.ndarray:
    a = np.asarray(s.detach().double() if isinstance(s, Tensor) else s, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ConfigError(f"a subspace basis must be a non-empty [n, d] matrix, got {a.shape}")
    return a


def _pair(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> _Pair:
    sa, sb = _array(a), _array(b)
    if sa.shape[0] != sb.shape[0]:
        raise ConfigError(
            f"subspaces live in different spaces: R^{sa.shape[0]} versus R^{sb.shape[0]}"
        )
    return _Pair(sa.T @ sa, sb.T @ sb, sa.T @ sb)


def _whitener(g: np.ndarray) -> np.ndarray:
    """W with (S W)^T (S W) = I spanning range(S), from G = S^T S; null directions dropped
    (eigenvalues below 1e-12 of the largest, i.e. singular values below 1e-6)."""
    lam, vec = np.linalg.eigh(g)
    top = float(lam.max())
    if top <= 0:
        raise ConfigError("a subspace basis is all zeros; it spans nothing")
    keep = lam > _RANK_TOL * top
    return vec[:, keep] / np.sqrt(lam[keep])


def _cosines(p: _Pair) -> np.ndarray:
    """Cosines of the principal angles (descending), min(rank a, rank b) of them."""
    wa, wb = _whitener(p.gaa), _whitener(p.gbb)
    return np.clip(np.linalg.svd(wa.T @ p.gab @ wb, compute_uv=False), 0.0, 1.0)


def _distance(p: _Pair) -> float:
    m = np.block([[p.gaa, -p.gab], [-p.gab.T, p.gbb]])
    n = scipy.linalg.block_diag(p.gaa, p.gbb)
    diag = np.diag(n)
    floor = max(float(diag.max()), np.finfo(np.float64).tiny) * np.finfo(np.float64).eps
    scale = 1.0 / np.sqrt(np.maximum(diag, floor))
    m, n = m * scale[:, None] * scale, n * scale[:, None] * scale
    eye = _RIDGE * np.eye(m.shape[0])
    lam = scipy.linalg.eigh(m + eye, n + eye, eigvals_only=True, subset_by_index=[0, 0])
    return float(np.clip(lam[0], 0.0, 2.0))


def principal_angles(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """The principal angles between span(a) and span(b), ascending, in degrees.

    There are min(rank a, rank b) of them. From arccos of the cosines, so an angle near 0
    is resolved to about 1e-8 rad (1e-6 degrees).
    """
    return np.degrees(np.arccos(_cosines(_pair(a, b))))


def scale_invariant_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """min ||Sx - S'x'||^2 / (||Sx||^2 + ||S'x'||^2) by the generalised eigenproblem.

    Equals 1 - cos(theta_1); invariant to any invertible change of basis of either side.
    """
    return _distance(_pair(a, b))


def projection_overlap(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """||P1 P2||_F^2 / min(d1, d2): 1 when nested, 0 when orthogonal (d = numerical rank)."""
    cos = _cosines(_pair(a, b))
    return float(np.sum(cos**2) / cos.size)


def _measures(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(smallest angle, mean angle, scale-invariant distance, overlap) for one side."""
    p = _pair(a, b)
    cos = _cosines(p)
    ang = np.degrees(np.arccos(cos))
    return float(ang[0]), float(ang.mean()), _distance(p), float(np.sum(cos**2) / cos.size)


@functools.lru_cache(maxsize=256)
def random_baseline(
    n: int, d1: int, d2: int, seed: int = 0, draws: int = 4
) -> tuple[float, float, float, float]:
    """The four measures for random d1- and d2-dimensional subspaces of R^n (mean of draws)."""
    if not 1 <= d1 <= n or not 1 <= d2 <= n:
        raise ConfigError(f"subspace dimensions must be in 1..{n}, got {d1} and {d2}")
    if draws < 1:
        raise ConfigError(f"draws must be a positive int, got {draws!r}")
    rng = np.random.default_rng([seed, n, d1, d2])
    vals = [
        _measures(rng.standard_normal((n, d1)), rng.standard_normal((n, d2))) for _ in range(draws)
    ]
    amin, amean, dist, ovl = np.mean(np.asarray(vals), axis=0)
    return float(amin), float(amean), float(dist), float(ovl)


def compare(
    a: LayerSubspace, b: LayerSubspace, seed: int = 0, draws: int = 4
) -> dict[str, float | int]:
    """All measures for one layer and one factor pair, plus their random baselines."""
    row: dict[str, float | int] = {
        "rank_a": a.rank,
        "rank_b": b.rank,
        "d_out": int(a.col_basis.shape[0]),
        "d_in": int(a.row_basis.shape[0]),
    }
    sides = {"col": (a.col_basis, b.col_basis), "row": (a.row_basis, b.row_basis)}
    for side, (sa, sb) in sides.items():
        vals = _measures(_array(sa), _array(sb))
        base = random_baseline(int(sa.shape[0]), int(sa.shape[1]), int(sb.shape[1]), seed, draws)
        for prefix, (amin, amean, dist, ovl) in (("", vals), ("rand_", base)):
            row[f"{prefix}{side}_angle_min"] = amin
            row[f"{prefix}{side}_angle_mean"] = amean
            row[f"{prefix}{_DIST[side]}"] = dist
            row[f"{prefix}{_OVERLAP[side]}"] = ovl
    return row


_DIST = {"col": "scale_inv_distance", "row": "row_scale_inv_distance"}
_OVERLAP = {"col": "overlap", "row": "row_overlap"}


def pairwise(
    subspaces: Mapping[str, Mapping[str, LayerSubspace]], seed: int = 0, draws: int = 4
) -> list[dict[str, str | float | int]]:
    """One flat row per (layer, factor pair) for every layer both factors have.

    Keys: layer, factor_a, factor_b, rank_a, rank_b, d_out, d_in, then for the data and (with a
    ``rand_`` prefix) the random baseline: col_angle_min, col_angle_mean, row_angle_min,
    row_angle_mean (degrees), scale_inv_distance (column space), row_scale_inv_distance,
    overlap (column space), row_overlap. Factor pairs follow the mapping's order.
    """
    rows: list[dict[str, str | float | int]] = []
    for factor_a, factor_b in itertools.combinations(list(subspaces), 2):
        layers_b = subspaces[factor_b]
        for layer, sa in subspaces[factor_a].items():
            if layer not in layers_b:
                continue
            row: dict[str, str | float | int] = {
                "layer": layer, "factor_a": factor_a, "factor_b": factor_b,
            }
            row.update(compare(sa, layers_b[layer], seed=seed, draws=draws))
            rows.append(row)
    return rows
