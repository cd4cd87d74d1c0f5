"""Training losses as VGGT fine-tuning computes them: camera L1, confident depth and points.

Ground truth is first normalised (first camera as world, scene scaled to unit mean point
distance) because the model predicts in that gauge; the heads are scored there, so a loss
value means the same thing for a room and for a tabletop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from attrsub.errors import ConfigError
from attrsub.model.pose import (
    compose_extrinsics,
    extrinsics_intrinsics_to_pose_encoding,
    invert_extrinsics,
)

GRADIENT_KINDS = ("none", "grad", "normal")
_HARD_MAX = 100.0
_QUANTILE_MIN_ELEMENTS = 1000
_DEPTH_GRAD_SCALES = 4
_POINT_GRAD_SCALES = 3


@dataclass(frozen=True)
class LossWeights:
    """Weights and settings of the multi-task loss; defaults are the paper's downstream runs.

    camera, depth, point: task weights (a task with weight 0 is skipped, so its head may be off).
    gradient: weight of the multi-scale gradient term inside the depth and point losses.
    conf_alpha: weight of -log(conf), which stops the confidence collapsing to zero.
    stage_gamma: refinement stage i of n counts gamma^(n-i-1), so the last stage weighs 1.
    trans, rot, fov: weights of the pose-encoding parts (VGGT: 1, 1, 0.5).
    valid_range: quantile above which per-pixel losses are dropped as outliers (1.0: keep all).
    depth_gradient, point_gradient: "grad" (L1 on differences), "normal" (surface normals) or
    "none"; grad_conf weights the gradient term by confidence too (VGGT's default does not).
    min_valid_pixels: a sequence with fewer valid pixels has no trustworthy scale and is skipped.
    normalize_gt: scale ground truth by the mean point distance as VGGT does.
    """

    camera: float = 5.0
    depth: float = 1.0
    point: float = 0.0
    gradient: float = 1.0
    conf_alpha: float = 0.2
    stage_gamma: float = 0.6
    trans: float = 1.0
    rot: float = 1.0
    fov: float = 0.5
    valid_range: float = 0.98
    depth_gradient: str = "grad"
    point_gradient: str = "normal"
    grad_conf: bool = False
    min_valid_pixels: int = 16
    normalize_gt: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", float) and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"LossWeights.{f.name} must be a finite number >= 0, got {value!r}"
                )
        if not 0 < self.stage_gamma <= 1:
            raise ConfigError(
                f"LossWeights.stage_gamma must be in (0, 1], got {self.stage_gamma!r}"
            )
        if not 0 < self.valid_range <= 1:
            raise ConfigError(
                f"LossWeights.valid_range must be in (0, 1], got {self.valid_range!r}"
            )
        for name in ("depth_gradient", "point_gradient"):
            kind = getattr(self, name)
            if kind not in GRADIENT_KINDS:
                raise ConfigError(
                    f"LossWeights.{name} must be one of {GRADIENT_KINDS}, got {kind!r}"
                )
        if isinstance(self.min_valid_pixels, bool) or not isinstance(self.min_valid_pixels, int):
            raise ConfigError(
                f"LossWeights.min_valid_pixels must be an int, got {self.min_valid_pixels!r}"
            )
        if self.min_valid_pixels < 1:
            raise ConfigError(
                f"LossWeights.min_valid_pixels must be >= 1, got {self.min_valid_pixels}"
            )
        if self.camera + self.depth + self.point == 0:
            raise ConfigError("LossWeights: camera, depth and point are all 0; nothing would train")

    @property
    def heads(self) -> tuple[str, ...]:
        """The model heads this loss reads (weight > 0): the rest need not run in training."""
        return tuple(h for h in ("camera", "depth", "point") if getattr(self, h) > 0)


def _finite(x: torch.Tensor, hard_max: float | None = _HARD_MAX) -> torch.Tensor:
    """Replace NaN/inf by 0 and clamp, as VGGT does, so one bad pixel cannot poison a step."""
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    return x.clamp(-hard_max, hard_max) if hard_max is not None else x


def _get(mapping: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """A required entry, or ConfigError naming the missing key."""
    if key not in mapping:
        raise ConfigError(f"{what} has no {key!r} (keys: {sorted(mapping)})")
    return mapping[key]


def valid_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Pixels with usable ground truth: flagged valid, positive finite depth, finite points."""
    mask = _get(batch, "valid", "batch").bool()
    depths = _get(batch, "depths", "batch")
    mask = mask & torch.isfinite(depths) & (depths > 0)
    if "world_points" in batch:
        mask = mask & torch.isfinite(batch["world_points"]).all(-1)
    return mask


def normalize_ground_truth(
    batch: Mapping[str, torch.Tensor], mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Extrinsics, depths and world points in VGGT's training gauge, plus the per-scene scale.

    The world becomes the first camera, and each sequence is divided by the mean distance of
    its valid world points to that camera's centre. A sequence without valid points keeps
    scale 1 (VGGT would divide by its 1e-6 floor and blow the scene up).
    """
    extr = _get(batch, "extrinsics", "batch").float()
    first_inv = invert_extrinsics(extr[:, :1])
    extr = compose_extrinsics(extr, first_inv)
    depths = _get(batch, "depths", "batch").float()
    points = batch.get("world_points")
    out: dict[str, torch.Tensor] = {}
    if points is not None:
        first = _get(batch, "extrinsics", "batch").float()[:, 0]
        points = points.float() @ first[:, None, None, :3, :3].transpose(-1, -2)
        points = points + first[:, None, None, None, :3, 3]
    m = mask.float()
    if points is not None:
        dist = torch.where(mask, points.norm(dim=-1), torch.zeros_like(m))
    else:
        dist = torch.zeros_like(m)
    count = m.sum(dim=(1, 2, 3))
    scale = torch.where(count > 0, dist.sum(dim=(1, 2, 3)) / count.clamp_min(1), 1.0)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    extr = torch.cat([extr[..., :3], extr[..., 3:] / scale[:, None, None, None]], -1)
    out["extrinsics"] = extr
    out["depths"] = torch.where(mask, depths, torch.zeros_like(depths)) / scale[:, None, None, None]
    if points is not None:
        points = torch.where(mask[..., None], points, torch.zeros_like(points))
        out["world_points"] = points / scale[:, None, None, None, None]
    out["scale"] = scale
    return out


def stage_weights(num_stages: int, gamma: float) -> list[float]:
    """gamma^(n-i-1) for stages i = 0..n-1: later refinement stages count more."""
    return [gamma ** (num_stages - i - 1) for i in range(num_stages)]


def camera_loss(
    pose_enc_list: list[torch.Tensor],
    gt_pose_enc: torch.Tensor,
    seq_valid: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """L1 on translation, quaternion and FoV, stage-weighted and averaged over the stages.

    VGGT found L1 more stable than the paper's smooth L1; translation errors are clamped at
    100 per element. Sequences in ``seq_valid`` [B] == False contribute nothing.
    """
    n = len(pose_enc_list)
    if n == 0:
        raise ConfigError("pose_enc_list is empty; the camera head produced no stage")
    parts = {"loss_T": 0.0, "loss_R": 0.0, "loss_FL": 0.0}
    acc: dict[str, torch.Tensor] = {}
    for w_stage, pred in zip(stage_weights(n, weights.stage_gamma), pose_enc_list, strict=True):
        if pred.shape != gt_pose_enc.shape:
            raise ConfigError(
                f"pose encoding shape {tuple(pred.shape)} != ground truth "
                f"{tuple(gt_pose_enc.shape)}"
            )
        pred = pred.float()
        if not bool(seq_valid.any()):
            zero = (pred * 0).mean()
            stage = {k: zero for k in parts}
        else:
            diff = (pred[seq_valid] - gt_pose_enc[seq_valid]).abs()
            stage = {
                "loss_T": _finite(diff[..., :3]).clamp(max=_HARD_MAX).mean(),
                "loss_R": _finite(diff[..., 3:7]).mean(),
                "loss_FL": _finite(diff[..., 7:]).mean(),
            }
        for k, v in stage.items():
            acc[k] = acc[k] + w_stage * v if k in acc else w_stage * v
    out = {k: v / n for k, v in acc.items()}
    out["loss_camera"] = (
        weights.trans * out["loss_T"] + weights.rot * out["loss_R"] + weights.fov * out["loss_FL"]
    )
    return out


def _quantile_filter(loss: torch.Tensor, valid_range: float) -> torch.Tensor:
    """Drop the per-pixel losses above the ``valid_range`` quantile (outliers), as VGGT does.

    Values are first clamped at 100; filtering only happens with more than 1000 elements, so
    tiny images are never reduced to a handful of pixels.
    """
    if valid_range >= 1 or loss.numel() <= _QUANTILE_MIN_ELEMENTS:
        return loss
    loss = loss.clamp(max=_HARD_MAX)
    k = round(valid_range * (loss.numel() - 1)) + 1
    thresh = min(float(loss.detach().kthvalue(k).values), _HARD_MAX)
    keep = loss < thresh
    return loss[keep] if int(keep.sum()) > _QUANTILE_MIN_ELEMENTS else loss


def _gradient_term(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    conf: torch.Tensor | None,
    alpha: float,
) -> torch.Tensor:
    """L1 on horizontal and vertical differences of the error map (pred - gt), per channel.

    Penalises a wrong *shape* even where the absolute offset is right. Inputs [N, H, W, C],
    mask [N, H, W]; normalised by the number of valid entries.
    """
    m = mask[..., None].to(pred.dtype).expand_as(pred)
    diff = (pred - gt) * m
    total = pred.new_zeros(())
    for dim in (1, 2):
        n = diff.shape[dim]
        if n < 2:
            continue
        g = (diff.narrow(dim, 1, n - 1) - diff.narrow(dim, 0, n - 1)).abs()
        pair = m.narrow(dim, 1, n - 1) * m.narrow(dim, 0, n - 1)
        g = (g * pair).clamp(max=_HARD_MAX)
        if conf is not None:
            c = conf[..., None].expand_as(pred).narrow(dim, 1, n - 1)
            g = (g * c - alpha * torch.log(c)) * pair
        total = total + g.sum()
    count = m.sum()
    return total / count if float(count) > 0 else pred.new_zeros(())


def _grid_normals(points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four normals per pixel from the cross products of its up/left/down/right neighbours.

    Returns normals [4, N, H, W, 3] and validity [4, N, H, W] (centre and both neighbours valid).
    """
    pts = F.pad(points.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    pm = F.pad(mask.float(), (1, 1, 1, 1)) > 0
    c = pts[:, 1:-1, 1:-1]
    dirs = [
        pts[:, :-2, 1:-1] - c,  # up
        pts[:, 1:-1, :-2] - c,  # left
        pts[:, 2:, 1:-1] - c,  # down
        pts[:, 1:-1, 2:] - c,  # right
    ]
    vm = [pm[:, :-2, 1:-1], pm[:, 1:-1, :-2], pm[:, 2:, 1:-1], pm[:, 1:-1, 2:]]
    centre = pm[:, 1:-1, 1:-1]
    normals = [torch.linalg.cross(dirs[i], dirs[(i + 1) % 4], dim=-1) for i in range(4)]
    valids = [vm[i] & vm[(i + 1) % 4] & centre for i in range(4)]
    return F.normalize(torch.stack(normals), dim=-1, eps=1e-8), torch.stack(valids)


def _normal_term(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    conf: torch.Tensor | None,
    alpha: float,
) -> torch.Tensor:
    """1 - cos between predicted and true surface normals of point maps [N, H, W, 3]."""
    pn, pv = _grid_normals(pred, mask)
    gn, gv = _grid_normals(gt, mask)
    ok = pv & gv
    if int(ok.sum()) < 10:
        return (pred * 0).sum()
    cos = (pn[ok] * gn[ok]).sum(-1).clamp(-1 + 1e-8, 1 - 1e-8)
    loss = _finite(1 - cos)
    if conf is not None:
        c = conf[None].expand(4, -1, -1, -1)[ok]
        loss = loss * c - alpha * torch.log(c)
    return loss.mean()


def regression_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    conf: torch.Tensor,
    weights: LossWeights,
    gradient: str,
    scales: int,
) -> dict[str, torch.Tensor]:
    """Confidence-aware regression on maps [B, S, H, W, C] with conf and mask [B, S, H, W].

    conf: ||pred - gt|| * c - alpha * log(c) over valid pixels (the network learns where it
    can be trusted); reg: the plain ||pred - gt||; grad: the multi-scale gradient or normal
    term. VGGT's objective is their sum, with reg kept in it.
    """
    b, s, h, w, ch = pred.shape
    pred = pred.float()
    # A diverged pixel is dropped, and zeroed so NaN cannot leak through masked products.
    finite = torch.isfinite(pred).all(-1)
    mask = mask & finite
    pred = torch.where(finite[..., None], pred, torch.zeros_like(pred))
    conf = torch.where(torch.isfinite(conf), conf.float(), 1.0).clamp_min(1e-6)
    reg = _finite(torch.linalg.vector_norm(gt[mask] - pred[mask], dim=-1))
    conf_loss = _finite(reg * conf[mask] - weights.conf_alpha * torch.log(conf[mask]))
    if reg.numel() == 0:
        zero = (pred * 0).sum()
        return {"conf": zero, "reg": zero, "grad": zero}
    conf_loss = _finite(_quantile_filter(conf_loss, weights.valid_range)).mean()
    reg_loss = _finite(_quantile_filter(reg, weights.valid_range)).mean()
    grad_loss = (pred * 0).sum()
    if gradient != "none" and weights.gradient > 0:
        term: Callable[..., torch.Tensor] = _gradient_term if gradient == "grad" else _normal_term
        p2 = pred.reshape(b * s, h, w, ch)
        g2 = gt.reshape(b * s, h, w, ch)
        m2 = mask.reshape(b * s, h, w)
        c2 = conf.reshape(b * s, h, w) if weights.grad_conf else None
        for k in range(scales):
            step = 2**k
            sub_c = c2[:, ::step, ::step] if c2 is not None else None
            grad_loss = grad_loss + term(
                p2[:, ::step, ::step],
                g2[:, ::step, ::step],
                m2[:, ::step, ::step],
                sub_c,
                weights.conf_alpha,
            )
        grad_loss = grad_loss / scales
    return {"conf": conf_loss, "reg": reg_loss, "grad": grad_loss}


def compute_loss(
    pred: Mapping[str, torch.Tensor | list[torch.Tensor]],
    batch: Mapping[str, torch.Tensor],
    weights: LossWeights | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss and its parts (as floats, for logging).

    total = camera * loss_camera + depth * (conf + reg + gradient * grad)_depth
            + point * (conf + reg + gradient * grad)_point
    Tasks with weight 0 are not computed. Finite and connected to the predictions even for
    a batch with no valid pixel (then the task terms are 0); invalid ground truth is masked
    away, but a non-finite prediction makes the total NaN, so a diverged model surfaces
    (the training loop stops on it) instead of being silently masked.
    """
    weights = weights or LossWeights()
    mask = valid_mask(batch)
    if weights.normalize_gt:
        gt = normalize_ground_truth(batch, mask)
    else:
        gt = {k: batch[k].float() for k in ("extrinsics", "depths", "world_points") if k in batch}
    seq_valid = mask.sum(dim=(1, 2, 3)) >= weights.min_valid_pixels
    frame_mask = mask & seq_valid[:, None, None, None]
    total: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = {}
    used: list[torch.Tensor] = []

    def add(term: torch.Tensor, w: float) -> None:
        nonlocal total
        total = w * term if total is None else total + w * term

    if weights.camera > 0:
        stages = pred.get("pose_enc_list") or [_get(pred, "pose_enc", "predictions")]
        images = _get(batch, "images", "batch")
        gt_enc = extrinsics_intrinsics_to_pose_encoding(
            gt["extrinsics"], _get(batch, "intrinsics", "batch").float(), images.shape[-2:]
        )
        used += list(stages)
        cam = camera_loss(list(stages), gt_enc, seq_valid, weights)
        parts.update(cam)
        add(cam["loss_camera"], weights.camera)
    for task, key, gt_key, kind, scales in (
        ("depth", "depth", "depths", weights.depth_gradient, _DEPTH_GRAD_SCALES),
        ("point", "world_points", "world_points", weights.point_gradient, _POINT_GRAD_SCALES),
    ):
        w_task = getattr(weights, task)
        if w_task == 0:
            continue
        p = _get(pred, key, "predictions")
        c = _get(pred, f"{key}_conf", "predictions")
        g = _get(gt, gt_key, "ground truth")
        used.append(p)
        if task == "depth":
            g = g[..., None]
            p = p if p.ndim == 5 else p[..., None]
        if p.shape != g.shape:
            raise ConfigError(f"predicted {key} {tuple(p.shape)} != ground truth {tuple(g.shape)}")
        r = regression_loss(p, g, frame_mask, c, weights, kind, scales)
        parts.update({f"loss_{name}_{task}": v for name, v in r.items()})
        add(r["conf"] + r["reg"] + weights.gradient * r["grad"], w_task)
    assert total is not None  # guaranteed by LossWeights validation
    if not all(bool(torch.isfinite(t).all()) for t in used):
        total = total + float("nan")
    parts["loss_total"] = total
    return total, {k: float(v.detach()) for k, v in parts.items()}
