"""Mining against a planted truth, end to end: data whose optimal updates lie in known
per-factor subspaces -> real PEFT LoRA adapters (keyed, independent inits), trained
and saved like mined ones -> the real extraction and bank -> the evidence measures.

Each factor a has a planted rank-2 update U_a S V_a^T per layer (plus, in one case, a
rank-1 component u_c s v_c^T shared by every factor). An adapter of factor a learns
y = (W0 + planted) x on its own inputs. The extraction must recover U_a and V_a, adapters
of one factor must overlap far more than adapters of different factors, on both the
column and the row side, and the row spaces must have left the LoRA init. A control arm
gives every adapter the same init (the old shared-seed mining): its cross-factor row
overlap rises far above the random null, which is the artifact these tests guard against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attrsub.adapters.lora import (
    LoraSpec,
    apply_lora,
    init_key,
    lora_a_weights,
    movement,
    save_adapter,
)
from attrsub.subspace.bank import load_bank, save_bank, summary
from attrsub.subspace.disentangle import principal_angles
from attrsub.subspace.evidence import evidence_rows, load_adapters
from attrsub.subspace.extract import ExtractConfig
from attrsub.subspace.mine import build_bank, find_adapters

FACTORS = ("texture", "geometry", "camera", "lighting")
LAYERS = {"net.a": (24, 32), "net.b": (32, 40)}  # name -> (d_out, d_in)
PLANTED_RANK, LORA_RANK, GROUPS = 2, 4, 3
STEPS, LR, SAMPLES = 300, 1e-2, 256


class Planted(nn.Module):
    """Independent linear layers, each fed its own input: a layer's optimal LoRA update is
    exactly the planted one, with nothing coupling the layers."""

    def __init__(self, w0: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.net = nn.Module()
        for name, w in w0.items():
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            self.net.add_module(name.split(".")[1], lin)

    def forward(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.get_submodule(name)(x) for name, x in xs.items()}


def _orth(gen: torch.Generator, d: int, k: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return q.float()


def _truth(shared: bool) -> dict:
    """Base weights, per-factor planted bases and the shared component, per layer."""
    gen = torch.Generator().manual_seed(7)
    w0 = {n: torch.randn(o, i, generator=gen) / math.sqrt(i) for n, (o, i) in LAYERS.items()}
    planted = {
        a: {n: (_orth(gen, o, PLANTED_RANK), _orth(gen, i, PLANTED_RANK))
            for n, (o, i) in LAYERS.items()}
        for a in FACTORS
    }
    common = ({n: (_orth(gen, o, 1), _orth(gen, i, 1)) for n, (o, i) in LAYERS.items()}
              if shared else None)
    return {"w0": w0, "planted": planted, "common": common}


def _target(truth: dict, factor: str, layer: str) -> torch.Tensor:
    u, v = truth["planted"][factor][layer]
    delta = u @ torch.diag(torch.tensor([1.0, 0.7])) @ v.T
    if truth["common"] is not None:
        uc, vc = truth["common"][layer]
        delta = delta + 0.8 * uc @ vc.T
    return truth["w0"][layer] + delta


def _mine(truth: dict, factor: str, group: int, out: Path, key: str) -> Path:
    """One adapter as attrsub.subspace.mine.mine_adapter makes one: keyed LoRA, trained, saved."""
    gen = torch.Generator().manual_seed(1000 + 10 * FACTORS.index(factor) + group)
    xs = {n: torch.randn(SAMPLES, i, generator=gen) for n, (_, i) in LAYERS.items()}
    ys = {n: x @ _target(truth, factor, n).T for n, x in xs.items()}
    model = apply_lora(Planted(truth["w0"]), LoraSpec(rank=LORA_RANK), init_key=key,
                       targets=list(LAYERS))
    a0 = {n: a.detach().clone() for n, a in lora_a_weights(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    for _ in range(STEPS):
        pred = model(xs)
        loss = sum(((pred[n] - ys[n]) ** 2).mean() for n in LAYERS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit = float(loss.detach())
    assert fit < 1e-3, f"{factor}-g{group} did not fit its planted update: {fit}"
    folder = out / f"{factor}-g{group}"
    save_adapter(model, folder, {
        "base": {"name": "planted", "weights_hash": "planted-w0"}, "factor": factor,
        "seed": 0, "rank": LORA_RANK, "init": {"key": key, "scale": 1.0},
        "movement": movement(model, a0, LoraSpec(rank=LORA_RANK).scaling),
    })
    return folder


def _adapters(truth: dict, root: Path, shared_init: bool) -> Path:
    root.mkdir()
    for factor in FACTORS:
        for g in range(GROUPS):
            key = init_key("shared", 0, 0) if shared_init else init_key(factor, g, 0)
            _mine(truth, factor, g, root, key)
    return root


def _overall(rows: list[dict], measure: str, side: str) -> dict:
    (row,) = [r for r in rows if r["measure"] == measure and r["side"] == side
              and r["layer"] == "all" and r["factor"] == "all" and r["adapter"] is None]
    return row


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)  # the global RNG PEFT draws from: keyed inits must not depend on it
    root = tmp_path_factory.mktemp("planted")
    truth = _truth(shared=False)
    return {"truth": truth, "adapters": _adapters(truth, root / "independent", False),
            "control": _adapters(truth, root / "shared-init", True)}


def test_keyed_inits_are_independent(planted: dict) -> None:
    aset = load_adapters(find_adapters([planted["adapters"]]))
    a0 = [torch.cat([init[n].flatten() for n in LAYERS]) for init in aset.inits]
    cos = [float(torch.nn.functional.cosine_similarity(a0[i], a0[j], dim=0))
           for i in range(len(a0)) for j in range(i)]
    # independent draws: cosines of a few hundred entries scatter around 0 by ~1/sqrt(dim)
    assert np.mean(np.abs(cos)) < 0.1
    assert max(abs(c) for c in cos) < 5 / math.sqrt(len(a0[0]))
    # the key alone fixes the init: the same key redraws the same A0 on any global seed
    torch.manual_seed(123)
    model = apply_lora(Planted(planted["truth"]["w0"]), LoraSpec(rank=LORA_RANK),
                       init_key=init_key("texture", 0, 0), targets=list(LAYERS))
    again = lora_a_weights(model)
    first = aset.inits[aset.names.index("texture-g0")]
    assert first is not None
    assert all(torch.equal(again[n], first[n]) for n in LAYERS)


def test_extraction_recovers_the_planted_subspaces(planted: dict, tmp_path: Path) -> None:
    bank = build_bank(find_adapters([planted["adapters"]]),
                      ExtractConfig(method="irls", rank=PLANTED_RANK), permutations=500)
    bank = load_bank(save_bank(bank, tmp_path / "bank.safetensors"))
    for factor in FACTORS:
        for layer in LAYERS:
            u, v = planted["truth"]["planted"][factor][layer]
            sub = bank.subspaces[factor][layer]
            assert principal_angles(sub.col_basis, u).max() < 5.0, (factor, layer)
            assert principal_angles(sub.row_basis, v).max() < 5.0, (factor, layer)
    claim = summary(bank)["claim1"]
    assert claim["verdict"] == "holds"


def test_within_factor_overlap_exceeds_cross_on_both_sides(planted: dict) -> None:
    aset = load_adapters(find_adapters([planted["adapters"]]))
    rows = evidence_rows(aset, ExtractConfig(rank=PLANTED_RANK), permutations=2000)
    for side in ("col", "row"):
        ov = _overall(rows, "overlap", side)
        assert ov["p_value"] < 0.01, side
        assert ov["within"] > 0.45 > 0.2 > ov["cross"], (side, ov)
        assert ov["cross"] < 1.5 * ov["random"] + 0.05, (side, ov)
        held = _overall(rows, "heldout", side)
        assert held["within"] > 0.9 > 0.2 > held["cross"], (side, held)
    # training left the init: the row space shares only chance directions with A0
    init = _overall(rows, "init", "row")
    assert init["within"] < 0.7


def test_a_shared_init_shows_up_as_a_shared_row_space(planted: dict) -> None:
    """The control: one init for every adapter inflates cross-factor row overlap far above
    the null, so the independent-init results above are not what any init would give."""
    independent = evidence_rows(load_adapters(find_adapters([planted["adapters"]])),
                                ExtractConfig(rank=PLANTED_RANK), permutations=200)
    shared = evidence_rows(load_adapters(find_adapters([planted["control"]])),
                           ExtractConfig(rank=PLANTED_RANK), permutations=200)
    ind, ctl = _overall(independent, "overlap", "row"), _overall(shared, "overlap", "row")
    assert ctl["cross"] > 2 * ind["cross"]
    assert ctl["cross"] > 2 * ctl["random"]


def test_a_component_shared_by_every_factor(tmp_path: Path) -> None:
    """A rank-1 update common to all factors: each factor's subspace contains it
    beside its own planted directions, so cross-factor overlap sits above the null while
    within-factor overlap still exceeds it."""
    truth = _truth(shared=True)
    root = _adapters(truth, tmp_path / "adapters", False)
    aset = load_adapters(find_adapters([root]))
    cfg = ExtractConfig(rank=PLANTED_RANK + 1)
    bank = build_bank(find_adapters([root]), cfg, permutations=500)
    for factor in FACTORS:
        for layer in LAYERS:
            u, _ = truth["planted"][factor][layer]
            uc, _ = truth["common"][layer]
            col = bank.subspaces[factor][layer].col_basis
            assert principal_angles(col, torch.cat([u, uc], 1)).max() < 5.0, (factor, layer)
    rows = evidence_rows(aset, cfg, permutations=2000)
    for side in ("col", "row"):
        ov = _overall(rows, "overlap", side)
        assert ov["p_value"] < 0.01
        assert ov["cross"] > 1.5 * ov["random"]  # the shared component
        assert ov["within"] > ov["cross"] + 0.2
    angles = np.mean([principal_angles(bank.subspaces["texture"][n].col_basis,
                                       bank.subspaces["camera"][n].col_basis).min()
                      for n in LAYERS])
    assert angles < 5.0  # the shared direction: the factor subspaces are not disjoint
