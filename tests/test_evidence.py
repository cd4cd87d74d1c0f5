"""The evidence measures on their own: factored bases and energies against dense matrices,
the permutation test against its null, and the claim-1 verdict's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrsub.adapters.update import Update
from attrsub.errors import ConfigError
from attrsub.subspace.evidence import (
    INIT_MAX,
    _energy,
    claim_summary,
    permutation_test,
    update_bases,
)


def _update(seed: int, d_out: int = 20, d_in: int = 12, r: int = 3) -> Update:
    g = torch.Generator().manual_seed(seed)
    return Update(torch.randn(d_out, r, generator=g, dtype=torch.float64),
                  torch.randn(d_in, r, generator=g, dtype=torch.float64))


def test_factored_bases_and_energies_match_the_dense_update() -> None:
    u = _update(0)
    dense = u.dense()
    uu, _, vh = torch.linalg.svd(dense)
    col, row = update_bases(u, 2)
    # the same top-2 singular subspaces as the dense SVD
    assert torch.allclose(col @ col.T, uu[:, :2] @ uu[:, :2].T, atol=1e-10)
    assert torch.allclose(row @ row.T, vh[:2].T @ vh[:2], atol=1e-10)
    basis, _ = torch.linalg.qr(torch.randn(20, 4, generator=torch.Generator().manual_seed(1),
                                           dtype=torch.float64))
    want = float((basis.T @ dense).square().sum() / dense.square().sum())
    assert _energy(u, basis, "col") == pytest.approx(want, rel=1e-10)
    rbasis, _ = torch.linalg.qr(torch.randn(12, 4, generator=torch.Generator().manual_seed(2),
                                            dtype=torch.float64))
    want = float((dense @ rbasis).square().sum() / dense.square().sum())
    assert _energy(u, rbasis, "row") == pytest.approx(want, rel=1e-10)
    assert _energy(u, uu[:, :3], "col") == pytest.approx(1.0)


def _pairs(labels: list[str], within: float, cross: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(labels)
    m = np.ones((1, n, n))
    for i in range(n):
        for j in range(i):
            v = (within if labels[i] == labels[j] else cross) + noise * rng.standard_normal()
            m[0, i, j] = m[0, j, i] = v
    return m


def test_permutation_test_finds_structure_and_respects_its_null() -> None:
    labels = [a for a in "ABCD" for _ in range(3)]
    structured = permutation_test(_pairs(labels, 0.5, 0.2, 0.02, 0), labels, 1000)
    assert structured["within"][0] > 0.45 and structured["cross"][0] < 0.25
    assert structured["p_value"][0] < 0.01
    # no structure: p is roughly uniform, so over many draws about 5% fall below 0.05
    ps = [permutation_test(_pairs(labels, 0.3, 0.3, 0.05, s), labels, 200)["p_value"][0]
          for s in range(60)]
    assert 0.0 <= np.mean(np.array(ps) < 0.05) <= 0.2
    assert 0.3 < np.mean(ps) < 0.7
    with pytest.raises(ConfigError, match="within and across"):
        permutation_test(np.ones((1, 3, 3)), ["A", "B", "C"], 10)


def _claim_rows(p: float, within: float, cross: float, held: tuple[float, float],
                init: float | None) -> list[dict]:
    rows = []
    for side in ("col", "row"):
        rows.append({"measure": "overlap", "side": side, "layer": "all", "factor": "all",
                     "adapter": None, "within": within, "cross": cross, "random": 0.1,
                     "p_value": p, "permutations": 1000})
        rows.append({"measure": "heldout", "side": side, "layer": "all", "factor": "all",
                     "adapter": None, "within": held[0], "cross": held[1], "random": 0.1,
                     "p_value": None, "permutations": None})
    if init is not None:
        rows.append({"measure": "init", "side": "row", "layer": "all", "factor": "all",
                     "adapter": None, "within": init, "cross": None, "random": 0.1,
                     "p_value": None, "permutations": None})
    return rows


def test_claim_one_needs_significance_held_out_energy_and_a_row_space_past_its_init() -> None:
    assert claim_summary(_claim_rows(0.001, 0.3, 0.2, (0.6, 0.4), 0.2))["verdict"] == "holds"
    # the shared-init artifact: significant, but the row space is its init
    stuck = claim_summary(_claim_rows(0.001, 0.98, 0.97, (0.95, 0.92), INIT_MAX + 0.4))
    assert stuck["row"]["status"] == "still the init"
    assert stuck["verdict"] == "holds on the col side only"
    assert claim_summary(_claim_rows(0.2, 0.3, 0.2, (0.6, 0.4), 0.2))["verdict"] == \
        "does not hold"
    held_out_fails = claim_summary(_claim_rows(0.001, 0.3, 0.2, (0.3, 0.4), 0.2))
    assert held_out_fails["col"]["status"] == "not factor-specific"
