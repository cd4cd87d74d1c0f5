"""The reduced-subspace adapter and the method registry, on the real tiny model and renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attrsub.adapters.lora import LoraSpec, target_modules
from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import ConfigError, DataError
from attrsub.methods import METHODS, prepare
from attrsub.methods.reduced import (
    ReducedLinear,
    apply_reduced,
    load_reduced,
    merge,
    psv_bases,
    random_bases,
    save_reduced,
    trainable_count,
)
from attrsub.model import build
from attrsub.subspace.integrate import IntegratedBasis
from attrsub.train.loop import TrainConfig, train

# vggt-tiny: 4 frame + 4 global blocks; per block qkv 192x64, proj 64x64, fc1 256x64, fc2 64x256.
BLOCK_IO = 192 + 64 + 64 + 64 + 256 + 64 + 64 + 256  # sum of d_out + d_in over the 4 linears


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SceneDataset:
    root = tmp_path_factory.mktemp("data")
    spec = DatasetSpec("canonical", scenes=2, views=2, size=28)
    return SceneDataset(render_factor_dataset(spec, root))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("vggt-tiny").eval()


def _images(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _layers(model: torch.nn.Module) -> list[str]:
    return target_modules(model, LoraSpec())


def _randomise_m(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ReducedLinear):
                m.M.normal_(0, 0.5)


def test_at_init_the_adapter_equals_the_base() -> None:
    base, model = _model(), _model()
    apply_reduced(model, random_bases(model, _layers(model), 3, seed=0))
    x = _images()
    with torch.no_grad():
        a, b = base(x), model(x)
    assert torch.equal(a["depth"], b["depth"])
    assert torch.equal(a["pose_enc"], b["pose_enc"])


def test_only_m_gets_gradients() -> None:
    model = _model()
    apply_reduced(model, random_bases(model, _layers(model), 3, seed=0))
    _randomise_m(model)
    out = model(_images())
    (out["depth"].square().mean() + out["pose_enc"].square().mean()).backward()
    for name, p in model.named_parameters():
        if name.endswith(".M"):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_merged_model_matches_the_adapter_and_is_plain_linear() -> None:
    model = _model()
    apply_reduced(model, random_bases(model, _layers(model), 4, seed=1))
    _randomise_m(model)
    x = _images()
    with torch.no_grad():
        want = model(x)
        merge(model)
        got = model(x)
    assert not any(isinstance(m, ReducedLinear) for m in model.modules())
    assert type(model.get_submodule("aggregator.frame_blocks.0.attn.qkv")) is torch.nn.Linear
    assert torch.allclose(got["depth"], want["depth"], atol=1e-5)
    assert torch.allclose(got["pose_enc"], want["pose_enc"], atol=1e-5)


def test_parameter_counts_are_exact_and_m_may_be_non_square() -> None:
    model = _model()
    apply_reduced(model, random_bases(model, _layers(model), 3, seed=0))
    assert trainable_count(model) == 32 * 3 * 3 == 288
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 288

    model = _model()
    g = torch.Generator().manual_seed(0)
    bases = {
        "aggregator.frame_blocks.0.attn.qkv": IntegratedBasis(
            torch.linalg.qr(torch.randn(192, 5, generator=g))[0],
            torch.linalg.qr(torch.randn(64, 2, generator=g))[0], ("a",), (5,), "qr",
        ),
        "aggregator.global_blocks.1.mlp.fc2": IntegratedBasis(
            torch.linalg.qr(torch.randn(64, 3, generator=g))[0],
            torch.linalg.qr(torch.randn(256, 7, generator=g))[0], ("a",), (7,), "qr",
        ),
    }
    apply_reduced(model, bases)
    assert trainable_count(model) == 5 * 2 + 3 * 7
    _randomise_m(model)
    x = _images()
    with torch.no_grad():
        want = model(x)["depth"]
        merge(model)
        assert torch.allclose(model(x)["depth"], want, atol=1e-5)


def test_psv_bases_are_the_top_singular_vectors() -> None:
    model = _model()
    name = "aggregator.global_blocks.2.mlp.fc1"
    b = psv_bases(model, [name], 4)[name]
    w = model.get_submodule(name).weight.detach()
    s = torch.linalg.svdvals(w)
    core = b.U.T @ w @ b.V
    assert torch.allclose(core, torch.diag(s[:4]), atol=1e-4)


def test_save_load_round_trip_and_basis_and_base_checks(tmp_path: Path) -> None:
    model = _model()
    apply_reduced(model, random_bases(model, _layers(model), 3, seed=0), "basis-a")
    _randomise_m(model)
    path = save_reduced(model, tmp_path / "m.safetensors", base_hash="base-1")

    same = _model()
    apply_reduced(same, random_bases(same, _layers(same), 3, seed=0), "basis-a")
    load_reduced(same, path, base_hash="base-1")
    for (n, a), (_, b) in zip(model.named_parameters(), same.named_parameters(), strict=True):
        assert torch.equal(a, b), n

    other = _model()
    apply_reduced(other, random_bases(other, _layers(other), 3, seed=1), "basis-b")
    with pytest.raises(DataError, match="basis-a.*basis-b"):
        load_reduced(other, path)
    with pytest.raises(DataError, match="base-1.*base-2"):
        load_reduced(same, path, base_hash="base-2")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        load_reduced(same, path)


def test_bad_inputs_fail_before_work() -> None:
    model = _model()
    with pytest.raises(ConfigError, match=r"aggregator\.frame_blocks\.0\.attn\.qkv.*width 64"):
        prepare("psv", model, rank=65)
    with pytest.raises(ConfigError, match="width 64"):
        prepare("lora", _model(), rank=65)
    with pytest.raises(ConfigError, match="unknown method 'adalora'.*reduced"):
        prepare("adalora", model)
    with pytest.raises(ConfigError, match="needs a subspace bank"):
        prepare("reduced", model, factors=("texture",))
    bad = IntegratedBasis(torch.zeros(64, 2), torch.zeros(64, 2), ("a",), (2,), "qr")
    with pytest.raises(ConfigError, match="192 x 64"):
        apply_reduced(model, {"aggregator.frame_blocks.0.attn.qkv": bad})


def _patch_embed_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("aggregator.patch"))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "reduced"])
def test_every_method_prepares_and_trains_one_step(method: str, dataset: SceneDataset) -> None:
    model = _model()
    total = sum(p.numel() for p in model.parameters())
    expected = {
        "none": 0,
        "full": total - _patch_embed_params(model),
        "lora": 8 * BLOCK_IO * 2,
        "pissa": 8 * BLOCK_IO * 2,
        "psv": 32 * 2 * 2,
        "random": 32 * 2 * 2,
    }[method]
    model, count = prepare(method, model, rank=2, seed=0)
    assert count == expected
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = TrainConfig(steps=1, lr=1e-3, batch_size=1)
    if method == "none":
        with pytest.raises(ConfigError, match="no trainable"):
            train(model, dataset, cfg, progress=False)
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = train(model, dataset, cfg, progress=False)
    assert result.steps == 1
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
