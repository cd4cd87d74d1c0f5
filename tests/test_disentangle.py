"""Disentanglement measures: angles, the paper's scale-invariant distance, overlap, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.subspace.disentangle import (
    compare,
    pairwise,
    principal_angles,
    projection_overlap,
    random_baseline,
    scale_invariant_distance,
)
from attrsub.subspace.extract import LayerSubspace


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny linear algebra runs slower with several threads on a loaded shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _orth(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, d)))[0]


def _tilted(theta: float, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two 3-dim subspaces whose smallest principal angle is theta, the others 90 degrees."""
    q = _orth(np.random.default_rng(seed), n, 6)
    a = q[:, :3]
    b = np.stack([math.cos(theta) * q[:, 0] + math.sin(theta) * q[:, 3], q[:, 4], q[:, 5]], 1)
    return a, b


def _layer(col: np.ndarray, row: np.ndarray) -> LayerSubspace:
    d = col.shape[1]
    return LayerSubspace(
        col_basis=torch.from_numpy(col).float(),
        row_basis=torch.from_numpy(row).float(),
        singular_values=torch.ones(d),
        spectrum=torch.ones(d),
        weights=torch.ones(3),
        iterations=1,
        rank=d,
    )


def test_angles_identical_orthogonal_random() -> None:
    rng = np.random.default_rng(1)
    q = _orth(rng, 40, 8)
    same = principal_angles(torch.from_numpy(q[:, :4]).float(), torch.from_numpy(q[:, :4]).float())
    assert np.all(same < 1e-3)
    assert np.allclose(principal_angles(q[:, :4], q[:, 4:]), 90.0)
    rand = principal_angles(_orth(rng, 2000, 4), _orth(rng, 2000, 4))
    assert rand.min() > 80.0
    assert principal_angles(q[:, :2], q[:, :5]).shape == (2,)


@pytest.mark.parametrize("theta_deg", [0.5, 10.0, 37.0, 60.0, 89.0])
def test_angles_and_distance_match_closed_form(theta_deg: float) -> None:
    theta = math.radians(theta_deg)
    a, b = _tilted(theta)
    ang = principal_angles(a, b)
    assert ang[0] == pytest.approx(theta_deg, abs=1e-6)
    assert np.allclose(ang[1:], 90.0)
    dist = scale_invariant_distance(a, b)
    assert dist == pytest.approx(1.0 - math.cos(theta), rel=1e-6, abs=1e-9)
    # invariant to any invertible change of basis on either side (U versus U S^1/2 etc.)
    g = np.random.default_rng(2).standard_normal((3, 3))
    assert scale_invariant_distance(a @ g, b * [5.0, 0.1, 2.0]) == pytest.approx(
        dist, rel=1e-5, abs=1e-9
    )


def test_distance_extremes_and_rank_deficiency() -> None:
    q = _orth(np.random.default_rng(3), 30, 6)
    a, b = q[:, :3], q[:, 3:]
    assert scale_invariant_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert scale_invariant_distance(a, b) == pytest.approx(1.0, abs=1e-8)
    padded = np.concatenate([a, np.zeros((30, 1))], axis=1)
    assert scale_invariant_distance(padded, b) == pytest.approx(1.0, abs=1e-6)
    assert scale_invariant_distance(padded, a) == pytest.approx(0.0, abs=1e-6)


def test_overlap() -> None:
    q = _orth(np.random.default_rng(4), 50, 8)
    assert projection_overlap(q[:, :2], q[:, :6]) == pytest.approx(1.0)
    assert projection_overlap(q[:, :4], q[:, 4:]) == pytest.approx(0.0, abs=1e-12)
    a, b = _tilted(math.radians(30.0))
    assert projection_overlap(a, b) == pytest.approx(math.cos(math.radians(30.0)) ** 2 / 3)


def test_random_baseline_is_seeded_and_near_orthogonal() -> None:
    base = random_baseline(2000, 4, 4, seed=0)
    assert base == random_baseline(2000, 4, 4, seed=0)
    assert base != random_baseline(2000, 4, 4, seed=1)
    amin, amean, dist, ovl = base
    assert 80.0 < amin <= amean <= 90.0
    assert dist > 0.8 and ovl < 0.01
    with pytest.raises(ConfigError, match="1..10"):
        random_baseline(10, 11, 2)


def test_pairwise_rows_are_flat_and_complete() -> None:
    rng = np.random.default_rng(5)
    qc, qr = _orth(rng, 48, 12), _orth(rng, 32, 12)
    subs = {
        "texture": {"l0": _layer(qc[:, :3], qr[:, :3]), "l1": _layer(qc[:, :4], qr[:, :4])},
        "camera": {"l0": _layer(qc[:, 3:6], qr[:, :3]), "l1": _layer(qc[:, :4], qr[:, 4:8])},
        "lighting": {"l0": _layer(qc[:, 6:9], qr[:, 3:6])},
    }
    rows = pairwise(subs, seed=0)
    assert [(r["layer"], r["factor_a"], r["factor_b"]) for r in rows] == [
        ("l0", "texture", "camera"),
        ("l1", "texture", "camera"),
        ("l0", "texture", "lighting"),
        ("l0", "camera", "lighting"),
    ]
    keys = {
        "layer", "factor_a", "factor_b", "rank_a", "rank_b", "d_out", "d_in",
        "col_angle_min", "col_angle_mean", "row_angle_min", "row_angle_mean",
        "scale_inv_distance", "row_scale_inv_distance", "overlap", "row_overlap",
    }  # fmt: skip
    keys |= {f"rand_{k}" for k in keys if k.startswith(("col_", "row_", "scale", "overlap"))}
    for row in rows:
        assert set(row) == keys
        assert all(isinstance(v, (str, float, int)) for v in row.values())
    first = rows[0]
    assert first["scale_inv_distance"] == pytest.approx(1.0, abs=1e-5)
    assert first["row_scale_inv_distance"] == pytest.approx(0.0, abs=1e-5)
    assert first["col_angle_min"] == pytest.approx(90.0, abs=1e-3)
    assert first["row_angle_mean"] == pytest.approx(0.0, abs=1e-2)
    assert first["overlap"] == pytest.approx(0.0, abs=1e-6)
    assert first["row_overlap"] == pytest.approx(1.0, abs=1e-5)
    second = rows[1]
    assert second["col_angle_min"] == pytest.approx(0.0, abs=1e-2)
    assert second["row_angle_min"] == pytest.approx(90.0, abs=1e-3)
    assert rows == pairwise(subs, seed=0)
    assert compare(subs["texture"]["l0"], subs["camera"]["l0"])["rank_a"] == 3


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="R\\^5"):
        principal_angles(np.eye(5)[:, :2], np.eye(6)[:, :2])
    with pytest.raises(ConfigError, match="non-empty"):
        projection_overlap(np.zeros((5, 0)), np.eye(5)[:, :1])
