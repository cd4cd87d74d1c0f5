"""Alignment of predictions to ground truth before scoring: Sim(3) for points, scale for depth.

A feed-forward reconstruction is only defined up to a similarity (and depth up to a scale, or
scale and shift); metrics must factor that out first or they measure the gauge, not the
geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrsub.errors import ConfigError

DEPTH_ALIGN_MODES = ("none", "median", "lsq", "scale_shift")


@dataclass(frozen=True)
class Sim3:
    """x -> scale * rotation @ x + translation; rotation is proper (det +1)."""

    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Transform points [..., 3]."""
        return self.scale * points @ self.rotation.transpose(-1, -2) + self.translation

    def rotate(self, vectors: torch.Tensor) -> torch.Tensor:
        """Rotate direction vectors [..., 3] (normals), which ignore scale and translation."""
        return vectors @ self.rotation.transpose(-1, -2)


def _check_points(x: torch.Tensor, name: str) -> None:
    """Point sets are [N, 3]; anything else is a caller bug worth naming."""
    if x.ndim != 2 or x.shape[-1] != 3:
        raise ConfigError(f"{name} must have shape [N, 3], got {tuple(x.shape)}")


def umeyama(
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None = None,
    with_scale: bool = True,
) -> Sim3:
    """Least-squares similarity mapping corresponding points src [N, 3] onto dst [N, 3].

    Umeyama (1991): the SVD of the weighted cross-covariance, with the last singular direction
    flipped when needed so the result is a rotation, never a reflection. Solved in float64 and
    returned in the input dtype, because covariance sums lose digits fast in float32.
    """
    _check_points(src, "src")
    _check_points(dst, "dst")
    if src.shape != dst.shape:
        raise ConfigError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must match")
    dtype = src.dtype
    s64, d64 = src.double(), dst.double()
    w = torch.ones(len(src), dtype=torch.float64, device=src.device)
    if weights is not None:
        if weights.shape != (len(src),):
            raise ConfigError(f"weights must have shape [{len(src)}], got {tuple(weights.shape)}")
        if bool((weights < 0).any()):
            raise ConfigError("weights must be non-negative")
        w = weights.double()
    if int((w > 0).sum()) < 3:
        raise ConfigError(
            f"umeyama needs >= 3 points with positive weight, got {int((w > 0).sum())}"
        )
    w = w / w.sum()
    mu_s = (w[:, None] * s64).sum(0)
    mu_d = (w[:, None] * d64).sum(0)
    cs, cd = s64 - mu_s, d64 - mu_d
    cov = (w[:, None] * cd).T @ cs
    u, sv, vh = torch.linalg.svd(cov)
    fix = torch.ones(3, dtype=torch.float64, device=src.device)
    if float(torch.det(u) * torch.det(vh)) < 0:
        fix[2] = -1.0
    rot = u @ torch.diag(fix) @ vh
    var_s = (w * (cs * cs).sum(-1)).sum()
    scale = (sv * fix).sum() / var_s if with_scale and float(var_s) > 0 else torch.ones_like(var_s)
    trans = mu_d - scale * rot @ mu_s
    return Sim3(scale.to(dtype), rot.to(dtype), trans.to(dtype))


def nearest_neighbors(
    query: torch.Tensor, reference: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and index of each query point's nearest reference point (exact search).

    On the CPU a k-d tree (scipy) answers in O(N log M), with as many workers as torch has
    threads, so a trial keeps to its CPU budget; on an accelerator, where a brute-force matrix
    is cheap and a host copy is not, torch.cdist in row chunks of ``chunk`` (memory chunk x M).
    Either way the returned distances are computed from the matched pairs in the input dtype.
    """
    _check_points(query, "query")
    _check_points(reference, "reference")
    if len(reference) == 0:
        raise ConfigError("reference point set is empty")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    for x, name in ((query, "query"), (reference, "reference")):
        if not bool(torch.isfinite(x).all()):
            raise ConfigError(f"{name} points must be finite (mask NaN/inf points first)")
    if len(query) == 0:
        return query.new_zeros(0), torch.zeros(0, dtype=torch.long, device=query.device)
    if query.device.type == "cpu" and reference.device.type == "cpu":
        idx = _kdtree_nearest(query, reference)
    else:
        idx = _brute_nearest(query, reference, chunk)
    return (query - reference[idx]).norm(dim=-1), idx


def _kdtree_nearest(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from scipy.spatial import KDTree

    tree = KDTree(reference.detach().double().numpy())
    _, idx = tree.query(query.detach().double().numpy(), k=1,
                        workers=max(1, torch.get_num_threads()))
    return torch.from_numpy(idx).long()


def _brute_nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int) -> torch.Tensor:
    """Float32 cdist (twice as fast as float64) in row chunks, argmin per row."""
    q32, r32 = query.detach().float(), reference.detach().float()
    return torch.cat([
        torch.cdist(q32[start : start + chunk], r32).argmin(dim=1)
        for start in range(0, len(query), chunk)
    ])


def icp(
    src: torch.Tensor,
    dst: torch.Tensor,
    init: Sim3 | None = None,
    iterations: int = 20,
    with_scale: bool = True,
    max_distance: float | None = None,
    tol: float = 1e-7,
    chunk: int = 4096,
) -> Sim3:
    """Point-to-point ICP refining a Sim(3) from src [N, 3] to dst [M, 3] without correspondences.

    Each step re-matches transformed src points to their nearest dst point and re-solves
    Umeyama from the original src, so errors do not compound across iterations. Matches
    farther than ``max_distance`` (in dst units) are dropped.
    """
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    if max_distance is not None and max_distance <= 0:
        raise ConfigError(f"max_distance must be positive, got {max_distance}")
    _check_points(src, "src")
    _check_points(dst, "dst")
    eye = torch.eye(3, dtype=src.dtype, device=src.device)
    current = init or Sim3(src.new_ones(()), eye, src.new_zeros(3))
    previous = float("inf")
    for _ in range(iterations):
        dist, idx = nearest_neighbors(current.apply(src), dst, chunk)
        keep = (
            dist <= max_distance if max_distance is not None else torch.ones_like(dist, dtype=bool)
        )
        if int(keep.sum()) < 3:
            break
        current = umeyama(src[keep], dst[idx[keep]], with_scale=with_scale)
        err = float(dist[keep].mean())
        if abs(previous - err) < tol:
            break
        previous = err
    return current


def _masked(x: torch.Tensor, mask: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten [..., H, W] to [N, H*W] and zero invalid entries, so sums skip them."""
    if x.shape != mask.shape:
        raise ConfigError(f"{name} {tuple(x.shape)} and mask {tuple(mask.shape)} must match")
    if x.ndim < 2:
        raise ConfigError(f"{name} must be [..., H, W], got {tuple(x.shape)}")
    m = mask.reshape(-1, x.shape[-2] * x.shape[-1]).to(x.dtype)
    return x.reshape(m.shape) * m, m


def depth_scale(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, method: str = "lsq"
) -> torch.Tensor:
    """Per-image scale s [...] so that s * pred ≈ gt over valid pixels of [..., H, W] maps.

    "lsq" minimises the squared error (s = Σpg / Σp²); "median" is the robust ratio of medians
    common in monocular-depth evaluation. Images with no valid pixel get s = 1.
    """
    if method not in ("lsq", "median"):
        raise ConfigError(f"depth scale method must be 'lsq' or 'median', got {method!r}")
    p, m = _masked(pred, mask, "pred")
    g, _ = _masked(gt, mask, "gt")
    if method == "lsq":
        num, den = (p * g).sum(-1), (p * p).sum(-1)
        scale = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
    else:
        nan = torch.full_like(p, float("nan"))
        med_p = torch.where(m > 0, p, nan).nanmedian(-1).values
        med_g = torch.where(m > 0, g, nan).nanmedian(-1).values
        ok = (m.sum(-1) > 0) & (med_p.abs() > 0)
        scale = torch.where(ok, med_g / torch.where(ok, med_p, torch.ones_like(med_p)), 1.0)
    return scale.reshape(pred.shape[:-2])


def depth_scale_shift(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (s, b) minimising Σ(s·pred + b - gt)² over valid pixels of [..., H, W] maps.

    Solves the 2x2 normal equations in closed form; where they are singular (constant
    prediction, or fewer than two pixels) it falls back to scale-only with b = 0.
    """
    p, m = _masked(pred.double(), mask, "pred")
    g, _ = _masked(gt.double(), mask, "gt")
    n, sp, sg = m.sum(-1), p.sum(-1), g.sum(-1)
    spp, spg = (p * p).sum(-1), (p * g).sum(-1)
    det = spp * n - sp * sp
    ok = det.abs() > 1e-12 * (spp * n).clamp_min(1e-30)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = (spg * n - sp * sg) / safe
    shift = (spp * sg - sp * spg) / safe
    fallback = torch.where(spp > 0, spg / spp.clamp_min(1e-30), torch.ones_like(spp))
    scale = torch.where(ok, scale, fallback)
    shift = torch.where(ok, shift, torch.zeros_like(shift))
    shape = pred.shape[:-2]
    return scale.reshape(shape).to(pred.dtype), shift.reshape(shape).to(pred.dtype)


def align_depth(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, mode: str = "median"
) -> torch.Tensor:
    """pred [..., H, W] mapped onto gt's scale per image by ``mode`` (see DEPTH_ALIGN_MODES)."""
    if mode not in DEPTH_ALIGN_MODES:
        raise ConfigError(f"depth align mode must be one of {DEPTH_ALIGN_MODES}, got {mode!r}")
    if mode == "none":
        return pred
    if mode == "scale_shift":
        scale, shift = depth_scale_shift(pred, gt, mask)
        return pred * scale[..., None, None] + shift[..., None, None]
    return pred * depth_scale(pred, gt, mask, mode)[..., None, None]
