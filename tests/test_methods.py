"""Every fine-tuning method meets the one contract (``attrsub.methods.base.Method``):
prepare trains exactly what it counts, save/load restores the trained model, merge folds the
update into plain weights without changing outputs, and the registry names each method once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.methods import METHODS, REGISTRY, Context, get_method
from attrsub.methods.reduced import WEIGHTS_FILE, ReducedLinear, random_bases
from attrsub.model.base import BaseModel, load_base
from attrsub.subspace.bank import BasisSet

RANK = 2


@pytest.fixture(scope="module")
def base() -> BaseModel:
    torch.set_num_threads(1)
    return load_base("vggt-tiny")


def _images() -> torch.Tensor:
    return torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def _ctx(base: BaseModel) -> Context:
    """A ready basis stands in for a mined bank's (the reduced method takes either)."""
    model = copy.deepcopy(base.model)
    layers = REGISTRY["reduced"].layers(model, RANK)
    bases = random_bases(model, layers, RANK, seed=7)
    basis = BasisSet(bases=bases, basis_hash="test-basis", weights_hash=base.weights_hash,
                     factors=("texture",))
    return Context(base_hash=base.weights_hash, seed=3, basis=basis)


def _prepared(name: str, base: BaseModel) -> tuple[torch.nn.Module, object, Context]:
    method = get_method(name)
    config = method.config({"rank": RANK, "factors": ["texture"], "seed": 3})
    ctx = _ctx(base)
    model = method.prepare(copy.deepcopy(base.model), config, ctx)
    with torch.no_grad():  # a trained state: move every trainable value off its init
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval(), config, ctx


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_images())["depth"]


@pytest.mark.parametrize("name", METHODS)
def test_prepare_trains_exactly_what_it_counts(name: str, base: BaseModel) -> None:
    model, _, _ = _prepared(name, base)
    count = get_method(name).trainable_count(model)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (count > 0) == get_method(name).trains


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_gives_the_same_outputs(name: str, base: BaseModel,
                                               tmp_path: Path) -> None:
    method = get_method(name)
    model, config, ctx = _prepared(name, base)
    method.save(model, tmp_path, ctx, {"base": {"name": base.name,
                                               "weights_hash": base.weights_hash}})
    if not method.saved_as:
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(ConfigError, match="saves no adapter"):
            method.load(base, tmp_path, config, ctx)
        return
    assert (tmp_path / method.saved_as).exists()
    fresh = BaseModel(base.name, base.weights, base.weights_hash, copy.deepcopy(base.model))
    loaded = method.load(fresh, tmp_path, config, ctx).eval()
    torch.testing.assert_close(_out(loaded), _out(model), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_merge_keeps_outputs_and_leaves_plain_layers(name: str, base: BaseModel) -> None:
    method = get_method(name)
    model, _, _ = _prepared(name, base)
    before = _out(model)
    merged = method.merge(model).eval()
    torch.testing.assert_close(_out(merged), before, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, ReducedLinear) for m in merged.modules())
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_the_registry_describes_each_method_once() -> None:
    assert len(set(METHODS)) == len(METHODS) == len(REGISTRY)
    for name, m in REGISTRY.items():
        assert m.name == name and m.legend and m.color
        label = m.label(rank="4", width="16")
        if m.basis_family:
            assert label.endswith("d=16")
        elif m.takes_rank:
            assert label.endswith("r=4")
        else:
            assert label == m.legend
        if m.basis_family:
            assert m.takes_rank and m.saved_as == WEIGHTS_FILE
        if m.needs_bank:
            assert m.basis_family
    assert REGISTRY.where(needs_bank=True) == ("reduced",)
    assert "nope" not in REGISTRY
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; valid: none, full, lora"):
        get_method("nope")
