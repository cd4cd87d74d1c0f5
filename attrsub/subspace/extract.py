"""One shared update per weight matrix from k adapters' LoRA updates (the paper's IRLS step).

Convention: an update is ``Update(col, row)`` with ``dW = col @ row.T``; ``col`` is
[d_out, r] (PEFT's ``lora_B`` times the scaling) and ``row`` is [d_in, r] (PEFT's
``lora_A`` transposed). The paper writes dW = A B^T with A = col and B = row.

Extraction never forms a dense d_out x d_in matrix. The k column factors are stacked into
Ac [d_out, R] and the row factors into Bc [d_in, R] (R = sum of the adapters' ranks), and
both are QR-factored once: Ac = Qa Ra, Bc = Qb Rb. Every adapter's update is then exactly
Qa K_i Qb^T with the small core K_i = Ra[:, i] Rb[:, i]^T, so any weighted mean, its SVD
and every residual norm live in the R x R core space (Qa, Qb have orthonormal columns).
``extract_dense`` does the same on dense matrices; the tests and the benchmark use it to
show that both agree.

Methods:
- ``"irls"``: min over A, B of sum_i ||A B^T - dW_i||_F^alpha by iteratively reweighted
  least squares: C = sum_i w_i dW_i / sum_i w_i, A B^T = the rank-d' truncated SVD of C,
  w_i = 1 / (eps^2 + ||A B^T - dW_i||_F^2)^((2 - alpha) / 2); repeat until the weights
  (normalised to mean 1) move less than ``tol`` or ``iters`` updates were made.
- ``"mean"``: one step with w_i = 1 (the plain average of the updates).
- ``"svd"``: the column basis is the top-d' left singular vectors of the column stack
  [dW_1 ... dW_k] (d_out x k d_in), the row basis those of the row stack
  [dW_1^T ... dW_k^T] (d_in x k d_out); the singular values (and spectrum) are those of
  the column stack divided by sqrt(k), so k identical adapters give the adapter's own
  spectrum. Column j and row j are not an SVD pair here; only the spans are meaningful.

Rank selection (``ExtractConfig.rank``) runs on the spectrum of C, which has
q = min(d_out, d_in, R) entries (C has rank at most q):
- an int d': fixed, clipped to q (and to ``max_rank`` when set);
- ``"cliff-gap"``: the d' in [1, min(max_rank, n - 1)] with the largest log-gap
  log(s_d' / s_{d'+1}), where n counts the values above 1e-10 s_1 (the numerical rank of
  C). The drop from s_n to a (numerically) zero tail is rank deficiency, not a cliff, and
  is never chosen; when n = 1 the rule gives 1;
- ``"cliff-energy"``: the smallest d' whose squared singular values reach the fraction
  ``energy`` of the total (capped by ``max_rank``).
For IRLS the rule is applied to every iterate's C, so the residuals use the same truncation
as the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attrsub.adapters.update import Update
from attrsub.errors import ConfigError, DataError

METHODS = ("irls", "mean", "svd")
RANK_RULES = ("cliff-gap", "cliff-energy")
KEEP_SCALES = ("sqrt", "none")
_ZERO_TOL = 1e-10


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract one shared subspace per weight matrix (all sweep axes the paper leaves open).

    Defaults: IRLS with alpha = 1 (the geometric-median-like, outlier-robust choice),
    d' = 16 (the paper's cliff after the 16th singular value), S^1/2 kept in the factors
    (the paper's A = U S^1/2, B = V S^1/2).
    """

    method: str = "irls"
    rank: int | str = 16
    energy: float = 0.9
    max_rank: int | None = None
    alpha: float = 1.0
    eps: float = 1e-6
    iters: int = 20
    tol: float = 1e-6
    keep_scale: str = "sqrt"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown extraction method {self.method!r}; valid: {METHODS}")
        if isinstance(self.rank, str):
            if self.rank not in RANK_RULES:
                raise ConfigError(
                    f"rank {self.rank!r} is not a rule; valid: a positive int or one of "
                    f"{RANK_RULES}"
                )
        elif isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(
                f"rank must be a positive int or one of {RANK_RULES}, got {self.rank!r}"
            )
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"energy is a fraction in (0, 1], got {self.energy!r}")
        if self.max_rank is not None and (
            isinstance(self.max_rank, bool)
            or not isinstance(self.max_rank, int)
            or self.max_rank < 1
        ):
            raise ConfigError(f"max_rank must be None or a positive int, got {self.max_rank!r}")
        if not 0.0 < self.alpha <= 2.0:
            raise ConfigError(
                f"alpha must be in (0, 2] (2 = least squares, 1 = robust), got {self.alpha!r}"
            )
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ConfigError(f"eps must be a positive finite number, got {self.eps!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ConfigError(f"iters must be a positive int, got {self.iters!r}")
        if not self.tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol!r}")
        if self.keep_scale not in KEEP_SCALES:
            raise ConfigError(f"unknown keep_scale {self.keep_scale!r}; valid: {KEEP_SCALES}")


@dataclass(frozen=True, eq=False)
class LayerSubspace:
    """The extracted subspace of one weight matrix for one factor.

    ``col_basis`` and ``row_basis`` are orthonormal; ``col_factor``/``row_factor`` give the
    paper's A = U S^1/2, B = V S^1/2 when ``scale == "sqrt"`` (the bases themselves when
    ``"none"``), which is what integration concatenates. ``weights`` are the IRLS weights
    (mean 1) that formed the final C, so outlying adapters show up as small values.
    """

    col_basis: Tensor
    row_basis: Tensor
    singular_values: Tensor
    spectrum: Tensor
    weights: Tensor
    iterations: int
    rank: int
    method: str = "irls"
    scale: str = "sqrt"
    converged: bool = True

    def _scaled(self, basis: Tensor, r: int | None) -> Tensor:
        r = self.rank if r is None else r
        if not 1 <= r <= self.rank:
            raise ConfigError(f"rank {r} is out of range; this subspace has 1..{self.rank}")
        if self.scale == "none":
            return basis[:, :r]
        return basis[:, :r] * self.singular_values[:r].clamp_min(0).sqrt()

    def col_factor(self, r: int | None = None) -> Tensor:
        """The first r columns of the column factor (A in the paper)."""
        return self._scaled(self.col_basis, r)

    def row_factor(self, r: int | None = None) -> Tensor:
        """The first r columns of the row factor (B in the paper)."""
        return self._scaled(self.row_basis, r)

    def update(self) -> Update:
        """The shared update U S V^T as factors (meaningful for "irls" and "mean")."""
        root = self.singular_values.clamp_min(0).sqrt()
        return Update(col=self.col_basis * root, row=self.row_basis * root)


def select_rank(spectrum: Tensor, cfg: ExtractConfig) -> int:
    """d' for one layer from the singular values of C (descending), per ``cfg.rank``."""
    q = int(spectrum.numel())
    cap = q if cfg.max_rank is None else min(q, cfg.max_rank)
    if isinstance(cfg.rank, int):
        return max(1, min(cfg.rank, cap))
    s = spectrum.double()
    if cfg.rank == "cliff-energy":
        e = s.square()
        total = float(e.sum())
        if total <= 0:
            return 1
        frac = torch.cumsum(e, 0) / total
        reached = torch.nonzero(frac >= cfg.energy - 1e-12)
        d = int(reached[0]) + 1 if reached.numel() else q
        return max(1, min(d, cap))
    if float(s[0]) <= 0:
        return 1
    numerical = int((s > float(s[0]) * _ZERO_TOL).sum())
    hi = min(cap, numerical - 1)
    if hi < 1:
        return max(1, min(numerical, cap))
    gaps = torch.log(s[:hi]) - torch.log(s[1 : hi + 1])
    return int(torch.argmax(gaps)) + 1


def _check_updates(updates: Sequence[Update]) -> tuple[int, int]:
    if len(updates) == 0:
        raise DataError("extraction needs at least one adapter's update, got none")
    shape = updates[0].shape
    for i, u in enumerate(updates):
        if u.shape != shape:
            raise DataError(
                f"adapter {i} updates a {u.shape} matrix but adapter 0 a {shape} one; all "
                "adapters of one layer must share the weight shape"
            )
    return shape


def _normalise(w: Tensor) -> Tensor:
    return w * (w.numel() / w.sum())


def _irls_weights(res: Tensor, cfg: ExtractConfig) -> Tensor:
    w = (cfg.eps**2 + res.square()).pow(-(2.0 - cfg.alpha) / 2.0)
    return _normalise(w)


def _truncate(c: Tensor, cfg: ExtractConfig, q: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """SVD of C and d'; only the first q values count (the rest of a dense SVD is round-off)."""
    u, s, vh = torch.linalg.svd(c, full_matrices=False)
    d = select_rank(s[:q], cfg)
    return u, s, vh, d


def _irls(
    cores: Tensor, cfg: ExtractConfig, q: int
) -> tuple[Tensor, Tensor, Tensor, int, Tensor, int, bool]:
    """IRLS on a stack of k matrices [k, m, n] (core or dense); returns the final SVD of C."""
    k = cores.shape[0]
    w = torch.ones(k, dtype=cores.dtype)
    iterations, converged = 0, cfg.method == "mean"
    if cfg.method == "irls":
        for _ in range(cfg.iters):
            c = torch.einsum("k,kab->ab", w, cores) / w.sum()
            u, s, vh, d = _truncate(c, cfg, q)
            approx = (u[:, :d] * s[:d]) @ vh[:d]
            res = torch.linalg.matrix_norm(approx.unsqueeze(0) - cores)
            w_new = _irls_weights(res, cfg)
            delta = float((w_new - w).abs().max())
            w = w_new
            iterations += 1
            if delta < cfg.tol:
                converged = True
                break
    c = torch.einsum("k,kab->ab", w, cores) / w.sum()
    u, s, vh, d = _truncate(c, cfg, q)
    return u, s, vh.T, d, w, iterations, converged


def _stack_svd(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors and values of the horizontal stack of [k, m, n] blocks."""
    k, m, n = blocks.shape
    u, s, _ = torch.linalg.svd(blocks.permute(1, 0, 2).reshape(m, k * n), full_matrices=False)
    return u, s


def _result(
    col: Tensor,
    row: Tensor,
    s: Tensor,
    d: int,
    q: int,
    w: Tensor,
    it: int,
    conv: bool,
    cfg: ExtractConfig,
) -> LayerSubspace:
    return LayerSubspace(
        col_basis=col[:, :d].float().contiguous(),
        row_basis=row[:, :d].float().contiguous(),
        singular_values=s[:d].float().clone(),
        spectrum=s[:q].float().clone(),
        weights=w.float().clone(),
        iterations=it,
        rank=d,
        method=cfg.method,
        scale=cfg.keep_scale,
        converged=conv,
    )


def _svd_method(blocks: Tensor, cfg: ExtractConfig, q: int) -> tuple[Tensor, Tensor, Tensor, int]:
    k = blocks.shape[0]
    u, s = _stack_svd(blocks)
    v, _ = _stack_svd(blocks.transpose(1, 2))
    s = s[:q] / math.sqrt(k)
    d = select_rank(s, cfg)
    return u, v, s, d


def extract(updates: Sequence[Update], cfg: ExtractConfig | None = None) -> LayerSubspace:
    """The shared subspace of one weight matrix, computed in factored form (no dense dW)."""
    cfg = cfg or ExtractConfig()
    d_out, d_in = _check_updates(updates)
    ac = torch.cat([u.col.detach().double() for u in updates], dim=1)
    bc = torch.cat([u.row.detach().double() for u in updates], dim=1)
    q = min(d_out, d_in, ac.shape[1])
    qa, ra = torch.linalg.qr(ac)
    qb, rb = torch.linalg.qr(bc)
    cores = torch.stack([ra[:, sl] @ rb[:, sl].T for sl in _slices([u.rank for u in updates])])
    k = len(updates)
    if cfg.method == "svd":
        uc, vc, s, d = _svd_method(cores, cfg, q)
        return _result(
            qa @ uc[:, :d],
            qb @ vc[:, :d],
            s,
            d,
            q,
            torch.ones(k, dtype=torch.float64),
            0,
            True,
            cfg,
        )
    uc, s, vc, d, w, it, conv = _irls(cores, cfg, q)
    return _result(qa @ uc[:, :d], qb @ vc[:, :d], s, d, q, w, it, conv, cfg)


def extract_dense(updates: Sequence[Update], cfg: ExtractConfig | None = None) -> LayerSubspace:
    """The same extraction on dense float64 matrices: the reference ``extract`` must match."""
    cfg = cfg or ExtractConfig()
    d_out, d_in = _check_updates(updates)
    q = min(d_out, d_in, sum(u.rank for u in updates))
    dense = torch.stack([u.dense() for u in updates])
    k = len(updates)
    if cfg.method == "svd":
        u, v, s, d = _svd_method(dense, cfg, q)
        return _result(u, v, s, d, q, torch.ones(k, dtype=torch.float64), 0, True, cfg)
    u, s, v, d, w, it, conv = _irls(dense, cfg, q)
    return _result(u, v, s, d, q, w, it, conv, cfg)


def extract_all(
    updates: Mapping[str, Sequence[Update]], cfg: ExtractConfig | None = None
) -> dict[str, LayerSubspace]:
    """``extract`` for every layer (weight-matrix name -> its k adapters' updates)."""
    cfg = cfg or ExtractConfig()
    return {name: extract(ups, cfg) for name, ups in updates.items()}


def _slices(ranks: Sequence[int]) -> list[slice]:
    out, start = [], 0
    for r in ranks:
        out.append(slice(start, start + r))
        start += r
    return out
