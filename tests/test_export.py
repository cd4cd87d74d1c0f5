"""Adapters and subspaces that other code loads: plain PEFT LoRA folders (loaded here with
``peft`` alone) and the paper authors' predefined-subspace file (their key layout, checked
at vggt-tiny and at vggt-1b shapes, and an exact round trip back into a bank)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attrsub.cli import main as cli_main
from attrsub.data.datasets import SceneDataset, collate, find_datasets
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import write_json
from attrsub.methods import load_trained, prepare
from attrsub.methods.export import export_peft_lora, peft_config, reduced_as_lora
from attrsub.methods.reduced import apply_reduced, reduced_layers, save_reduced
from attrsub.model import build, load
from attrsub.model.base import BaseModel, load_base, shipped_weights
from attrsub.subspace.authors import (
    BLOCK_TYPES,
    MODULES,
    authors_key,
    export_bank_authors,
    import_bank_authors,
    layer_name,
)
from attrsub.subspace.bank import Bank, load_bank, save_bank
from attrsub.subspace.extract import ExtractConfig, LayerSubspace
from attrsub.subspace.integrate import IntegratedBasis

_REPO = Path(__file__).resolve().parents[1]
REFERENCE = next(
    (p for p in (base / "shared" / "reference" / "vggt-1b-state-dict.json"
                 for base in (_REPO, _REPO.parent)) if p.is_file()),
    _REPO.parent / "shared" / "reference" / "vggt-1b-state-dict.json",
)
TINY = ["--scenes", "1", "--views", "2", "--size", "28"]
# A large rate, so one step moves every trained matrix far beyond the comparison tolerance.
LR = ["--lr", "0.05"]
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters trained by the CLI on the shipped tiny base: two mined LoRAs, their bank,
    a LoRA and a reduced fine-tune (one step each)."""
    root = tmp_path_factory.mktemp("export")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTRSUB_CACHE", str(cache))
        for factor in ("texture", "geometry"):
            assert cli_main(["mine-adapter", "--factor", factor, *TINY, "--steps", "1",
                             "--batch-size", "1", "--rank", "4", *LR, "--cache", str(cache),
                             "--out", str(root / "adapters" / factor)]) == 0
        assert cli_main(["bank", "build", "--adapters", str(root / "adapters"), "--out",
                         str(root / "bank.safetensors"), "--rank", "2", "--permutations", "0",
                         "--iters", "2"]) == 0
        ft = ["finetune", "--task", "print_attack", "--steps", "1", "--batch-size", "1",
              "--train-scenes", "2", "--eval-scenes", "2", "--views", "2", "--size", "28",
              "--cache", str(cache), *LR]
        assert cli_main([*ft, "--method", "lora", "--rank", "4", "--out",
                         str(root / "ft-lora")]) == 0
        assert cli_main([*ft, "--method", "reduced", "--bank", str(root / "bank.safetensors"),
                         "--factors", "texture,geometry", "--rank", "2", "--out",
                         str(root / "ft-reduced")]) == 0
    return {
        "root": root,
        "mined": root / "adapters" / "texture",
        "ft-lora": root / "ft-lora",
        "ft-reduced": root / "ft-reduced",
        "bank": root / "bank.safetensors",
        "data": find_datasets(cache)[0],
    }


@pytest.fixture(scope="module")
def images(made: dict[str, Path]) -> torch.Tensor:
    """A real rendered sample (two views of one scene)."""
    return collate([SceneDataset(made["data"])[0]])["images"]


def _base() -> torch.nn.Module:
    """A fresh copy of the shipped tiny base, built and loaded without attrsub's adapter code."""
    return load("vggt-tiny", weights=shipped_weights("vggt-tiny")).eval()


@torch.no_grad()
def _outputs(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.eval()(images).items() if isinstance(v, torch.Tensor)}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check_export(
    src: Path, out: Path, images: torch.Tensor, bank: Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Export, load with vanilla PEFT, compare with attrsub's own loading and the base."""
    assert export_peft_lora(src, out, bank=bank) == out
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json",
                                                    "adapter_model.safetensors"]
    vanilla = _outputs(PeftModel.from_pretrained(_base(), str(out)), images)
    ours = _outputs(load_trained(load_base("vggt-tiny"), src, bank=bank), images)
    base = _outputs(_base(), images)
    assert _max_diff(vanilla, ours) < ATOL
    assert _max_diff(ours, base) > 100 * ATOL  # the adapter does something
    return vanilla, ours


def test_mined_lora_exports_as_plain_peft(made: dict[str, Path], images: torch.Tensor,
                                          tmp_path: Path) -> None:
    _check_export(made["mined"], tmp_path / "peft", images)
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as fh:
        record = json.loads(fh.metadata()["attrsub"])
    assert record["method"] == "lora"
    assert record["base"]["weights_hash"] == load_base("vggt-tiny").weights_hash


def test_finetuned_lora_exports_as_plain_peft(made: dict[str, Path], images: torch.Tensor,
                                              tmp_path: Path) -> None:
    _check_export(made["ft-lora"], tmp_path / "peft", images)


def test_finetuned_reduced_exports_as_rank_d_lora(made: dict[str, Path], images: torch.Tensor,
                                                  tmp_path: Path) -> None:
    saved = load_file(str(made["ft-reduced"] / "reduced.safetensors"))
    assert all(float(m.abs().min()) > 0 for m in saved.values())  # one step moved every M
    out = tmp_path / "peft"
    _check_export(made["ft-reduced"], out, images, bank=made["bank"])
    config = json.loads((out / "adapter_config.json").read_text())
    tensors = load_file(str(out / "adapter_model.safetensors"))
    d = 4  # two factors of rank 2
    assert config["r"] == config["lora_alpha"] == d and not config["rank_pattern"]
    for name, m in saved.items():
        a = tensors[f"base_model.model.{name}.lora_A.weight"]
        b = tensors[f"base_model.model.{name}.lora_B.weight"]
        assert a.shape[0] == b.shape[1] == d and m.shape == (d, d)
    base = load_base("vggt-tiny")  # given explicitly: used, and left as it was
    export_peft_lora(made["ft-reduced"], tmp_path / "again", bank=made["bank"], base=base)
    assert not reduced_layers(base.model)
    assert torch.equal(load_file(str(tmp_path / "again" / "adapter_model.safetensors"))[
        f"base_model.model.{name}.lora_A.weight"], a)


@pytest.mark.parametrize("method", ["psv", "random"])
def test_generated_bases_export(method: str, made: dict[str, Path], images: torch.Tensor,
                                tmp_path: Path) -> None:
    """psv and random folders as finetune --out writes them, with a deliberately moved M."""
    b = load_base("vggt-tiny")
    model, _ = prepare(method, b.model, rank=3, seed=5, base_hash=b.weights_hash)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in reduced_layers(model).values():
            layer.M.copy_(torch.randn(layer.M.shape, generator=gen) * 0.05)
    src = tmp_path / "ft"
    src.mkdir()
    save_reduced(model, src / "reduced.safetensors", base_hash=b.weights_hash)
    write_json(src / "metrics.json", {"method": method, "rank": 3, "seed": 5, "factors": [],
                                      "base": "vggt-tiny", "base_hash": b.weights_hash})
    _check_export(src, tmp_path / "peft", images)


def test_layers_of_different_widths_use_rank_patterns(images: torch.Tensor,
                                                      tmp_path: Path) -> None:
    """A rank-deficient integration gives layers (and U, V) of different widths."""
    torch.manual_seed(0)
    model = build("vggt-tiny").eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    names = ["aggregator.frame_blocks.0.attn.qkv", "aggregator.global_blocks.1.mlp.fc2",
             "aggregator.global_blocks.3.attn.proj"]
    bases = {}
    for name, (du, dv) in zip(names, [(3, 2), (5, 5), (5, 7)], strict=True):
        w = model.get_submodule(name).weight
        u = torch.linalg.qr(torch.randn(w.shape[0], du, generator=gen))[0]
        v = torch.linalg.qr(torch.randn(w.shape[1], dv, generator=gen))[0]
        bases[name] = IntegratedBasis(U=u, V=v, factors=("x",), ranks=(du,), method="qr")
    apply_reduced(model, bases)
    with torch.no_grad():
        for layer in reduced_layers(model).values():
            layer.M.copy_(torch.randn(layer.M.shape, generator=gen))
    tensors, ranks = reduced_as_lora(model)
    config = peft_config(ranks)
    assert ranks == {names[0]: 3, names[1]: 5, names[2]: 5}
    assert config["r"] == config["lora_alpha"] == 5
    assert config["rank_pattern"] == config["alpha_pattern"] == {names[0]: 3}
    out = tmp_path / "peft"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(out / "adapter_model.safetensors"))
    fresh = build("vggt-tiny")
    fresh.load_state_dict(state)
    vanilla = _outputs(PeftModel.from_pretrained(fresh, str(out)), images)
    assert _max_diff(vanilla, _outputs(model, images)) < ATOL


def _fake_finetune(tmp: Path, method: str) -> Path:
    src = tmp / f"ft-{method}"
    src.mkdir()
    write_json(src / "metrics.json", {"method": method, "rank": 4, "base": "vggt-tiny"})
    return src


def test_export_refuses_bad_input(made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    taken = tmp_path / "taken"
    taken.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: export_peft_lora(made["mined"], taken), ConfigError, "already exists"),
        (lambda: export_peft_lora(made["mined"], blocker / "x"), ConfigError,
         "is not a folder"),
        (lambda: export_peft_lora(tmp_path / "nope", out), DataError, "nope"),
        (lambda: export_peft_lora(made["root"] / "cache", out), DataError,
         "not an adapter folder"),
        (lambda: export_peft_lora(made["ft-reduced"], out), ConfigError, "--bank"),
        (lambda: export_peft_lora(made["ft-lora"], out, bank=made["bank"]), ConfigError,
         "uses no bank"),
        (lambda: export_peft_lora(made["mined"], out,
                                  base=load_base("vggt-tiny", random_init=True)),
         DataError, "random-init"),
        (lambda: export_peft_lora(_fake_finetune(tmp_path, "full"), out), ConfigError, "'full'"),
        (lambda: export_peft_lora(_fake_finetune(tmp_path, "none"), out), ConfigError,
         "lora, psv, random, reduced"),
        (lambda: export_peft_lora(_fake_finetune(tmp_path, "pissa"), out), ConfigError,
         "PiSSA"),
        (lambda: export_peft_lora(made["ft-reduced"], out, bank=made["bank"],
                                  base=load_base("vggt-tiny", random_init=True)),
         DataError, "random-init"),
        (lambda: export_peft_lora(made["ft-reduced"], out, bank=made["root"] / "no.safetensors"),
         DataError, "no.safetensors"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words):
            call()
        assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


# --------------------------------------------------------------------- the authors' file


def _their_lookup(current_key: str, space: dict[str, torch.Tensor]) -> tuple | None:
    """How the authors' peft/layer.py finds a layer's pair: the PEFT module name split into
    aggregator.{block_type}.{layer}.{module}.{weight}, looked up as block.module.weight.layer."""
    parts = current_key.split(".")
    if len(parts) != 5 or parts[0] != "aggregator":
        return None
    _, block_type, layer, module, weight = parts
    key = f"{block_type}.{module}.{weight}.{layer}"
    if f"{key}.A" not in space:
        return None
    return space[f"{key}.A"], space[f"{key}.B"]


def _assert_same_bank(a: Bank, b: Bank) -> None:
    assert a.factors == b.factors and a.layers == b.layers
    for f in a.factors:
        for layer in a.layers:
            x, y = a.subspaces[f][layer], b.subspaces[f][layer]
            assert torch.equal(x.col_basis, y.col_basis), (f, layer)
            assert torch.equal(x.row_basis, y.row_basis), (f, layer)
            for field in ("singular_values", "spectrum", "weights"):
                assert torch.equal(getattr(x, field), getattr(y, field)), (f, layer, field)
            assert (x.rank, x.scale, x.method, x.iterations) == (
                y.rank, y.scale, y.method, y.iterations)
    assert (a.base_name, a.weights_hash, a.config) == (b.base_name, b.weights_hash, b.config)
    assert a.content_hash() == b.content_hash()


def test_key_mapping_both_ways() -> None:
    assert authors_key("aggregator.frame_blocks.3.attn.qkv") == "frame_blocks.attn.qkv.3"
    assert authors_key("aggregator.global_blocks.23.mlp.fc2") == "global_blocks.mlp.fc2.23"
    assert layer_name("global_blocks.mlp.fc2.23.B") == ("aggregator.global_blocks.23.mlp.fc2", "B")
    for bad in ("camera_head.trunk.0.attn.qkv", "aggregator.patch_embed.blocks.0.attn.qkv",
                "aggregator.frame_blocks.0.attn.q_norm"):
        with pytest.raises(ConfigError, match="no key in the authors' format"):
            authors_key(bad)


def test_tiny_bank_round_trip_is_exact(made: dict[str, Path], tmp_path: Path) -> None:
    bank = load_bank(made["bank"])
    space_path = export_bank_authors(made["bank"], tmp_path / "space.safetensors")
    space = load_file(str(space_path))
    model = build("vggt-tiny", device="meta")
    found = {}
    for name, mod in model.named_modules():
        pair = _their_lookup(name, space)
        if pair is not None:
            a, b = pair
            assert a.dtype == b.dtype == torch.float32
            assert a.shape == (4, mod.in_features) and b.shape == (mod.out_features, 4)
            found[name] = pair
    assert sorted(found) == sorted(bank.layers) and len(space) == 2 * len(found)
    assert bank.factors == ["geometry", "texture"]  # concatenated in bank order
    layer = bank.layers[0]
    a, b = found[layer]
    assert torch.equal(b[:, :2], bank.subspaces["geometry"][layer].col_basis)
    assert torch.equal(a[2:].T, bank.subspaces["texture"][layer].row_basis)

    back = load_bank(import_bank_authors(space_path, tmp_path / "back.safetensors"))
    _assert_same_bank(bank, back)
    # Same content hash, so the reduced fine-tune trained on the original bank loads on it.
    model = load_trained(load_base("vggt-tiny"), made["ft-reduced"],
                         bank=tmp_path / "back.safetensors")
    assert reduced_layers(model)

    sub = export_bank_authors(made["bank"], tmp_path / "geo.safetensors", factors=["geometry"],
                              ranks=1)
    geo = load_bank(import_bank_authors(sub, tmp_path / "geo-bank.safetensors"))
    assert geo.factors == ["geometry"]
    assert torch.equal(geo.subspaces["geometry"][layer].col_basis,
                       bank.subspaces["geometry"][layer].col_basis[:, :1])


def test_file_from_the_authors_code_imports(made: dict[str, Path], tmp_path: Path) -> None:
    """Without our metadata: the caller names the base and the factors."""
    bank = load_bank(made["bank"])
    ours = export_bank_authors(made["bank"], tmp_path / "space.safetensors")
    theirs = tmp_path / "theirs.safetensors"
    save_file(load_file(str(ours)), str(theirs))  # no metadata, as their code would have it
    base = load_base("vggt-tiny")
    with pytest.raises(ConfigError, match="names no base"):
        import_bank_authors(theirs, tmp_path / "b.safetensors")
    out = import_bank_authors(theirs, tmp_path / "b.safetensors", base=base,
                              factors=bank.factors)
    back = load_bank(out, base)
    for f in bank.factors:
        for layer in bank.layers:
            assert torch.equal(back.subspaces[f][layer].col_basis,
                               bank.subspaces[f][layer].col_basis)
            assert back.subspaces[f][layer].scale == "none"
    one = load_bank(import_bank_authors(theirs, tmp_path / "one.safetensors", base=base))
    assert one.factors == ["authors"] and one.subspaces["authors"][bank.layers[0]].rank == 4
    uneven = import_bank_authors(theirs, tmp_path / "u.safetensors", base=base,
                                 factors=["a", "b"], ranks=[3, 1])
    assert load_bank(uneven).subspaces["b"][bank.layers[0]].rank == 1
    _, count = prepare("reduced", load_base("vggt-tiny").model, bank=load_bank(uneven),
                           factors=["a", "b"], ranks={"a": 3, "b": 1},
                           base_hash=base.weights_hash)
    assert count == 16 * len(bank.layers)


def _orthonormal(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))[0].float()


def test_vggt_1b_keys_and_shapes(tmp_path: Path) -> None:
    """Names and shapes from VGGT's released state dict; synthetic orthonormal bases."""
    if not REFERENCE.is_file():
        pytest.skip("reference/vggt-1b-state-dict.json not available")
    shapes = json.loads(REFERENCE.read_text())["models"]["vggt_1b"]
    layers = {
        k.removesuffix(".weight"): v for k, v in shapes.items()
        if k.startswith(tuple(f"aggregator.{b}." for b in BLOCK_TYPES))
        and k.endswith(tuple(f".{m}.weight" for m in MODULES))
    }
    assert len(layers) == 2 * 24 * 4
    gen = torch.Generator().manual_seed(0)
    rank = 2
    subspaces = {
        f: {
            name: LayerSubspace(
                col_basis=_orthonormal(out, rank, gen), row_basis=_orthonormal(inp, rank, gen),
                singular_values=torch.tensor([2.0, 1.0]), spectrum=torch.tensor([2.0, 1.0, 0.1]),
                weights=torch.ones(3), iterations=5, rank=rank,
            )
            for name, (out, inp) in layers.items()
        }
        for f in ("camera", "lighting")
    }
    bank = Bank("vggt-1b", "synthetic", ExtractConfig(rank=rank), subspaces)
    save_bank(bank, tmp_path / "bank.safetensors")
    path = export_bank_authors(tmp_path / "bank.safetensors", tmp_path / "space.safetensors")
    space = load_file(str(path))
    expected = {
        f"{b}.{m}.{w}.{i}.{side}"
        for b in BLOCK_TYPES for i in range(24) for m, w in (x.split(".") for x in MODULES)
        for side in ("A", "B")
    }
    assert set(space) == expected
    for name, (out, inp) in layers.items():
        pair = _their_lookup(name, space)
        assert pair is not None, name
        a, b = pair
        assert a.shape == (2 * rank, inp) and b.shape == (out, 2 * rank)
        # What their layer builds from the pair: nn.Linear(in, D) and nn.Linear(D, out).
        assert torch.nn.Linear(inp, a.shape[0]).weight.shape == a.shape
        assert torch.nn.Linear(a.shape[0], out).weight.shape == b.shape
    assert _their_lookup("camera_head.trunk.0.attn.qkv", space) is None
    _assert_same_bank(bank, load_bank(import_bank_authors(path, tmp_path / "back.safetensors")))

    theirs = tmp_path / "theirs.safetensors"
    save_file(space, str(theirs))
    meta_base = BaseModel("vggt-1b", None, "synthetic", build("vggt-1b", device="meta"))
    back = load_bank(import_bank_authors(theirs, tmp_path / "b.safetensors", base=meta_base,
                                         factors=["camera", "lighting"]))
    for f in ("camera", "lighting"):
        for name in layers:
            assert torch.equal(back.subspaces[f][name].row_basis,
                               bank.subspaces[f][name].row_basis)


def _mutated(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], Path]:
    def make(src: Path) -> Path:
        tensors = load_file(str(src))
        change(tensors)
        out = src.parent / "bad.safetensors"
        save_file(tensors, str(out))
        return out
    return make


def _rename(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(t: dict[str, torch.Tensor]) -> None:
        t[new] = t.pop(old)
    return change


def _rename_pair(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(t: dict[str, torch.Tensor]) -> None:
        for side in ("A", "B"):
            t[f"{new}.{side}"] = t.pop(f"{old}.{side}")
    return change


def _set(key: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(t: dict[str, torch.Tensor]) -> None:
        t[key] = value
    return change


QKV = "frame_blocks.attn.qkv.0"
BAD_FILES = [
    ("unknown-block-type", _rename(f"{QKV}.A", "cross_blocks.attn.qkv.0.A"),
     "unknown block type 'cross_blocks'"),
    ("decoder-key", _rename(f"{QKV}.A", "decoder.attn.qkv.0.A"), "'decoder'"),
    ("unknown-module", _rename(f"{QKV}.A", "frame_blocks.attn.q_norm.0.A"), "attn.q_norm"),
    ("not-a-pair-key", _rename(f"{QKV}.A", f"{QKV}.C"), f"{QKV}.C"),
    ("missing-B", lambda t: t.pop(f"{QKV}.B"), f"{QKV}.B is missing"),
    ("block-out-of-range", _rename_pair(QKV, "frame_blocks.attn.qkv.40"),
     "frame_blocks.attn.qkv.40"),
    ("wrong-width", _set(f"{QKV}.A", torch.zeros(4, 7)), f"key {QKV}"),
    ("A-B-ranks-differ", _set(f"{QKV}.A", torch.zeros(3, 64)), f"{QKV}.A"),
    ("not-a-matrix", _set(f"{QKV}.A", torch.zeros(4, 64, 1)), f"{QKV}.A"),
    ("nan", _set(f"{QKV}.A", torch.full((4, 64), float("nan"))), f"{QKV}.A"),
]


@pytest.mark.parametrize("change,words", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_import_refuses_bad_files(change: Callable[[dict[str, torch.Tensor]], None], words: str,
                                  made: dict[str, Path], tmp_path: Path) -> None:
    src = export_bank_authors(made["bank"], tmp_path / "space.safetensors")
    bad = _mutated(change)(src)
    base = load_base("vggt-tiny")
    with pytest.raises(DataError, match=words.replace(".", r"\.")):
        import_bank_authors(bad, tmp_path / "out.safetensors", base=base)
    assert not (tmp_path / "out.safetensors").exists()


def test_bank_export_and_import_refuse_bad_arguments(made: dict[str, Path],
                                                     tmp_path: Path) -> None:
    space = export_bank_authors(made["bank"], tmp_path / "space.safetensors")
    theirs = tmp_path / "theirs.safetensors"
    save_file(load_file(str(space)), str(theirs))
    base = load_base("vggt-tiny")
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: export_bank_authors(made["bank"], tmp_path / "x", factors=["smell"]),
         ConfigError, "'smell'"),
        (lambda: export_bank_authors(made["bank"], tmp_path / "x", ranks=3), ConfigError,
         "rank 3"),
        (lambda: export_bank_authors(made["bank"], tmp_path), ConfigError, "is a folder"),
        (lambda: export_bank_authors(tmp_path / "nope.safetensors", tmp_path / "x"), DataError,
         "nope.safetensors"),
        (lambda: import_bank_authors(tmp_path / "nope", tmp_path / "x"), DataError, "nope"),
        (lambda: import_bank_authors(space, tmp_path / "x", factors=["a"]), ConfigError,
         "records its factors"),
        (lambda: import_bank_authors(space, tmp_path / "x",
                                     base=load_base("vggt-tiny", random_init=True)),
         DataError, "random-init"),
        (lambda: import_bank_authors(theirs, tmp_path / "x", base=base, factors=["a", "b", "c"]),
         DataError, "evenly"),
        (lambda: import_bank_authors(theirs, tmp_path / "x", base=base, factors=["a", "b"],
                                     ranks=[2, 3]), DataError, r"\[2, 3\]"),
        (lambda: import_bank_authors(theirs, tmp_path / "x", base=base, factors=["a", "a"]),
         ConfigError, "distinct"),
        (lambda: import_bank_authors(made["mined"] / "adapter_model.safetensors",
                                     tmp_path / "x", base=base), DataError,
         "not of the form"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words):
            call()
        assert not (tmp_path / "x").exists()


def test_the_command_line_exports_and_round_trips(made: dict[str, Path], images: torch.Tensor,
                                                  tmp_path: Path) -> None:
    """`attrsub export` and `attrsub bank export/import` call the same functions: the
    exported reduced adapter loads in vanilla PEFT, the bank comes back identical."""
    out = tmp_path / "peft"
    assert cli_main(["export", "--adapter", str(made["ft-reduced"]), "--format", "peft-lora",
                     "--bank", str(made["bank"]), "--out", str(out)]) == 0
    vanilla = _outputs(PeftModel.from_pretrained(_base(), str(out)), images)
    ours = _outputs(load_trained(load_base("vggt-tiny"), made["ft-reduced"], bank=made["bank"]),
                    images)
    assert _max_diff(vanilla, ours) < ATOL
    space, back = tmp_path / "space.safetensors", tmp_path / "back.safetensors"
    assert cli_main(["bank", "export", str(made["bank"]), "--format", "authors", "--out",
                     str(space)]) == 0
    assert cli_main(["bank", "import", str(space), "--out", str(back)]) == 0
    _assert_same_bank(load_bank(made["bank"]), load_bank(back))
