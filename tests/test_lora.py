"""PEFT LoRA on our model: targets, adapter folders, provenance checks and mining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from attrsub.adapters.lora import (
    SIDECAR,
    WEIGHTS_FILE,
    LoraSpec,
    apply_lora,
    init_key,
    keyed_lora_a,
    load_adapter,
    lora_a_weights,
    read_sidecar,
    read_updates,
    save_adapter,
    target_modules,
)
from attrsub.cli import main
from attrsub.errors import ConfigError, DataError
from attrsub.model import build
from attrsub.model.base import BaseModel
from attrsub.subspace.mine import mine_adapter

MODS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("vggt-tiny").eval()


def _images() -> torch.Tensor:
    return torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def _trained_lora(seed: int = 0) -> PeftModel:
    model = apply_lora(_model(seed), LoraSpec(rank=2))
    with torch.no_grad():  # stand-in for training: make every lora_B non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_spec_defaults_and_validation() -> None:
    spec = LoraSpec()
    assert (spec.rank, spec.alpha, spec.dropout, spec.scaling) == (16, 32.0, 0.0, 2.0)
    assert LoraSpec(rank=4, alpha=4).scaling == 1.0
    for bad in ({"rank": 0}, {"alpha": -1.0}, {"dropout": 1.0}, {"targets": ("attn.q",)},
                {"blocks": ("patch",)}, {"blocks": ()}):
        with pytest.raises(ConfigError):
            LoraSpec(**bad)


def test_targets_are_the_blocks_four_linears_never_the_patch_embed() -> None:
    model = _model()
    names = target_modules(model, LoraSpec())
    want = {f"aggregator.{k}_blocks.{i}.{m}" for k in ("frame", "global") for i in range(4)
            for m in MODS}
    assert set(names) == want and len(names) == 32
    frame = target_modules(model, LoraSpec(blocks=("frame",), targets=("mlp.fc1",)))
    assert frame == [f"aggregator.frame_blocks.{i}.mlp.fc1" for i in range(4)]
    with_heads = target_modules(model, LoraSpec(heads=True))
    extra = set(with_heads) - want
    assert extra and all(n.startswith("camera_head.") for n in extra)
    assert "camera_head.trunk.0.attn.qkv" in extra and "camera_head.pose_branch.fc2" in extra
    assert not any("patch_embed" in n for n in with_heads)

    peft_model = apply_lora(model, LoraSpec(rank=2))
    adapted = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
               for n, _ in peft_model.named_modules() if n.endswith(".lora_A.default")}
    assert adapted == want


def test_apply_lora_starts_at_the_base_and_trains_only_lora() -> None:
    x = _images()
    base = _model()
    with torch.no_grad():
        want = base(x)["depth"]
    model = apply_lora(_model(), LoraSpec(rank=2))
    with torch.no_grad():
        assert torch.equal(model(x)["depth"], want)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # per block sum of (d_in + d_out) over the 4 linears is 1024; 8 blocks, r = 2
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 * 1024 * 2
    pissa = apply_lora(_model(), LoraSpec(rank=2), init="pissa")
    with torch.no_grad():
        assert torch.allclose(pissa(x)["depth"], want, atol=1e-4)
    with pytest.raises(ConfigError, match="unknown LoRA init"):
        apply_lora(_model(), LoraSpec(), init="olora")


def test_save_load_round_trip_updates_and_errors(tmp_path: Path) -> None:
    model = _trained_lora()
    sidecar = {"base": {"name": "vggt-tiny", "weights_hash": "hash-a"}, "factor": "texture"}
    folder = save_adapter(model, tmp_path / "ad", sidecar)
    meta = read_sidecar(folder)
    assert meta["kind"] == "lora" and meta["factor"] == "texture" and "attrsub_version" in meta

    x = _images()
    with torch.no_grad():
        want = model(x)["depth"]
    loaded = load_adapter(folder, BaseModel("vggt-tiny", None, "hash-a", _model()))
    with torch.no_grad():
        assert torch.allclose(loaded(x)["depth"], want, atol=1e-6)

    updates = read_updates(folder)
    assert set(updates) == set(target_modules(model, LoraSpec()))
    for name, upd in updates.items():
        layer = model.get_submodule(f"base_model.model.{name}")
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(upd.dense(), (b @ a).double() * (4.0 / 2), atol=1e-6)  # alpha/r
        assert torch.allclose(upd.dense(), layer.get_delta_weight("default").double(), atol=1e-6)

    with pytest.raises(DataError, match="hash-a.*hash-b"):
        load_adapter(folder, BaseModel("vggt-tiny", None, "hash-b", _model()))
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(DataError, match="corrupt"):
        load_adapter(folder, BaseModel("vggt-tiny", None, "hash-a", _model()))
    with pytest.raises(DataError, match="corrupt"):
        read_updates(folder)
    with pytest.raises(DataError, match="not an adapter folder"):
        read_sidecar(tmp_path)


def test_mine_adapter_writes_adapter_and_sidecar(tmp_path: Path) -> None:
    steps: list[int] = []
    out = mine_adapter(
        "texture", 1, 3, tmp_path / "a", random_init=True, scenes=2, views=2, size=28,
        steps=2, rank=2, cache=tmp_path / "cache", checkpoint_dir=tmp_path / "ckpt",
        callback=lambda info: steps.append(info.step),
    )
    assert steps == [1, 2]
    assert (out / WEIGHTS_FILE).is_file() and (out / SIDECAR).is_file()
    meta = json.loads((out / SIDECAR).read_text())
    assert meta["base"] == {"name": "vggt-tiny", "weights_hash": "random-init"}
    assert meta["factor"] == "texture" and meta["seed"] == 3 and meta["kind"] == "lora"
    assert meta["dataset"]["group"] == 1 and meta["dataset"]["size"] == 28
    assert (meta["rank"], meta["alpha"], meta["steps"]) == (2, 4.0, 2)
    assert meta["final_loss"] > 0
    assert meta["init"]["key"] == init_key("texture", 1, 3)
    assert set(meta["movement"]) == {"lora_a_change", "update_norm"}
    assert meta["movement"]["lora_a_change"] > 0 and meta["movement"]["update_norm"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]  # no temp left
    assert len(read_updates(out)) == 32
    with pytest.raises(ConfigError, match="already exists"):
        mine_adapter("texture", 1, 3, out, random_init=True)
    with pytest.raises(ConfigError, match="unknown factor"):
        mine_adapter("smell", 0, 0, tmp_path / "b", random_init=True)


def test_cli_mine_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["mine-adapter", "--factor", "geometry", "--group", "0", "--seed", "0",
            "--out", str(tmp_path / "g"), "--untrained", "--scenes", "2", "--views", "2",
            "--size", "28", "--steps", "1", "--rank", "2", "--cache", str(tmp_path / "c")]
    assert main(args) == 0
    assert read_sidecar(tmp_path / "g")["factor"] == "geometry"
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_mined_adapters_start_from_independent_keyed_inits() -> None:
    """Each (factor, group, seed) draws its own lora_A, whatever torch's global seed is: a
    shared init would be a subspace every adapter shares that no factor caused."""
    keys = [init_key(f, g, 0) for f in ("texture", "camera") for g in range(3)]
    inits = []
    for key in keys:
        torch.manual_seed(0)  # the old mining seeded every adapter's init like this
        model = apply_lora(_model(), LoraSpec(rank=8), init_key=key)
        a = lora_a_weights(model)
        assert all(torch.equal(w, keyed_lora_a(key, n, tuple(w.shape))) for n, w in a.items())
        inits.append(torch.cat([w.detach().flatten() for w in a.values()]))
    cos = [float(torch.nn.functional.cosine_similarity(inits[i], inits[j], dim=0))
           for i in range(len(inits)) for j in range(i)]
    assert max(abs(c) for c in cos) < 0.1
    default = apply_lora(_model(), LoraSpec(rank=8))  # PEFT's own draw has the same scale
    (name, w), = list(lora_a_weights(default).items())[:1]
    keyed = keyed_lora_a(keys[0], name, tuple(w.shape))
    assert float(keyed.abs().max()) <= 1 / w.shape[1] ** 0.5
    assert abs(float(keyed.std() / w.detach().std()) - 1) < 0.15
    with pytest.raises(ConfigError, match="keyed init"):
        apply_lora(_model(), LoraSpec(rank=2), init="pissa", init_key=keys[0])
