"""Umeyama, ICP and depth alignment on transforms we chose ourselves."""

from __future__ import annotations

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.eval.align import (
    Sim3,
    _brute_nearest,
    align_depth,
    depth_scale,
    depth_scale_shift,
    icp,
    nearest_neighbors,
    umeyama,
)
from attrsub.model.pose import quaternion_to_rotation_matrix


def known_sim3() -> Sim3:
    rot = quaternion_to_rotation_matrix(torch.tensor([0.3, -0.2, 0.5, 0.8], dtype=torch.float64))
    return Sim3(
        torch.tensor(2.5, dtype=torch.float64), rot, torch.tensor([1.0, -2.0, 0.5]).double()
    )


def test_umeyama_recovers_known_sim3() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.randn(50, 3, generator=g, dtype=torch.float64)
    truth = known_sim3()
    est = umeyama(src, truth.apply(src))
    torch.testing.assert_close(est.scale, truth.scale)
    torch.testing.assert_close(est.rotation, truth.rotation)
    torch.testing.assert_close(est.translation, truth.translation)
    assert float(torch.det(est.rotation)) == pytest.approx(1.0)


def test_umeyama_returns_rotation_for_mirrored_target() -> None:
    g = torch.Generator().manual_seed(1)
    src = torch.randn(40, 3, generator=g, dtype=torch.float64)
    mirrored = src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    est = umeyama(src, mirrored)
    assert float(torch.det(est.rotation)) == pytest.approx(1.0)


def test_umeyama_weights_ignore_outliers() -> None:
    g = torch.Generator().manual_seed(2)
    src = torch.randn(30, 3, generator=g, dtype=torch.float64)
    truth = known_sim3()
    dst = truth.apply(src)
    dst[:5] += 100.0
    w = torch.ones(30, dtype=torch.float64)
    w[:5] = 0
    est = umeyama(src, dst, weights=w)
    torch.testing.assert_close(est.rotation, truth.rotation)
    torch.testing.assert_close(est.scale, truth.scale)
    no_scale = umeyama(src[5:], dst[5:], with_scale=False)
    assert float(no_scale.scale) == 1.0
    with pytest.raises(ConfigError, match=">= 3 points"):
        umeyama(src[:2], dst[:2])


def test_nearest_neighbors_is_exact() -> None:
    """The k-d tree (CPU) and the chunked brute force (accelerators) both find the true nearest
    point: checked against a full float64 distance matrix."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(500, 3, generator=g).double(), torch.randn(400, 3, generator=g).double()
    full = torch.cdist(a, b)
    want_d, want_i = full.min(dim=1)
    d, i = nearest_neighbors(a, b)
    assert torch.equal(i, want_i)
    torch.testing.assert_close(d, want_d)
    assert d.dtype == torch.float64
    for chunk in (7, 1000):
        assert torch.equal(_brute_nearest(a, b, chunk), want_i)
    empty_d, empty_i = nearest_neighbors(a[:0], b)
    assert empty_d.shape == (0,) and empty_i.shape == (0,)
    with pytest.raises(ConfigError, match="reference point set is empty"):
        nearest_neighbors(a, b[:0])
    b[7, 1] = float("nan")
    with pytest.raises(ConfigError, match="reference points must be finite"):
        nearest_neighbors(a, b)


def test_icp_refines_small_misalignment() -> None:
    g = torch.Generator().manual_seed(4)
    u, v = torch.meshgrid(torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 20), indexing="ij")
    src = torch.stack([u, v, 0.3 * torch.sin(3 * u) * torch.cos(2 * v)], -1).reshape(-1, 3).double()
    small = Sim3(
        torch.tensor(1.02, dtype=torch.float64),
        quaternion_to_rotation_matrix(torch.tensor([0.03, 0.0, 0.02, 1.0], dtype=torch.float64)),
        torch.tensor([0.03, -0.02, 0.01], dtype=torch.float64),
    )
    dst = small.apply(src)[torch.randperm(len(src), generator=g)]
    before = float(nearest_neighbors(src, dst)[0].mean())
    est = icp(src, dst, iterations=50)
    after = float(nearest_neighbors(est.apply(src), dst)[0].mean())
    assert after < 0.1 * before and after < 1e-3


def test_depth_scale_methods() -> None:
    gt = torch.rand(2, 3, 4, 5) + 0.5
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 1] = False  # an image with no valid pixel
    pred = gt / 2
    for method in ("lsq", "median"):
        s = depth_scale(pred, gt, mask, method)
        assert s.shape == (2, 3)
        torch.testing.assert_close(s[mask.any(-1).any(-1)], torch.full((5,), 2.0))
        assert float(s[0, 1]) == 1.0
    torch.testing.assert_close(align_depth(pred, gt, mask, "lsq")[mask], gt[mask])
    with pytest.raises(ConfigError, match="bogus"):
        align_depth(pred, gt, mask, "bogus")


def test_depth_scale_shift_exact_and_degenerate() -> None:
    gt = torch.rand(3, 6, 7, dtype=torch.float64) + 1
    mask = torch.ones_like(gt, dtype=torch.bool)
    pred = (gt - 0.4) / 3.0
    s, b = depth_scale_shift(pred, gt, mask)
    torch.testing.assert_close(s, torch.full((3,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(b, torch.full((3,), 0.4, dtype=torch.float64))
    flat = torch.ones_like(gt)
    s, b = depth_scale_shift(flat, gt, mask)
    assert torch.isfinite(s).all() and torch.equal(b, torch.zeros(3, dtype=torch.float64))
