"""Metrics on cases whose answers were computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.eval.align import Sim3
from attrsub.eval.metrics import (
    camera_metrics,
    cloud_metrics,
    depth_metrics,
    evaluate_batch,
    pointmap_metrics,
    pose_auc,
)
from attrsub.model.pose import (
    depth_to_world_points,
    extrinsics_intrinsics_to_pose_encoding,
    quaternion_to_rotation_matrix,
)


def rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


def cameras(rotations: list[torch.Tensor], centres: list[list[float]]) -> torch.Tensor:
    """Camera-from-world [1, S, 3, 4] from rotations and camera centres (t = -R c)."""
    out = []
    for r, c in zip(rotations, centres, strict=True):
        t = -r @ torch.tensor(c, dtype=torch.float64)
        out.append(torch.cat([r, t[:, None]], -1))
    return torch.stack(out)[None]


def test_depth_scaled_by_two() -> None:
    gt = torch.rand(2, 3, 8, 8) + 1.0
    valid = torch.ones_like(gt, dtype=torch.bool)
    raw = depth_metrics(2 * gt, gt, valid, align="none")
    assert raw["depth_absrel"] == pytest.approx(1.0) and raw["depth_delta1"] == 0.0
    for mode in ("median", "lsq", "scale_shift"):
        aligned = depth_metrics(2 * gt, gt, valid, align=mode)
        assert aligned["depth_absrel"] == pytest.approx(0.0, abs=1e-9), mode
        assert aligned["depth_delta1"] == 1.0, mode


def test_depth_hand_computed_and_invalid_pixels() -> None:
    gt = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [5.0, 0.0]]])
    pred = torch.tensor([[[1.0, 1.2], [1.3, 2.0], [99.0, 99.0]]])
    valid = torch.tensor([[[True, True], [True, True], [False, True]]])  # gt 0 is invalid too
    got = depth_metrics(pred, gt, valid, align="none")
    assert got["depth_absrel"] == pytest.approx((0 + 0.2 + 0.3 + 1.0) / 4)
    assert got["depth_delta1"] == pytest.approx(0.5)
    empty = depth_metrics(pred, gt, torch.zeros_like(valid), align="median")
    assert math.isnan(empty["depth_absrel"])
    with pytest.raises(ConfigError, match="bogus"):
        depth_metrics(pred, gt, valid, align="bogus")


def test_rra_and_auc_with_known_rotation_errors() -> None:
    centres = [[0, 0, 0], [0, 0, 1], [0, 0, 2]]  # along z: rotating about z keeps directions
    eye = torch.eye(3, dtype=torch.float64)
    gt = cameras([eye, eye, eye], centres)
    pred = cameras([eye, rot_z(10.5), rot_z(21.0)], centres)
    got = camera_metrics(pred, gt)
    # Pair errors: (0,1) 10.5, (0,2) 21, (1,2) 10.5 degrees; translation errors 0.
    assert got["cam_rra15"] == pytest.approx(2 / 3)
    assert got["cam_rta15"] == pytest.approx(1.0)
    # err < t: 0 for t = 1..10, 2/3 for t = 11..21, 1 for t = 22..30.
    assert got["cam_auc30"] == pytest.approx((11 * 2 / 3 + 9) / 30)
    assert set(camera_metrics(pred, gt, threshold=5, auc_max=3)) == {
        "cam_rra5",
        "cam_rta5",
        "cam_auc3",
    }


def test_rta_with_known_translation_errors() -> None:
    eye = torch.eye(3, dtype=torch.float64)
    gt = cameras([eye] * 3, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    c20 = [math.cos(math.radians(20)), math.sin(math.radians(20)), 0]
    pred = cameras([eye] * 3, [[0, 0, 0], c20, [0, 1, 0]])
    # Pair errors: (0,1) 20 degrees, (0,2) 0, (1,2) 145 - 135 = 10.
    got = camera_metrics(pred, gt)
    assert got["cam_rra15"] == 1.0
    assert got["cam_rta15"] == pytest.approx(2 / 3)
    single = camera_metrics(pred[:, :1], gt[:, :1])
    assert all(math.isnan(v) for v in single.values())


def test_pose_auc_hand_computed() -> None:
    rot = torch.tensor([0.5, 10.5, 2.0])
    trans = torch.tensor([0.2, 1.0, 40.0])
    # max errors 0.5, 10.5, 40: 1/3 below t for t = 1..10, 2/3 for t = 11..30.
    assert pose_auc(rot, trans, 30) == pytest.approx((10 / 3 + 20 * 2 / 3) / 30)
    assert pose_auc(torch.tensor([30.0]), torch.tensor([0.0]), 30) == pytest.approx(1 / 30)
    assert pose_auc(torch.zeros(4), torch.zeros(4), 30) == 1.0


def test_cloud_acc_comp_known_offsets() -> None:
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1)
    gt = torch.cat([grid.reshape(-1, 2), torch.zeros(25, 1)], -1)
    shifted = gt + torch.tensor([0.0, 0.0, 0.1])
    got = cloud_metrics(shifted, gt)
    assert got["pc_acc"] == pytest.approx(0.1) and got["pc_comp"] == pytest.approx(0.1)
    assert math.isnan(got["pc_nc"])
    two = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    one = torch.tensor([[0.0, 0, 0]])
    got = cloud_metrics(one, two)
    assert got["pc_acc"] == 0.0 and got["pc_comp"] == pytest.approx(0.5)


def plane_map(h: int = 12, w: int = 12, tilt_deg: float = 0.0) -> torch.Tensor:
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pts = torch.stack([u, v, torch.zeros_like(u)], -1) * 0.1
    c, s = math.cos(math.radians(tilt_deg)), math.sin(math.radians(tilt_deg))
    tilt = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    return pts @ tilt.T


def test_normals_do_not_depend_on_the_scale_of_the_map() -> None:
    """A prediction up to scale may be tiny (a fine-tuned depth head near zero): its normals,
    and so NC, must not vanish because the map is small."""
    from attrsub.eval.metrics import point_map_normals

    pts = torch.randn(1, 8, 8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    normals, ok = point_map_normals(pts, valid)
    for scale in (1e-4, 1e-9, 1e-30):
        small, small_ok = point_map_normals(pts * scale, valid)
        assert torch.equal(small_ok, ok)
        assert torch.allclose(small[ok], normals[ok], atol=1e-12)
    # every column the same: dx = 0 everywhere, so no normal anywhere
    assert not point_map_normals(pts[..., :1, :].expand(1, 8, 8, 3), valid)[1].any()


def test_normal_consistency_of_tilted_plane() -> None:
    gt = plane_map()
    pred = plane_map(tilt_deg=30.0)
    valid = torch.ones(12, 12, dtype=torch.bool)
    got = pointmap_metrics(pred, gt, valid, align=False)
    assert got["pc_nc"] == pytest.approx(math.cos(math.radians(30.0)))
    same = pointmap_metrics(gt, gt, valid, align=False)
    assert same["pc_nc"] == pytest.approx(1.0) and same["pc_acc"] < 1e-6


def test_sim3_is_factored_out_and_subsampling_is_seeded() -> None:
    v, u = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    gt = torch.stack([u, v, 2 + 0.2 * torch.sin(3 * u) * v], -1).double()[None]
    rot = quaternion_to_rotation_matrix(torch.tensor([0.2, 0.1, -0.3, 0.9], dtype=torch.float64))
    pred = Sim3(torch.tensor(0.3).double(), rot, torch.tensor([1.0, 2.0, 3.0]).double()).apply(gt)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    got = pointmap_metrics(pred, gt, valid)
    assert got["pc_acc"] < 1e-6 and got["pc_comp"] < 1e-6 and got["pc_nc"] == pytest.approx(1.0)
    assert pointmap_metrics(pred, gt, valid, align=False)["pc_acc"] > 0.5
    a = pointmap_metrics(pred, gt, valid, max_points=50, seed=3, use_icp=True)
    b = pointmap_metrics(pred, gt, valid, max_points=50, seed=3, use_icp=True)
    assert a == b


def small_batch(b: int = 1, s: int = 3, h: int = 10, w: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rot = quaternion_to_rotation_matrix(
        torch.randn(b, s, 4, generator=g) * torch.tensor([0.1, 0.1, 0.1, 1])
    )
    extr = torch.cat([rot, torch.randn(b, s, 3, 1, generator=g) * 0.2], -1)
    intr = torch.tensor([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]).expand(b, s, 3, 3)
    depths = 2 + torch.rand(b, s, h, w, generator=g)
    return {
        "images": torch.rand(b, s, 3, h, w, generator=g),
        "depths": depths,
        "world_points": depth_to_world_points(depths, extr, intr),
        "valid": torch.ones(b, s, h, w, dtype=torch.bool),
        "extrinsics": extr,
        "intrinsics": intr,
    }


def test_evaluate_batch_perfect_prediction() -> None:
    batch = small_batch()
    enc = extrinsics_intrinsics_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (10, 12))
    pred = {
        "pose_enc": enc,
        "depth": 3 * batch["depths"][..., None],
        "world_points": batch["world_points"],
    }
    got = evaluate_batch(pred, batch)
    assert set(got) == {
        "depth_absrel",
        "depth_delta1",
        "pc_acc",
        "pc_comp",
        "pc_nc",
        "cam_rra15",
        "cam_rta15",
        "cam_auc30",
    }
    assert got["depth_absrel"] == pytest.approx(0.0, abs=1e-6) and got["depth_delta1"] == 1.0
    assert got["pc_acc"] < 1e-4 and got["pc_comp"] < 1e-4 and got["pc_nc"] == pytest.approx(1.0)
    assert got["cam_rra15"] == 1.0 and got["cam_rta15"] == 1.0 and got["cam_auc30"] == 1.0
    del pred["world_points"]
    pred["depth"] = batch["depths"][..., None]  # unprojection needs depth in the cameras' scale
    from_depth = evaluate_batch(pred, batch, points_from="depth")
    assert from_depth["pc_acc"] < 1e-4
    assert math.isnan(evaluate_batch({}, batch)["pc_acc"])
    with pytest.raises(ConfigError, match="points_from"):
        evaluate_batch(pred, batch, points_from="mesh")
