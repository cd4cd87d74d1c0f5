"""Training losses: zero at the optimum, differentiable, finite on degenerate batches."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.model.pose import (
    depth_to_world_points,
    extrinsics_intrinsics_to_pose_encoding,
    quaternion_to_rotation_matrix,
)
from attrsub.train.losses import (
    LossWeights,
    compute_loss,
    normalize_ground_truth,
    stage_weights,
    valid_mask,
)

B, S, H, W = 2, 3, 24, 24


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A consistent little scene: wavy depth seen by three cameras, world = first camera."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, 4, generator=g) * torch.tensor([0.1, 0.1, 0.1, 1.0])
    rot = quaternion_to_rotation_matrix(q)
    rot[:, 0] = torch.eye(3)
    trans = torch.randn(B, S, 3, 1, generator=g) * 0.3
    trans[:, 0] = 0
    extr = torch.cat([rot, trans], -1)
    intr = torch.tensor([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]).expand(B, S, 3, 3).clone()
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    depths = (
        3.0
        + 0.3 * torch.sin(xx / 3.0) * torch.cos(yy / 4.0)
        + torch.rand(B, S, H, W, generator=g) * 0.01
    )
    valid = torch.ones(B, S, H, W, dtype=torch.bool)
    valid[:, :, :2] = False
    depths = torch.where(valid, depths, torch.zeros_like(depths))
    return {
        "images": torch.rand(B, S, 3, H, W, generator=g),
        "depths": depths,
        "world_points": depth_to_world_points(depths, extr, intr),
        "valid": valid,
        "extrinsics": extr,
        "intrinsics": intr,
    }


def perfect_pred(batch: dict[str, torch.Tensor], stages: int = 4) -> dict[str, object]:
    """Predictions equal to the normalised ground truth, confidence 1."""
    gt = normalize_ground_truth(batch, valid_mask(batch))
    enc = extrinsics_intrinsics_to_pose_encoding(gt["extrinsics"], batch["intrinsics"], (H, W))
    enc = enc.clone().requires_grad_(True)
    depth = gt["depths"][..., None].clone().requires_grad_(True)
    points = gt["world_points"].clone().requires_grad_(True)
    ones = torch.ones(B, S, H, W)
    return {
        "pose_enc": enc,
        "pose_enc_list": [enc] * stages,
        "depth": depth,
        "depth_conf": ones.clone().requires_grad_(True),
        "world_points": points,
        "world_points_conf": ones.clone().requires_grad_(True),
    }


def test_zero_loss_at_ground_truth_with_unit_confidence() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    total, parts = compute_loss(pred, batch, LossWeights(point=1.0))
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-5)
    for key in (
        "loss_camera",
        "loss_conf_depth",
        "loss_reg_depth",
        "loss_grad_depth",
        "loss_grad_point",
    ):
        assert parts[key] == pytest.approx(0.0, abs=1e-5), key
    assert parts["loss_total"] == pytest.approx(float(total.detach()))


def test_ground_truth_normalisation_gives_unit_mean_distance() -> None:
    batch = make_batch()
    mask = valid_mask(batch)
    gt = normalize_ground_truth(batch, mask)
    dist = gt["world_points"].norm(dim=-1)[mask].reshape(B, -1).mean(-1)
    torch.testing.assert_close(dist, torch.ones(B))
    torch.testing.assert_close(gt["extrinsics"][:, 0, :, :3], torch.eye(3).expand(B, 3, 3))
    ratio = batch["depths"][mask].reshape(B, -1) / gt["depths"][mask].reshape(B, -1)
    torch.testing.assert_close(ratio.mean(-1), gt["scale"])


def test_gradient_flows_to_every_prediction() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    with torch.no_grad():
        pred["depth"].add_(0.05 * torch.randn_like(pred["depth"]))
        pred["world_points"].add_(0.05 * torch.randn_like(pred["world_points"]))
        pred["pose_enc"].add_(0.05)
    conf = pred["depth_conf"]
    pred["depth_conf"] = conf * 1.5
    total, _ = compute_loss(pred, batch, LossWeights(point=1.0, grad_conf=True))
    total.backward()
    assert conf.grad is not None and torch.isfinite(conf.grad).all()
    for key in ("pose_enc", "depth", "world_points"):
        grad = pred[key].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


def test_stage_weighting_is_gamma_power() -> None:
    assert stage_weights(4, 0.6) == pytest.approx([0.216, 0.36, 0.6, 1.0])
    batch = make_batch()
    pred = perfect_pred(batch)
    errors = [0.4, 0.3, 0.2, 0.1]
    base = pred["pose_enc"].detach()
    pred["pose_enc_list"] = [base + torch.tensor([e, 0, 0, 0, 0, 0, 0, 0, 0]) for e in errors]
    _, parts = compute_loss(pred, batch, LossWeights(depth=0.0))
    # L1 over 3 translation components, one of which is off by e: mean = e / 3.
    expected = sum(0.6 ** (3 - i) * e / 3 for i, e in enumerate(errors)) / 4
    assert parts["loss_T"] == pytest.approx(expected, rel=1e-5)
    assert parts["loss_camera"] == pytest.approx(expected, rel=1e-5)
    assert "loss_conf_depth" not in parts


def test_confidence_term_rewards_confidence_where_correct() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    pred["depth_conf"] = torch.full((B, S, H, W), math.e)
    _, parts = compute_loss(pred, batch, LossWeights(camera=0.0))
    assert parts["loss_conf_depth"] == pytest.approx(-0.2, abs=1e-5)


def test_quantile_range_drops_outliers() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    noise = 1e-4 * torch.rand(B, S, H, W, 1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pred["depth"].add_(noise)
        pred["depth"][0, 0, 10, 10] += 1e4
    _, kept = compute_loss(pred, batch, LossWeights(camera=0.0, valid_range=1.0))
    _, filtered = compute_loss(pred, batch, LossWeights(camera=0.0))
    # One pixel clamped at 100 among ~3000 dominates the unfiltered mean; the 98% range drops it.
    assert kept["loss_reg_depth"] > 0.02
    assert filtered["loss_reg_depth"] < 1e-4


def test_finite_with_empty_frame_and_empty_batch() -> None:
    batch = make_batch()
    batch["valid"][0, 1] = False
    pred = perfect_pred(batch)
    total, parts = compute_loss(pred, batch, LossWeights(point=1.0))
    assert math.isfinite(float(total.detach())) and all(math.isfinite(v) for v in parts.values())
    batch["valid"][:] = False
    pred = perfect_pred(batch)
    pred["depth_conf"] = torch.zeros(B, S, H, W, requires_grad=True)
    total, parts = compute_loss(pred, batch, LossWeights(point=1.0))
    assert float(total.detach()) == 0.0 and all(math.isfinite(v) for v in parts.values())
    total.backward()
    assert pred["depth"].grad is not None and torch.isfinite(pred["depth"].grad).all()


def test_nan_ground_truth_is_masked_but_nan_predictions_surface() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    batch["depths"][0, 0, 5, 5] = float("nan")
    total, _ = compute_loss(pred, batch, LossWeights(point=1.0))
    assert math.isfinite(float(total.detach()))
    total.backward()
    assert torch.isfinite(pred["depth"].grad).all() and torch.isfinite(pred["pose_enc"].grad).all()
    # A diverged model must not be hidden: the training loop stops on a NaN total.
    for key, index in (("depth", (0, 0, 5, 5)), ("pose_enc", (0, 1, 0))):
        bad = perfect_pred(make_batch())
        with torch.no_grad():
            bad[key][index] = float("inf")
        total, _ = compute_loss(bad, make_batch(), LossWeights(point=1.0))
        assert math.isnan(float(total.detach())), key


def test_loss_weights_validated_and_frozen() -> None:
    w = LossWeights()
    assert (w.camera, w.depth, w.point, w.conf_alpha, w.stage_gamma) == (5.0, 1.0, 0.0, 0.2, 0.6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.camera = 1.0  # type: ignore[misc]
    for bad in ({"camera": -1.0}, {"depth": float("nan")}, {"stage_gamma": 0.0},
                {"valid_range": 1.5}, {"depth_gradient": "sobel"}, {"min_valid_pixels": 0},
                {"camera": 0.0, "depth": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError, match=next(iter(bad)) if len(bad) == 1 else "nothing"):
            LossWeights(**bad)


def test_missing_prediction_names_the_key() -> None:
    batch = make_batch()
    pred = perfect_pred(batch)
    del pred["world_points"]
    with pytest.raises(ConfigError, match="world_points"):
        compute_loss(pred, batch, LossWeights(point=1.0))
