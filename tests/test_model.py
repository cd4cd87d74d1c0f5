"""Tests of the VGGT-architecture model: reference state dict, shapes, training, weight files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from attrsub.errors import ConfigError, DataError
from attrsub.model import CONFIGS, VGGT, ModelConfig, build, load, save

# The workspace's shared/ sits inside the checkout on the device machine, beside it in CI.
_REPO = Path(__file__).resolve().parents[1]
REFERENCE = next(
    (p for p in (base / "shared" / "reference" / "vggt-1b-state-dict.json"
                 for base in (_REPO, _REPO.parent)) if p.is_file()),
    _REPO.parent / "shared" / "reference" / "vggt-1b-state-dict.json",
)


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, list[int]]]:
    if not REFERENCE.is_file():
        pytest.skip("reference/vggt-1b-state-dict.json not available")
    return json.loads(REFERENCE.read_text())["models"]


@pytest.fixture(scope="module")
def tiny() -> VGGT:
    torch.manual_seed(0)
    return build("vggt-tiny").eval()


@pytest.mark.parametrize(("track", "key"), [(True, "vggt_1b"), (False, "vggt_1b_no_track")])
def test_1b_on_meta_matches_vggt_state_dict(reference: dict, track: bool, key: str) -> None:
    model = build("vggt-1b", device="meta", track_head=track)
    assert all(p.is_meta for p in model.parameters())
    shapes = _shapes(model)
    expected = reference[key]
    assert list(shapes) == list(expected)  # same names, same order
    assert shapes == expected


def test_lora_target_layers_are_linear() -> None:
    model = build("vggt-1b", device="meta")
    names = dict(model.named_modules())
    for kind in ("frame_blocks", "global_blocks"):
        for i in (0, 23):
            for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                assert type(names[f"aggregator.{kind}.{i}.{leaf}"]) is nn.Linear


def test_peft_wraps_aggregator_layers() -> None:
    peft = pytest.importorskip("peft")
    model = build("vggt-tiny")
    cfg = peft.LoraConfig(r=4, lora_alpha=8,
                          target_modules=r".*(frame|global)_blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])")
    wrapped = peft.get_peft_model(model, cfg)
    lora = [n for n, _ in wrapped.named_parameters() if "lora_A" in n]
    assert len(lora) == 2 * model.config.depth * 4
    out = wrapped(torch.rand(1, 2, 3, 56, 56))
    assert out["pose_enc"].shape == (1, 2, 9)


def test_configs_are_valid_and_ordered_by_size() -> None:
    counts = {name: sum(p.numel() for p in build(name, device="meta").parameters())
              for name in CONFIGS}
    assert counts["vggt-tiny"] < 3e6 < 20e6 < counts["vggt-small"] < 40e6 < counts["vggt-1b"]
    assert all(cfg.patch_size == 14 for cfg in CONFIGS.values())


@pytest.mark.parametrize("bad", [{"dpt_layers": (0, 1, 2, 9)}, {"num_heads": 3},
                                 {"embed_dim": 72, "num_heads": 4}, {"img_size": 100},
                                 {"depth": 0}, {"no_such_field": 1}])
def test_bad_config_raises_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        build("vggt-tiny", device="meta", **bad)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="vggt-huge") as info:
        build("vggt-huge")
    assert all(name in str(info.value) for name in CONFIGS)
    with pytest.raises(ConfigError, match="vggt-huge"):
        load("vggt-huge", weights="nowhere.safetensors")


@pytest.mark.parametrize(("frames", "size"), [(2, 56), (3, 112), (4, 56)])
def test_tiny_forward_shapes(tiny: VGGT, frames: int, size: int) -> None:
    with torch.no_grad():
        out = tiny(torch.rand(1, frames, 3, size, size))
    assert out["pose_enc"].shape == (1, frames, 9)
    assert len(out["pose_enc_list"]) == tiny.config.camera_iterations
    assert out["depth"].shape == (1, frames, size, size, 1)
    assert out["depth_conf"].shape == (1, frames, size, size)
    assert out["world_points"].shape == (1, frames, size, size, 3)
    assert out["world_points_conf"].shape == (1, frames, size, size)
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()
    assert "track" not in out


def test_non_square_and_unbatched_input(tiny: VGGT) -> None:
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, 112, 56))
    assert out["depth"].shape == (1, 2, 112, 56, 1)
    assert out["world_points"].shape == (1, 2, 112, 56, 3)


@pytest.mark.parametrize("shape", [(1, 2, 3, 100, 112), (1, 2, 3, 112, 57), (1, 2, 4, 56, 56),
                                   (2, 56, 56)])
def test_bad_image_shape_raises_config_error(tiny: VGGT, shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError):
        tiny(torch.rand(*shape))


def test_heads_can_be_disabled() -> None:
    model = build("vggt-tiny", enable_point=False)
    assert model.point_head is None
    assert not any(k.startswith("point_head.") for k in model.state_dict())
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 56, 56))
    assert set(out) == {"pose_enc", "pose_enc_list", "depth", "depth_conf"}


def test_heads_run_only_when_asked(tiny: VGGT) -> None:
    """A forward may run a subset of the enabled heads (the paper's downstream runs keep the
    camera and depth heads); what it runs equals the full forward's outputs."""
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        full = tiny(images)
        some = tiny(images, heads=("camera", "depth"))
        depth_only = tiny(images, heads=["depth"])
    assert set(some) == {"pose_enc", "pose_enc_list", "depth", "depth_conf"}
    assert set(depth_only) == {"depth", "depth_conf"}
    assert torch.equal(some["depth"], full["depth"])
    assert torch.equal(some["pose_enc"], full["pose_enc"])
    with pytest.raises(ConfigError, match="unknown head"):
        tiny(images, heads=("depth", "normals"))


def test_track_head_outputs() -> None:
    torch.manual_seed(0)
    model = build("vggt-tiny", track_head=True).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 3, 112, 112), query_points=torch.rand(5, 2) * 100)
    assert out["track"].shape == (1, 3, 5, 2)
    assert out["vis"].shape == out["conf"].shape == (1, 3, 5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    images = torch.rand(1, 2, 3, 56, 56)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build("vggt-tiny", gradient_checkpointing=checkpointing).train()
        out = model(images)
        (out["depth"].mean() + out["pose_enc"].square().mean()).backward()
        grads.append(model.aggregator.frame_blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_tiny_overfits_one_batch() -> None:
    """The real training loss on one fixed synthetic batch falls at least tenfold."""
    from attrsub.train.losses import LossWeights, compute_loss

    torch.manual_seed(0)
    model = build("vggt-tiny", enable_point=False).train()
    frames, h, w = 2, 56, 56
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    extrinsics = torch.eye(4)[:3].repeat(1, frames, 1, 1)
    extrinsics[0, 1, :, 3] = torch.tensor([0.2, 0.0, 0.05])
    batch = {
        "images": torch.rand(1, frames, 3, h, w),
        "depths": (1.5 + 0.5 * xx + 0.3 * torch.sin(3 * yy)).expand(1, frames, h, w).clone(),
        "valid": torch.ones(1, frames, h, w, dtype=torch.bool),
        "extrinsics": extrinsics,
        "intrinsics": torch.tensor([[50.0, 0, 28], [0, 50.0, 28], [0, 0, 1]]).expand(
            1, frames, 3, 3),
    }
    weights = LossWeights(normalize_gt=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = best = float("inf")
    for step in range(150):
        loss, _ = compute_loss(model(batch["images"]), batch, weights)
        first = loss.item() if step == 0 else first
        best = min(best, loss.item())
        if best * 10 <= first:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert best * 10 <= first, f"loss only fell from {first:.3f} to {best:.3f}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip_strict(tiny: VGGT, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(tiny.state_dict(), path)
    else:
        save(tiny, path)
    loaded = load("vggt-tiny", weights=path).eval()
    assert loaded.track_head is None
    assert not loaded.aggregator.patch_embed.mask_token.requires_grad
    loaded_state = loaded.state_dict()
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["depth"], tiny(images)["depth"])


def test_load_follows_track_head_and_drops_disabled_heads(tmp_path: Path) -> None:
    path = save(build("vggt-tiny", track_head=True), tmp_path / "full.safetensors")
    assert load("vggt-tiny", weights=path).track_head is not None
    slim = load("vggt-tiny", weights=path, track_head=False, enable_point=False)
    assert slim.track_head is None and slim.point_head is None
    with pytest.raises(DataError, match="track_head"):
        load("vggt-tiny", weights=save(build("vggt-tiny"), tmp_path / "slim.safetensors"),
             track_head=True)


def test_missing_weights_file_is_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "model.pt"
    with pytest.raises(DataError, match="absent"):
        load("vggt-tiny", weights=missing)


def test_mismatched_state_dict_names_keys_and_shapes(tiny: VGGT, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    del state["aggregator.camera_token"]
    state["aggregator.extra.weight"] = torch.zeros(3)
    state["depth_head.norm.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(DataError) as info:
        load("vggt-tiny", weights=path)
    message = str(info.value)
    assert "aggregator.camera_token" in message
    assert "aggregator.extra.weight" in message
    assert "depth_head.norm.weight" in message and "[128]" in message and "[7]" in message


def test_corrupt_weights_file_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="junk"):
        load("vggt-tiny", weights=path)


def test_model_config_is_frozen() -> None:
    cfg = CONFIGS["vggt-tiny"]
    assert isinstance(cfg, ModelConfig)
    with pytest.raises(AttributeError):
        cfg.depth = 3  # type: ignore[misc]
