"""Evaluation metrics of the paper's tables: depth, point clouds and camera poses.

Every metric first removes what a feed-forward model cannot know (depth scale, the Sim(3)
gauge of a reconstruction, the world frame of the cameras), so numbers compare geometry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from attrsub.errors import ConfigError
from attrsub.eval.align import DEPTH_ALIGN_MODES, align_depth, icp, nearest_neighbors, umeyama
from attrsub.model.pose import (
    depth_to_world_points,
    pairwise_pose_errors,
    pose_encoding_to_extrinsics_intrinsics,
)

POINT_SOURCES = ("auto", "world_points", "depth")
NAN = float("nan")


def depth_metrics(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, align: str = "median"
) -> dict[str, float]:
    """AbsRel and delta<1.25 of depth maps [..., H, W], per image then averaged over images.

    ``align`` is one of "none", "median", "lsq", "scale_shift" (per image). Images without a
    valid pixel are skipped; if none is left both values are NaN.
    """
    if align not in DEPTH_ALIGN_MODES:
        raise ConfigError(f"depth align must be one of {DEPTH_ALIGN_MODES}, got {align!r}")
    if pred.shape != gt.shape or gt.shape != valid.shape:
        raise ConfigError(
            f"depth shapes differ: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, "
            f"valid {tuple(valid.shape)}"
        )
    pred, gt = pred.double(), gt.double()
    mask = valid.bool() & (gt > 0) & torch.isfinite(gt) & torch.isfinite(pred)
    aligned = align_depth(pred, gt, mask, align)
    hw = gt.shape[-2] * gt.shape[-1]
    m = mask.reshape(-1, hw).double()
    g = torch.where(mask, gt, 1.0).reshape(-1, hw)
    p = torch.where(mask, aligned, 1.0).reshape(-1, hw)
    count = m.sum(-1)
    used = count > 0
    if not bool(used.any()):
        return {"depth_absrel": NAN, "depth_delta1": NAN}
    absrel = ((p - g).abs() / g * m).sum(-1) / count.clamp_min(1)
    pc = p.clamp_min(1e-12)
    ratio = torch.maximum(pc / g, g / pc)
    delta1 = ((ratio < 1.25).double() * m).sum(-1) / count.clamp_min(1)
    return {
        "depth_absrel": float(absrel[used].mean()),
        "depth_delta1": float(delta1[used].mean()),
    }


def point_map_normals(
    points: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normals [..., H, W, 3] of a point map from its image-grid neighbours.

    Central differences (right - left) x (down - up); a normal is valid where the pixel and its
    four neighbours are valid and the cross product is not degenerate: the two differences
    are non-zero and not parallel (|dx x dy| > 1e-9 |dx| |dy|, a test that does not depend on
    the map's scale, which a prediction up to scale may make tiny). Border pixels have none.
    Sign is arbitrary, which is why normal consistency uses |cos|.
    """
    if points.shape[:-1] != valid.shape or points.shape[-1] != 3:
        raise ConfigError(f"points {tuple(points.shape)} must be valid {tuple(valid.shape)} + (3,)")
    h, w = valid.shape[-2:]
    normals = torch.zeros_like(points)
    ok = torch.zeros_like(valid, dtype=torch.bool)
    if h < 3 or w < 3:
        return normals, ok
    v = valid.bool()
    dx = points[..., 1:-1, 2:, :] - points[..., 1:-1, :-2, :]
    dy = points[..., 2:, 1:-1, :] - points[..., :-2, 1:-1, :]
    n = torch.linalg.cross(dx, dy, dim=-1)
    length = n.norm(dim=-1)
    scale = dx.norm(dim=-1) * dy.norm(dim=-1)
    inner = (
        v[..., 1:-1, 1:-1]
        & v[..., 1:-1, 2:]
        & v[..., 1:-1, :-2]
        & v[..., 2:, 1:-1]
        & v[..., :-2, 1:-1]
        & (length > 1e-9 * scale)
        & (scale > 0)
    )
    normals[..., 1:-1, 1:-1, :] = n / length.clamp_min(torch.finfo(n.dtype).tiny)[..., None]
    ok[..., 1:-1, 1:-1] = inner
    return normals, ok


def _abs_cos(
    n_a: torch.Tensor | None, n_b: torch.Tensor | None, idx: torch.Tensor
) -> torch.Tensor | None:
    """|cos| between each a-normal and its matched b normal; pairs with a NaN normal dropped."""
    if n_a is None or n_b is None:
        return None
    cos = (n_a * n_b[idx]).sum(-1).abs()
    return cos[torch.isfinite(cos)]


def cloud_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    pred_normals: torch.Tensor | None = None,
    gt_normals: torch.Tensor | None = None,
    chunk: int = 2048,
) -> dict[str, float]:
    """Accuracy, completeness and normal consistency of clouds pred [N, 3] and gt [M, 3].

    pc_acc: mean distance pred -> nearest gt; pc_comp: gt -> nearest pred; pc_nc: mean |cos|
    between normals of nearest-neighbour matches, averaged over both directions (normals that
    are NaN are left out). Without normals pc_nc is NaN.
    """
    if len(pred) == 0 or len(gt) == 0:
        return {"pc_acc": NAN, "pc_comp": NAN, "pc_nc": NAN}
    d_acc, i_acc = nearest_neighbors(pred, gt, chunk)
    d_comp, i_comp = nearest_neighbors(gt, pred, chunk)
    nc = NAN
    cos_a = _abs_cos(pred_normals, gt_normals, i_acc)
    cos_c = _abs_cos(gt_normals, pred_normals, i_comp)
    if cos_a is not None and cos_c is not None:
        means = [float(c.mean()) for c in (cos_a, cos_c) if c.numel() > 0]
        nc = sum(means) / len(means) if means else NAN
    return {"pc_acc": float(d_acc.mean()), "pc_comp": float(d_comp.mean()), "pc_nc": nc}


def pointmap_metrics(
    pred_points: torch.Tensor,
    gt_points: torch.Tensor,
    valid: torch.Tensor,
    *,
    pred_normals: torch.Tensor | None = None,
    gt_normals: torch.Tensor | None = None,
    align: bool = True,
    use_icp: bool = False,
    max_points: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Acc / Comp / NC of one scene's point maps [..., H, W, 3] over ``valid`` pixels.

    With ``align`` the prediction is first mapped onto the ground truth by the Umeyama Sim(3)
    of their pixel correspondences (optionally refined by ICP), so scores are in GT units.
    Normals default to grid normals of each map. Each cloud is subsampled to ``max_points``
    with a generator seeded by ``seed``, so repeated evaluations agree exactly.
    """
    if pred_points.shape != gt_points.shape or pred_points.shape[:-1] != valid.shape:
        raise ConfigError(
            f"point map shapes differ: pred {tuple(pred_points.shape)}, gt "
            f"{tuple(gt_points.shape)}, valid {tuple(valid.shape)}"
        )
    if max_points < 1:
        raise ConfigError(f"max_points must be >= 1, got {max_points}")
    pred_points, gt_points = pred_points.double(), gt_points.double()
    mask = valid.bool() & torch.isfinite(pred_points).all(-1) & torch.isfinite(gt_points).all(-1)
    if pred_normals is None:
        pred_normals, pn_ok = point_map_normals(pred_points, mask)
    else:
        pn_ok = torch.isfinite(pred_normals).all(-1)
    if gt_normals is None:
        gt_normals, gn_ok = point_map_normals(gt_points, mask)
    else:
        gn_ok = torch.isfinite(gt_normals).all(-1)
    nan3 = torch.full_like(pred_points, NAN)
    pn = torch.where(pn_ok[..., None], pred_normals.double(), nan3)[mask]
    gn = torch.where(gn_ok[..., None], gt_normals.double(), nan3)[mask]
    p, g = pred_points[mask], gt_points[mask]
    if len(p) < 3:
        return {"pc_acc": NAN, "pc_comp": NAN, "pc_nc": NAN}
    sim = umeyama(p, g) if align else None
    gen = torch.Generator().manual_seed(seed)
    ip = torch.randperm(len(p), generator=gen)[:max_points].to(p.device)
    ig = torch.randperm(len(g), generator=gen)[:max_points].to(g.device)
    p, pn, g, gn = p[ip], pn[ip], g[ig], gn[ig]
    if use_icp:
        sim = icp(p, g, init=sim)
    if sim is not None:
        p, pn = sim.apply(p), sim.rotate(pn)
    return cloud_metrics(p, g, pn, gn)


def pose_auc(rot_err: torch.Tensor, trans_err: torch.Tensor, max_threshold: int = 30) -> float:
    """Area under the accuracy curve of max(rot, trans) error at thresholds 1..max degrees.

    Matches VGGT's / PoseDiffusion's histogram version: the mean over t = 1..max of the
    fraction of pairs with error < t (the last bin, as in np.histogram, includes t = max).
    Non-finite errors count as failures.
    """
    if max_threshold < 1:
        raise ConfigError(f"max_threshold must be >= 1, got {max_threshold}")
    err = torch.maximum(rot_err.reshape(-1), trans_err.reshape(-1)).double()
    if err.numel() == 0:
        return NAN
    thresholds = torch.arange(1, max_threshold + 1, dtype=torch.float64, device=err.device)
    below = err[None, :] < thresholds[:, None]
    below[-1] = err <= max_threshold
    below = below & (err >= 0)[None, :]
    return float(below.double().mean(-1).mean())


def camera_metrics(
    pred_extrinsics: torch.Tensor,
    gt_extrinsics: torch.Tensor,
    threshold: float = 15.0,
    auc_max: int = 30,
) -> dict[str, float]:
    """RRA@t, RTA@t and AUC@auc_max over all frame pairs of every sequence [B, S, 3, 4].

    Errors of all pairs of all sequences are pooled, as VGGT pools them per category.
    With one frame there are no pairs and every value is NaN.
    """
    if threshold <= 0:
        raise ConfigError(f"threshold must be positive, got {threshold}")
    rot, trans = pairwise_pose_errors(pred_extrinsics.double(), gt_extrinsics.double())
    t = f"{threshold:g}"
    keys = (f"cam_rra{t}", f"cam_rta{t}", f"cam_auc{auc_max}")
    if rot.numel() == 0:
        return dict.fromkeys(keys, NAN)
    return {
        keys[0]: float((rot < threshold).double().mean()),
        keys[1]: float((trans < threshold).double().mean()),
        keys[2]: pose_auc(rot, trans, auc_max),
    }


def evaluate_batch(
    pred: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    *,
    depth_align: str = "median",
    pc_align: bool = True,
    pc_icp: bool = False,
    points_from: str = "auto",
    max_points: int = 5000,
    seed: int = 0,
    threshold: float = 15.0,
    auc_max: int = 30,
) -> dict[str, float]:
    """All metrics of one batch by name; a metric whose inputs are missing is NaN.

    Keys (defaults): depth_absrel, depth_delta1, pc_acc, pc_comp, pc_nc, cam_rra15,
    cam_rta15, cam_auc30. Depth is averaged over images; point-cloud metrics are computed per
    sequence and averaged; camera errors are pooled over all pairs. ``points_from`` picks the
    predicted cloud: the point head ("world_points"), the depth head unprojected with the
    predicted cameras ("depth"), or the point head when present ("auto").
    """
    if points_from not in POINT_SOURCES:
        raise ConfigError(f"points_from must be one of {POINT_SOURCES}, got {points_from!r}")
    out: dict[str, float] = {"depth_absrel": NAN, "depth_delta1": NAN}
    out.update({"pc_acc": NAN, "pc_comp": NAN, "pc_nc": NAN})
    t = f"{threshold:g}"
    out.update({f"cam_rra{t}": NAN, f"cam_rta{t}": NAN, f"cam_auc{auc_max}": NAN})
    missing = [k for k in ("images", "depths", "valid") if k not in batch]
    if missing:
        raise ConfigError(f"batch lacks {missing} (keys: {sorted(batch)})")
    valid = batch["valid"].bool() & (batch["depths"] > 0)
    with torch.no_grad():
        if "depth" in pred:
            depth = pred["depth"].detach().float()
            depth = depth[..., 0] if depth.ndim == 5 else depth
            out.update(depth_metrics(depth, batch["depths"], valid, depth_align))
        image_hw = batch["images"].shape[-2:]
        if "pose_enc" in pred and "extrinsics" in batch:
            extr, _ = pose_encoding_to_extrinsics_intrinsics(pred["pose_enc"].double(), image_hw)
            out.update(camera_metrics(extr, batch["extrinsics"], threshold, auc_max))
        points = _predicted_points(pred, points_from, image_hw)
        if points is not None and "world_points" in batch:
            scores = [
                pointmap_metrics(
                    points[b],
                    batch["world_points"][b],
                    valid[b],
                    align=pc_align,
                    use_icp=pc_icp,
                    max_points=max_points,
                    seed=seed,
                )
                for b in range(points.shape[0])
            ]
            for key in ("pc_acc", "pc_comp", "pc_nc"):
                vals = [s[key] for s in scores if math.isfinite(s[key])]
                out[key] = sum(vals) / len(vals) if vals else NAN
    return out


def _predicted_points(
    pred: Mapping[str, torch.Tensor], points_from: str, image_hw: torch.Size
) -> torch.Tensor | None:
    """The predicted world point maps [B, S, H, W, 3] chosen by ``points_from``, if available."""
    if points_from in ("auto", "world_points") and "world_points" in pred:
        return pred["world_points"].detach().double()
    if points_from == "world_points" or "depth" not in pred or "pose_enc" not in pred:
        return None
    depth = pred["depth"].detach().double()
    depth = depth[..., 0] if depth.ndim == 5 else depth
    extr, intr = pose_encoding_to_extrinsics_intrinsics(pred["pose_enc"].double(), image_hw)
    return depth_to_world_points(depth, extr, intr)
