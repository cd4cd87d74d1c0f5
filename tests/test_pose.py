"""Pose encoding, quaternions and angular errors against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.model.pose import (
    depth_to_world_points,
    extrinsics_intrinsics_to_pose_encoding,
    invert_extrinsics,
    pairwise_pose_errors,
    pose_encoding_to_extrinsics_intrinsics,
    quaternion_to_rotation_matrix,
    relative_pose,
    rotation_angle_deg,
    rotation_matrix_to_quaternion,
    translation_angle_deg,
)


def axis_angle(axis: list[float], deg: float) -> torch.Tensor:
    """Rodrigues' formula in float64, independent of the code under test."""
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    th = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(th) * k + (1 - math.cos(th)) * k @ k


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return quaternion_to_rotation_matrix(q)


def test_quaternion_order_is_scalar_last() -> None:
    rot = axis_angle([0, 0, 1], 90)
    q = rotation_matrix_to_quaternion(rot)
    s = math.sqrt(0.5)
    torch.testing.assert_close(q, torch.tensor([0, 0, s, s], dtype=torch.float64))
    identity = rotation_matrix_to_quaternion(torch.eye(3))
    torch.testing.assert_close(identity, torch.tensor([0.0, 0, 0, 1]))


def test_quaternion_round_trip_including_180_degrees() -> None:
    rots = torch.cat(
        [random_rotations(200), axis_angle([1, 0, 0], 180)[None], axis_angle([1, 1, 0], 180)[None]]
    )
    q = rotation_matrix_to_quaternion(rots)
    assert bool((q[..., 3] >= 0).all())
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_rotation_matrix(q), rots, atol=1e-12, rtol=0)


def test_pose_encoding_round_trip_exact() -> None:
    b, s, h, w = 2, 3, 48, 64
    rot = random_rotations(b * s, seed=1).reshape(b, s, 3, 3)
    trans = torch.randn(b, s, 3, 1, dtype=torch.float64)
    extr = torch.cat([rot, trans], -1)
    intr = torch.zeros(b, s, 3, 3, dtype=torch.float64)
    intr[..., 0, 0], intr[..., 1, 1] = 70.0, 55.0
    intr[..., 0, 2], intr[..., 1, 2], intr[..., 2, 2] = w / 2, h / 2, 1.0
    enc = extrinsics_intrinsics_to_pose_encoding(extr, intr, (h, w))
    assert enc.shape == (b, s, 9) and enc.dtype == torch.float64
    torch.testing.assert_close(
        enc[..., 7], 2 * torch.atan(torch.tensor(24 / 55.0)).double().expand(b, s)
    )
    extr2, intr2 = pose_encoding_to_extrinsics_intrinsics(enc, (h, w))
    torch.testing.assert_close(extr2, extr, atol=1e-12, rtol=0)
    torch.testing.assert_close(intr2, intr, atol=1e-10, rtol=0)
    enc2 = extrinsics_intrinsics_to_pose_encoding(extr2, intr2, (h, w))
    torch.testing.assert_close(enc2, enc, atol=1e-12, rtol=0)


def test_encoding_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="image_hw"):
        extrinsics_intrinsics_to_pose_encoding(
            torch.zeros(1, 1, 3, 4), torch.eye(3)[None, None], (0, 4)
        )
    with pytest.raises(ConfigError, match="extrinsics"):
        extrinsics_intrinsics_to_pose_encoding(
            torch.zeros(1, 1, 4, 4), torch.eye(3)[None, None], (4, 4)
        )


def test_relative_pose_and_inverse() -> None:
    rot = random_rotations(2, seed=3)
    extr = torch.cat([rot, torch.randn(2, 3, 1, dtype=torch.float64)], -1)
    ident = relative_pose(extr[0], extr[0])
    torch.testing.assert_close(ident[:, :3], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(ident[:, 3], torch.zeros(3, dtype=torch.float64))
    inv = invert_extrinsics(extr[1])
    torch.testing.assert_close(invert_extrinsics(inv), extr[1])


def test_rotation_angle_exact_small_and_large() -> None:
    for deg in (1e-4, 0.5, 10.0, 90.0, 179.0):
        got = rotation_angle_deg(torch.eye(3, dtype=torch.float64), axis_angle([1, 2, 3], deg))
        assert abs(float(got) - deg) < 1e-9 * max(deg, 1)


def test_translation_angle_with_and_without_ambiguity() -> None:
    a = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    b = torch.tensor([-1.0, 1.0, 0], dtype=torch.float64)
    assert float(translation_angle_deg(a, b, ambiguity=False)) == pytest.approx(135.0)
    assert float(translation_angle_deg(a, b)) == pytest.approx(45.0)
    assert float(translation_angle_deg(a, torch.zeros(3, dtype=torch.float64))) == 90.0


def test_pairwise_errors_known_rotation_offsets() -> None:
    gt = torch.cat([torch.eye(3), torch.tensor([[1.0], [0], [0]])], -1).double()
    gt = gt.expand(3, 3, 4).clone()
    gt[1, :, 3] = torch.tensor([0.0, 1.0, 0])
    gt[2, :, 3] = torch.tensor([0.0, 0.0, 2.0])
    pred = gt.clone()
    pred[1, :, :3] = axis_angle([0, 0, 1], 10)
    pred[1, :, 3] = pred[1, :, :3] @ gt[1, :, 3]  # keep the camera centre, rotate the camera
    rot_err, _ = pairwise_pose_errors(pred, gt)
    torch.testing.assert_close(rot_err, torch.tensor([10.0, 0.0, 10.0], dtype=torch.float64))


def test_depth_to_world_points_identity_camera() -> None:
    depth = torch.full((2, 3), 2.0)
    extr = torch.cat([torch.eye(3), torch.zeros(3, 1)], -1)
    intr = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]])
    pts = depth_to_world_points(depth, extr, intr)
    torch.testing.assert_close(pts[1, 2], torch.tensor([1.0, 0.0, 2.0]))
    moved = torch.cat([torch.eye(3), torch.tensor([[0.0], [0], [-1]])], -1)
    torch.testing.assert_close(
        depth_to_world_points(depth, moved, intr)[0, 0], torch.tensor([-1.0, -1, 3])
    )
