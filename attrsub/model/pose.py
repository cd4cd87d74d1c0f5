"""Camera poses: VGGT's absT_quaR_FoV encoding, relative poses and angular pose errors.

Conventions follow VGGT so its released weights and our heads speak the same language:
extrinsics are OpenCV camera-from-world [R|t] (x right, y down, z forward), quaternions are
scalar-last (x, y, z, w) with w >= 0, and the encoding is [t (3), quaternion (4), fov_h, fov_w].
"""

from __future__ import annotations

import torch

from attrsub.errors import ConfigError

POSE_ENCODING_DIM = 9


def _check_last_dims(x: torch.Tensor, dims: tuple[int, ...], name: str) -> None:
    """Reject a tensor whose trailing shape is not ``dims``, naming it and its shape."""
    if x.ndim < len(dims) or tuple(x.shape[-len(dims) :]) != dims:
        raise ConfigError(f"{name} must have trailing shape {dims}, got {tuple(x.shape)}")


def _check_image_hw(image_hw: tuple[int, int] | torch.Size) -> tuple[int, int]:
    """Image size as two positive ints; the FoV <-> focal conversion needs both."""
    hw = tuple(int(v) for v in image_hw)
    if len(hw) != 2 or min(hw) <= 0:
        raise ConfigError(f"image_hw must be (height, width) with positive sizes, got {image_hw!r}")
    return hw[0], hw[1]


def quaternion_to_rotation_matrix(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from scalar-last quaternions [..., 4].

    The quaternion need not be unit length: dividing by its squared norm lets a network's raw
    output be used directly, as VGGT does.
    """
    _check_last_dims(quat, (4,), "quat")
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1).clamp_min(1e-12)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, -1).reshape(*quat.shape[:-1], 3, 3)


def rotation_matrix_to_quaternion(rot: torch.Tensor) -> torch.Tensor:
    """Unit scalar-last quaternions [..., 4] with w >= 0 from rotation matrices [..., 3, 3].

    Each of the four algebraically equivalent formulas divides by a different component; the
    one with the largest component (always >= 1/2) is picked, so no division is ill-conditioned.
    """
    _check_last_dims(rot, (3, 3), "rot")
    m = rot.reshape(*rot.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    four_sq = torch.stack(
        [1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + m00 + m11 + m22], -1
    )  # 4x^2, 4y^2, 4z^2, 4w^2
    big = four_sq.clamp_min(1e-8).sqrt()  # 2|x|, 2|y|, 2|z|, 2|w|
    d = 2.0 * big.clamp_min(0.1)
    cand = torch.stack(
        [
            torch.stack([big[..., 0] ** 2, m01 + m10, m02 + m20, m21 - m12], -1) / d[..., 0:1],
            torch.stack([m01 + m10, big[..., 1] ** 2, m12 + m21, m02 - m20], -1) / d[..., 1:2],
            torch.stack([m02 + m20, m12 + m21, big[..., 2] ** 2, m10 - m01], -1) / d[..., 2:3],
            torch.stack([m21 - m12, m02 - m20, m10 - m01, big[..., 3] ** 2], -1) / d[..., 3:4],
        ],
        -2,
    )  # [..., 4 candidates, 4 components]
    best = four_sq.argmax(-1)[..., None, None].expand(*four_sq.shape[:-1], 1, 4)
    quat = torch.gather(cand, -2, best).squeeze(-2)
    quat = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(quat[..., 3:4] < 0, -quat, quat)


def extrinsics_intrinsics_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """VGGT's absT_quaR_FoV encoding [..., 9] of camera-from-world [..., 3, 4] and K [..., 3, 3].

    Keeps the input dtype (VGGT casts to float32) so round trips can be checked in float64.
    """
    _check_last_dims(extrinsics, (3, 4), "extrinsics")
    _check_last_dims(intrinsics, (3, 3), "intrinsics")
    h, w = _check_image_hw(image_hw)
    quat = rotation_matrix_to_quaternion(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((h / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((w / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], -1)


def pose_encoding_to_extrinsics_intrinsics(
    pose_encoding: torch.Tensor, image_hw: tuple[int, int] | torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of the encoding: extrinsics [..., 3, 4] and K [..., 3, 3].

    The principal point is the image centre (W/2, H/2), as in VGGT; the encoding keeps none.
    """
    _check_last_dims(pose_encoding, (POSE_ENCODING_DIM,), "pose_encoding")
    h, w = _check_image_hw(image_hw)
    rot = quaternion_to_rotation_matrix(pose_encoding[..., 3:7])
    extrinsics = torch.cat([rot, pose_encoding[..., :3, None]], -1)
    fy = (h / 2) / torch.tan(pose_encoding[..., 7] / 2)
    fx = (w / 2) / torch.tan(pose_encoding[..., 8] / 2)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = (fx, zero, zero + w / 2, zero, fy, zero + h / 2, zero, zero, one)
    intrinsics = torch.stack(rows, -1).reshape(*fx.shape, 3, 3)
    return extrinsics, intrinsics


def invert_extrinsics(extrinsics: torch.Tensor) -> torch.Tensor:
    """[R|t]^-1 = [R^T | -R^T t] in closed form: exact and cheaper than a 4x4 inverse."""
    _check_last_dims(extrinsics, (3, 4), "extrinsics")
    rot_t = extrinsics[..., :3, :3].transpose(-1, -2)
    return torch.cat([rot_t, -(rot_t @ extrinsics[..., :3, 3:])], -1)


def compose_extrinsics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ∘ b for [..., 3, 4] rigid transforms (apply b first)."""
    _check_last_dims(a, (3, 4), "a")
    _check_last_dims(b, (3, 4), "b")
    rot = a[..., :3, :3] @ b[..., :3, :3]
    trans = a[..., :3, :3] @ b[..., :3, 3:] + a[..., :3, 3:]
    return torch.cat([rot, trans], -1)


def relative_pose(extrinsics_i: torch.Tensor, extrinsics_j: torch.Tensor) -> torch.Tensor:
    """Camera-i-from-camera-j transform E_i E_j^-1, the quantity VGGT's pose metrics compare."""
    return compose_extrinsics(extrinsics_i, invert_extrinsics(extrinsics_j))


def frame_pairs(num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j), i < j, of every unordered frame pair."""
    if num_frames < 0:
        raise ConfigError(f"num_frames must be >= 0, got {num_frames}")
    idx = torch.triu_indices(num_frames, num_frames, offset=1)
    return idx[0], idx[1]


def rotation_angle_deg(rot_a: torch.Tensor, rot_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotations [..., 3, 3].

    Uses atan2(|sin|, cos) of R_a^T R_b instead of acos of the trace: acos loses all precision
    near 0 degrees, which is exactly where good predictions live.
    """
    _check_last_dims(rot_a, (3, 3), "rot_a")
    _check_last_dims(rot_b, (3, 3), "rot_b")
    d = rot_a.transpose(-1, -2) @ rot_b
    cos = (d.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    axis = torch.stack(
        [d[..., 2, 1] - d[..., 1, 2], d[..., 0, 2] - d[..., 2, 0], d[..., 1, 0] - d[..., 0, 1]], -1
    )
    sin = axis.norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def translation_angle_deg(
    t_a: torch.Tensor, t_b: torch.Tensor, ambiguity: bool = True, eps: float = 1e-12
) -> torch.Tensor:
    """Angle in degrees between translation directions [..., 3].

    With ``ambiguity`` the sign is ignored (min(θ, 180 - θ)), as in VGGT's and PoseDiffusion's
    evaluation. A zero-length vector has no direction and scores 90 degrees (the worst with
    ``ambiguity``), matching VGGT's epsilon behaviour.
    """
    _check_last_dims(t_a, (3,), "t_a")
    _check_last_dims(t_b, (3,), "t_b")
    na, nb = t_a.norm(dim=-1), t_b.norm(dim=-1)
    cos = (t_a * t_b).sum(-1) / (na * nb).clamp_min(eps)
    cos = cos.clamp(-1.0, 1.0)
    if ambiguity:
        cos = cos.abs()
    sin = (1 - cos * cos).clamp_min(0).sqrt()
    angle = torch.rad2deg(torch.atan2(sin, cos))
    return torch.where((na < eps) | (nb < eps), torch.full_like(angle, 90.0), angle)


def pairwise_pose_errors(
    pred_extrinsics: torch.Tensor, gt_extrinsics: torch.Tensor, ambiguity: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative rotation and translation-direction errors (degrees) over all frame pairs.

    Inputs [..., S, 3, 4]; outputs [..., S(S-1)/2]. Relative poses make the errors independent
    of the (unobservable) world frame and scale, so no alignment is needed.
    """
    _check_last_dims(pred_extrinsics, (3, 4), "pred_extrinsics")
    if pred_extrinsics.shape != gt_extrinsics.shape:
        raise ConfigError(
            f"pred_extrinsics {tuple(pred_extrinsics.shape)} and gt_extrinsics "
            f"{tuple(gt_extrinsics.shape)} must have the same shape"
        )
    if pred_extrinsics.ndim < 3:
        raise ConfigError(
            f"extrinsics need a frame axis [..., S, 3, 4], got {tuple(pred_extrinsics.shape)}"
        )
    i, j = frame_pairs(pred_extrinsics.shape[-3])
    rel_pred = relative_pose(pred_extrinsics[..., i, :, :], pred_extrinsics[..., j, :, :])
    rel_gt = relative_pose(gt_extrinsics[..., i, :, :], gt_extrinsics[..., j, :, :])
    rot_err = rotation_angle_deg(rel_gt[..., :3, :3], rel_pred[..., :3, :3])
    trans_err = translation_angle_deg(rel_gt[..., :3, 3], rel_pred[..., :3, 3], ambiguity)
    return rot_err, trans_err


def depth_to_world_points(
    depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """Unproject z-depth [..., H, W] to world points [..., H, W, 3].

    Pixel (u, v) sits at integer coordinates (column u, row v), VGGT's convention, so a point
    map from here matches one the model or the renderer writes with the same intrinsics.
    """
    _check_last_dims(extrinsics, (3, 4), "extrinsics")
    _check_last_dims(intrinsics, (3, 3), "intrinsics")
    h, w = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(h, dtype=depth.dtype, device=depth.device),
        torch.arange(w, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    k = intrinsics[..., None, None, :, :]
    x = (u - k[..., 0, 2]) / k[..., 0, 0] * depth
    y = (v - k[..., 1, 2]) / k[..., 1, 1] * depth
    cam = torch.stack([x, y, depth], -1)
    cam_from_world = extrinsics[..., None, None, :, :]
    # world = R^T (cam - t); with row vectors that is (cam - t) @ R.
    offset = (cam - cam_from_world[..., :3, 3])[..., None, :]
    return (offset @ cam_from_world[..., :3, :3]).squeeze(-2)
