"""Subspace extraction: IRLS recovers a planted subspace despite outliers; factored == dense."""

from __future__ import annotations

import math

import pytest
import torch

from attrsub.adapters.update import Update, from_peft
from attrsub.errors import ConfigError, DataError
from attrsub.subspace.extract import (
    ExtractConfig,
    LayerSubspace,
    extract,
    extract_all,
    extract_dense,
    select_rank,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny SVDs run slower with several threads on a loaded shared box (spinning workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _orth(g: torch.Generator, n: int, r: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0]


def _max_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle (degrees) between span(b) and its projection onto span(a)."""
    qa, qb = torch.linalg.qr(a.double())[0], torch.linalg.qr(b.double())[0]
    resid = qb - qa @ (qa.T @ qb)
    return math.degrees(math.asin(min(1.0, float(torch.linalg.matrix_norm(resid, ord=2)))))


def _planted(seed: int = 0, d_out: int = 96, d_in: int = 64, inliers: int = 8, outliers: int = 3):
    """Inliers: shared rank-4 update (spectrum 4,3,2,1) plus small rank-12 noise; outliers:
    large rank-4 updates in unrelated directions."""
    g = torch.Generator().manual_seed(seed)
    u, v = _orth(g, d_out, 4), _orth(g, d_in, 4)
    root = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64).sqrt()
    ups = []
    for _ in range(inliers):
        nc = 0.03 * torch.randn(d_out, 12, generator=g, dtype=F64)
        nr = 0.03 * torch.randn(d_in, 12, generator=g, dtype=F64)
        ups.append(Update(torch.cat([u * root, nc], 1), torch.cat([v * root, nr], 1)))
    big = torch.tensor([15.0, 12.0, 10.0, 8.0], dtype=F64).sqrt()
    for _ in range(outliers):
        ups.append(Update(_orth(g, d_out, 4) * big, _orth(g, d_in, 4) * big))
    return ups, u, v


def _random_updates(seed: int, k: int, d_out: int, d_in: int, r: int) -> list[Update]:
    g = torch.Generator().manual_seed(seed)
    return [
        Update(torch.randn(d_out, r, generator=g), torch.randn(d_in, r, generator=g) * (i + 1))
        for i in range(k)
    ]


def test_irls_recovers_planted_subspace_and_downweights_outliers() -> None:
    ups, u, v = _planted()
    irls = extract(ups, ExtractConfig(method="irls", rank=4))
    mean = extract(ups, ExtractConfig(method="mean", rank=4))
    assert _max_angle(irls.col_basis, u) < 5.0
    assert _max_angle(irls.row_basis, v) < 5.0
    assert irls.weights[8:].max() < irls.weights[:8].min()
    assert irls.weights[8:].max() < 0.2
    assert _max_angle(mean.col_basis, u) > 5 * _max_angle(irls.col_basis, u)
    assert _max_angle(mean.row_basis, v) > 5 * _max_angle(irls.row_basis, v)
    assert torch.all(mean.weights == 1) and mean.iterations == 0
    assert irls.iterations >= 1 and irls.converged


def test_result_is_orthonormal_float32_with_scaled_factors() -> None:
    ups, _, _ = _planted(seed=1)
    sub = extract(ups, ExtractConfig(rank=4))
    assert sub.col_basis.dtype == torch.float32 and sub.col_basis.shape == (96, 4)
    assert sub.row_basis.shape == (64, 4)
    eye = torch.eye(4)
    assert torch.allclose(sub.col_basis.T @ sub.col_basis, eye, atol=1e-5)
    assert torch.allclose(sub.row_basis.T @ sub.row_basis, eye, atol=1e-5)
    assert sub.spectrum.shape == (64,)
    assert torch.all(sub.singular_values[:-1] >= sub.singular_values[1:])
    root = sub.singular_values.sqrt()
    assert torch.allclose(sub.col_factor(), sub.col_basis * root)
    assert torch.allclose(sub.row_factor(2), sub.row_basis[:, :2] * root[:2])
    plain = extract(ups, ExtractConfig(rank=4, keep_scale="none"))
    assert torch.allclose(plain.col_factor(), plain.col_basis)
    with pytest.raises(ConfigError, match="1..4"):
        sub.col_factor(5)


@pytest.mark.parametrize("method", ["irls", "mean", "svd"])
@pytest.mark.parametrize(
    ("seed", "d_out", "d_in", "r", "k"), [(0, 40, 30, 4, 3), (1, 12, 50, 3, 5), (2, 64, 64, 8, 6)]
)
def test_factored_equals_dense(
    method: str, seed: int, d_out: int, d_in: int, r: int, k: int
) -> None:
    ups = _random_updates(seed, k, d_out, d_in, r)
    for rank in (5, "cliff-energy"):
        cfg = ExtractConfig(method=method, rank=rank, alpha=0.7, iters=8, tol=0.0)
        fac, den = extract(ups, cfg), extract_dense(ups, cfg)
        assert fac.rank == den.rank
        assert fac.iterations == den.iterations
        scale = float(den.spectrum[0])
        assert torch.allclose(fac.spectrum, den.spectrum, rtol=0, atol=1e-4 * scale)
        assert torch.allclose(fac.weights, den.weights, rtol=1e-4, atol=0)
        proj_f = fac.col_basis.double() @ fac.col_basis.double().T
        proj_d = den.col_basis.double() @ den.col_basis.double().T
        assert torch.linalg.matrix_norm(proj_f - proj_d, ord=2) < 1e-4
        proj_f = fac.row_basis.double() @ fac.row_basis.double().T
        proj_d = den.row_basis.double() @ den.row_basis.double().T
        assert torch.linalg.matrix_norm(proj_f - proj_d, ord=2) < 1e-4
        if method != "svd":
            rec_f, rec_d = fac.update().dense(), den.update().dense()
            err = torch.linalg.matrix_norm(rec_f - rec_d) / torch.linalg.matrix_norm(rec_d)
            assert err < 1e-4


def test_irls_weights_match_dense_on_outlier_data() -> None:
    ups, _, _ = _planted(seed=3)
    cfg = ExtractConfig(rank=4, iters=30, tol=0.0)
    fac, den = extract(ups, cfg), extract_dense(ups, cfg)
    assert torch.allclose(fac.weights, den.weights, rtol=1e-4)
    assert fac.iterations == den.iterations == 30


def test_cliff_selection_finds_planted_rank() -> None:
    ups, _, _ = _planted(seed=2, outliers=0)
    for method in ("irls", "mean", "svd"):
        assert extract(ups, ExtractConfig(method=method, rank="cliff-gap")).rank == 4
    # energies of the planted spectrum 4, 3, 2, 1: 16/30, 25/30, 29/30, 30/30 (plus noise)
    assert extract(ups, ExtractConfig(rank="cliff-energy", energy=0.99)).rank == 4
    assert extract(ups, ExtractConfig(rank="cliff-energy", energy=0.8)).rank == 2
    assert extract(ups, ExtractConfig(rank="cliff-gap", max_rank=3)).rank in (1, 2, 3)


def test_select_rank_rules() -> None:
    s = torch.tensor([10.0, 9.0, 8.0, 0.5, 0.4, 0.0, 0.0])
    assert select_rank(s, ExtractConfig(rank="cliff-gap")) == 3
    assert select_rank(s, ExtractConfig(rank="cliff-gap", max_rank=2)) == 2
    assert select_rank(s, ExtractConfig(rank=16)) == 7
    assert select_rank(s, ExtractConfig(rank=16, max_rank=5)) == 5
    assert select_rank(s, ExtractConfig(rank="cliff-energy", energy=1.0)) == 5
    assert select_rank(torch.zeros(4), ExtractConfig(rank="cliff-gap")) == 1
    assert select_rank(torch.zeros(4), ExtractConfig(rank="cliff-energy")) == 1


def test_identical_adapters_and_zero_updates() -> None:
    g = torch.Generator().manual_seed(4)
    col, row = torch.randn(20, 3, generator=g), torch.randn(15, 3, generator=g)
    sub = extract([Update(col, row)] * 4, ExtractConfig(rank="cliff-energy", energy=1.0))
    assert sub.rank == 3
    assert extract([Update(col, row)] * 4, ExtractConfig(rank="cliff-gap")).rank < 3
    dense = (col.double() @ row.double().T).float()
    assert torch.allclose(sub.update().dense().float(), dense, atol=1e-4)
    zero = extract([Update(torch.zeros(20, 3), torch.randn(15, 3))] * 2, ExtractConfig(rank=2))
    assert zero.rank == 2 and torch.isfinite(zero.weights).all()


def test_from_peft_and_mixed_ranks() -> None:
    g = torch.Generator().manual_seed(5)
    lora_a, lora_b = torch.randn(4, 10, generator=g), torch.randn(7, 4, generator=g)
    up = from_peft(lora_a, lora_b, scaling=2.0)
    assert up.shape == (7, 10) and up.rank == 4
    assert torch.allclose(up.dense().float(), 2.0 * lora_b @ lora_a)
    other = Update(torch.randn(7, 2, generator=g), torch.randn(10, 2, generator=g))
    cfg = ExtractConfig(rank=3)
    assert torch.allclose(
        extract([up, other], cfg).spectrum, extract_dense([up, other], cfg).spectrum, atol=1e-4
    )


def test_extract_all_keeps_layer_names() -> None:
    layers = {
        "blocks.0.attn.qkv": _random_updates(0, 3, 24, 8, 2),
        "blocks.0.mlp.fc2": _random_updates(1, 3, 8, 32, 2),
    }
    out = extract_all(layers, ExtractConfig(rank=2))
    assert list(out) == list(layers)
    assert all(isinstance(s, LayerSubspace) for s in out.values())
    assert out["blocks.0.mlp.fc2"].row_basis.shape == (32, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pca"}, "pca"),
        ({"rank": 0}, "rank"),
        ({"rank": "cliff"}, "cliff-gap"),
        ({"rank": True}, "rank"),
        ({"energy": 1.5}, "energy"),
        ({"max_rank": 0}, "max_rank"),
        ({"alpha": 3.0}, "alpha"),
        ({"eps": 0.0}, "eps"),
        ({"iters": 0}, "iters"),
        ({"tol": -1.0}, "tol"),
        ({"keep_scale": "full"}, "sqrt"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExtractConfig(**kwargs)


def test_bad_updates_raise_data_errors() -> None:
    with pytest.raises(DataError, match="at least one"):
        extract([])
    with pytest.raises(DataError, match="same r"):
        Update(torch.zeros(4, 2), torch.zeros(5, 3))
    with pytest.raises(DataError, match="share the weight shape"):
        extract(
            [Update(torch.ones(4, 1), torch.ones(5, 1)), Update(torch.ones(4, 1), torch.ones(6, 1))]
        )
    with pytest.raises(DataError, match="lora_A"):
        from_peft(torch.zeros(2, 5), torch.zeros(4, 3))
