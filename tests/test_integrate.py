"""Integration of factor subspaces into the reduced adapter's frozen bases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.subspace.extract import LayerSubspace
from attrsub.subspace.integrate import (
    METHODS,
    IntegratedBasis,
    integrate,
    integrate_all,
    orthogonalize,
)

ORTHO = [m for m in METHODS if m != "none"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny linear algebra runs slower with several threads on a loaded shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sub(seed: int, d_out: int = 40, d_in: int = 30, rank: int = 4) -> LayerSubspace:
    g = torch.Generator().manual_seed(seed)
    col = torch.linalg.qr(torch.randn(d_out, rank, generator=g))[0]
    row = torch.linalg.qr(torch.randn(d_in, rank, generator=g))[0]
    s = torch.sort(torch.rand(rank, generator=g) * 3 + 0.5, descending=True).values
    return LayerSubspace(col, row, s, s, torch.ones(3), 2, rank)


def _layer() -> dict[str, LayerSubspace]:
    return {"texture": _sub(0), "geometry": _sub(1), "camera": _sub(2, rank=3)}


def _residual(basis: torch.Tensor, cols: torch.Tensor) -> float:
    """Largest distance of a column of ``cols`` (relative to its norm) from span(basis)."""
    b, c = basis.double(), cols.double()
    res = torch.linalg.vector_norm(c - b @ (b.T @ c), dim=0)
    return float((res / torch.linalg.vector_norm(c, dim=0)).max())


@pytest.mark.parametrize("method", ORTHO)
def test_orthonormal_and_spanning(method: str) -> None:
    layer = _layer()
    out = integrate(layer, ["texture", "geometry", "camera"], method=method)
    assert isinstance(out, IntegratedBasis)
    assert out.U.shape == (40, 11) and out.V.shape == (30, 11) and out.shape == (11, 11)
    assert out.U.dtype == torch.float32
    for basis, side in ((out.U, "col"), (out.V, "row")):
        eye = torch.eye(basis.shape[1])
        assert torch.allclose(basis.T @ basis, eye, atol=1e-5)
        for sub in layer.values():
            original = sub.col_factor() if side == "col" else sub.row_factor()
            assert _residual(basis, original) < 1e-5
    assert out.factors == ("texture", "geometry", "camera")
    assert out.ranks == (4, 4, 3) and out.method == method


def test_none_concatenates_scaled_factors() -> None:
    layer = _layer()
    out = integrate(layer, ["geometry", "texture"], ranks={"geometry": 2}, method="none")
    expected = torch.cat([layer["geometry"].col_factor(2), layer["texture"].col_factor()], 1)
    assert torch.allclose(out.U, expected, rtol=1e-6, atol=0)
    assert out.ranks == (2, 4)


def test_gram_schmidt_keeps_first_factor_span() -> None:
    layer = _layer()
    for order in (["texture", "camera"], ["camera", "texture"]):
        out = integrate(layer, order, method="gram-schmidt")
        r = layer[order[0]].rank
        first = layer[order[0]].col_basis
        assert _residual(first, out.U[:, :r]) < 1e-5
        assert _residual(out.U[:, :r], first) < 1e-5


def test_loewdin_is_the_closest_orthonormal_basis() -> None:
    g = torch.Generator().manual_seed(7)
    b = torch.randn(25, 6, generator=g, dtype=torch.float64)
    low = orthogonalize(b, "loewdin").double()
    best = float(torch.linalg.matrix_norm(low - b))
    for method in ("qr", "gram-schmidt", "svd"):
        other = orthogonalize(b, method).double()
        assert best <= float(torch.linalg.matrix_norm(other - b)) + 1e-9
    for _ in range(5):
        rot = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
        assert best <= float(torch.linalg.matrix_norm(low @ rot - b)) + 1e-9


def test_rank_deficiency_drops_dependent_directions() -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.randn(20, 3, generator=g, dtype=torch.float64)
    b = torch.cat([a, a[:, :2] @ torch.randn(2, 2, generator=g, dtype=torch.float64)], 1)
    for method in ("qr", "svd", "gram-schmidt"):
        q = orthogonalize(b, method)
        assert q.shape == (20, 3), method
        assert torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
        assert _residual(q, b) < 1e-5
    with pytest.raises(ConfigError, match="loewdin"):
        orthogonalize(b, "loewdin")
    with pytest.raises(ConfigError, match="at most 4 columns"):
        orthogonalize(torch.randn(4, 6, generator=g), "loewdin")
    same = {"texture": _sub(0), "copy": _sub(0)}
    out = integrate(same, ["texture", "copy"], method="qr")
    assert out.U.shape[1] == 4 and out.V.shape[1] == 4


def test_ill_conditioned_concatenation_stays_orthonormal() -> None:
    rng = np.random.default_rng(9)
    mix = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    b = torch.from_numpy(rng.standard_normal((300, 12)) @ np.diag(np.logspace(0, -5, 12)) @ mix)
    for method in ORTHO:
        q = orthogonalize(b, method)
        assert q.shape == (300, 12), method
        assert torch.allclose(q.T @ q, torch.eye(12), atol=1e-5), method
        assert _residual(q, b) < 1e-5, method
    with pytest.raises(ConfigError, match="rtol"):
        orthogonalize(b, "qr", rtol=0.0)


def test_truncation() -> None:
    layer = _layer()
    for method in METHODS:
        out = integrate(layer, ["texture", "geometry"], method=method, total_rank=5)
        assert out.U.shape == (40, 5) and out.V.shape == (30, 5), method
    svd = integrate(layer, ["texture", "geometry"], method="svd", total_rank=5)
    cols = torch.cat([layer["texture"].col_factor(), layer["geometry"].col_factor()], 1).double()
    u = torch.linalg.svd(cols, full_matrices=False)[0][:, :5]
    assert torch.allclose(svd.U.double() @ svd.U.double().T, u @ u.T, atol=1e-5)


def test_integrate_all_over_layers() -> None:
    subs = {
        "texture": {"l0": _sub(0), "l1": _sub(3)},
        "camera": {"l0": _sub(1), "l1": _sub(4), "only-camera": _sub(5)},
    }
    out = integrate_all(subs, ["texture", "camera"], ranks=2, method="svd")
    assert list(out) == ["l0", "l1"]
    assert all(b.U.shape == (40, 4) for b in out.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "householder"}, "householder"),
        ({"factors": ["texture", "motion"]}, "motion"),
        ({"factors": []}, "at least one"),
        ({"factors": ["texture", "texture"]}, "repeat"),
        ({"ranks": {"texture": 5}}, "1..4"),
        ({"ranks": {"texture": 0}}, "1..4"),
        ({"ranks": {"lighting": 1}}, "lighting"),
        ({"ranks": 4}, "camera"),
        ({"total_rank": 12}, "1..11"),
        ({"total_rank": 0}, "1..11"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"factors": ["texture", "geometry", "camera"], **kwargs}
    with pytest.raises(ConfigError, match=match):
        integrate(_layer(), **args)


def test_bad_input_all_and_matrix() -> None:
    subs = {"texture": {"l0": _sub(0)}}
    with pytest.raises(ConfigError, match="motion"):
        integrate_all(subs, ["motion"])
    with pytest.raises(ConfigError, match="method"):
        integrate_all(subs, ["texture"], method="polar")
    with pytest.raises(ConfigError, match="1..3"):
        orthogonalize(torch.from_numpy(np.eye(3)), "qr", total_rank=4)
