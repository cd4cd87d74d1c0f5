"""The subspace bank: built from real mined adapters, saved, loaded, inspected, integrated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attrsub.cli import main
from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import ConfigError, DataError
from attrsub.methods import prepare
from attrsub.model import build
from attrsub.model.base import BaseModel
from attrsub.subspace.bank import FIELDS, META_KEY, Bank, load_bank, save_bank, summary
from attrsub.subspace.extract import ExtractConfig
from attrsub.subspace.mine import build_bank, find_adapters, mine_adapter
from attrsub.train.loop import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapters")
    cache = tmp_path_factory.mktemp("cache")
    for factor, group in (("texture", 0), ("texture", 1), ("geometry", 0), ("geometry", 1)):
        mine_adapter(
            factor, group, group, root / f"{factor}-{group}", random_init=True, scenes=2,
            views=2, size=28, steps=2, lr=1e-2, rank=3, cache=cache,
        )
    return root


@pytest.fixture(scope="module")
def bank(adapters: Path) -> Bank:
    return build_bank(find_adapters([adapters]), ExtractConfig(rank=3, iters=5))


def test_build_bank_groups_adapters_by_their_sidecar_factor(adapters: Path, bank: Bank) -> None:
    found = find_adapters([adapters])
    assert {f: len(v) for f, v in found.items()} == {"texture": 2, "geometry": 2}
    assert bank.factors == ["geometry", "texture"]
    assert len(bank.layers) == 32
    assert bank.weights_hash == "random-init" and bank.base_name == "vggt-tiny"
    sub = bank.subspaces["texture"]["aggregator.frame_blocks.0.attn.qkv"]
    assert sub.rank == 3 and sub.col_basis.shape == (192, 3) and sub.weights.shape == (2,)
    assert len(bank.sources["texture"]) == 2
    assert all(s["factor"] == "texture" for s in bank.sources["texture"])


def test_save_load_round_trip(bank: Bank, tmp_path: Path) -> None:
    path = save_bank(bank, tmp_path / "bank.safetensors")
    back = load_bank(path)
    assert back.factors == bank.factors and back.layers == bank.layers
    assert back.config == bank.config and back.sources == bank.sources
    assert back.content_hash() == bank.content_hash()
    for f in bank.factors:
        for layer, sub in bank.subspaces[f].items():
            got = back.subspaces[f][layer]
            for name in FIELDS:
                assert torch.equal(getattr(got, name), getattr(sub, name)), (f, layer, name)
            assert (got.rank, got.iterations, got.converged) == (
                sub.rank, sub.iterations, sub.converged)
    load_bank(path, BaseModel("vggt-tiny", None, "random-init", torch.nn.Linear(1, 1)))
    with pytest.raises(DataError, match="random-init.*other-hash"):
        load_bank(path, BaseModel("vggt-tiny", None, "other-hash", torch.nn.Linear(1, 1)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt"):
        load_bank(path)


def test_a_bank_saved_with_attribute_keyed_evidence_loads_it_as_factor(
    bank: Bank, tmp_path: Path
) -> None:
    """Older banks keyed an evidence row's factor "attribute"; they load with "factor"."""
    row = {"measure": "overlap", "side": "col", "layer": "all", "factor": "all", "within": 0.6}
    path = save_bank(dataclasses.replace(bank, evidence=[row]), tmp_path / "bank.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    record = json.loads(meta[META_KEY])
    record["evidence"] = [{("attribute" if k == "factor" else k): v for k, v in row.items()}]
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(record)})
    back = load_bank(path)
    assert back.evidence == [row]
    assert back.content_hash() == bank.content_hash()


def test_integrate_and_basis_hash(bank: Bank) -> None:
    bases = bank.integrate(["texture", "geometry"], 2, "qr")
    assert set(bases) == set(bank.layers)
    b = bases["aggregator.global_blocks.3.mlp.fc2"]
    assert b.U.shape == (64, 4) and b.V.shape == (256, 4)
    key = (["texture", "geometry"], 2, "qr", None)
    assert bank.basis_hash(*key) == bank.basis_hash(*key)
    assert bank.basis_hash(*key) != bank.basis_hash(["texture", "geometry"], 2, "svd", None)
    with pytest.raises(ConfigError, match="unknown factor.*lighting"):
        bank.integrate(["lighting"], 2)


def test_reduced_method_from_the_bank_trains(bank: Bank, tmp_path: Path) -> None:
    data = SceneDataset(render_factor_dataset(DatasetSpec("canonical", scenes=2, views=2, size=28),
                                              tmp_path))
    torch.manual_seed(0)
    model, count = prepare("reduced", build("vggt-tiny"), bank=bank,
                           factors=("texture", "geometry"), rank=2, base_hash="random-init")
    expected = sum(b.shape[0] * b.shape[1]
                   for b in bank.integrate(["texture", "geometry"], 2, "qr").values())
    assert count == expected
    assert train(model, data, TrainConfig(steps=1, batch_size=1), progress=False).steps == 1
    with pytest.raises(DataError, match="random-init.*other"):
        prepare("reduced", build("vggt-tiny"), bank=bank, factors=("texture",), rank=2,
                base_hash="other")
    with pytest.raises(ConfigError, match="unknown factor"):
        prepare("reduced", build("vggt-tiny"), bank=bank, factors=("smell",), rank=2)
    with pytest.raises(ConfigError, match="out of range"):
        prepare("reduced", build("vggt-tiny"), bank=bank, factors=("texture",), rank=9)


def test_cli_bank_build_and_info(
    adapters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bank.safetensors"
    assert main(["bank", "build", "--adapters", str(adapters), "--out", str(out),
                 "--rank", "cliff-gap", "--iters", "3"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["bank", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geometry" in text and "texture" in text and "32 layers" in text
    assert "geometry-texture" in text and "spectral cliff" in text
    # claim 1's evidence is stored in the bank and printed with its nulls and a verdict
    assert "claim 1 (factor subspaces exist):" in text and "permutation p" in text
    assert "col space (" in text and "row space (" in text and "held-out energy" in text
    info = summary(load_bank(out))
    assert info["claim1"]["verdict"] in ("holds", "holds on the col side only",
                                         "holds on the row side only", "does not hold")
    assert main(["bank", "build", "--adapters", str(adapters), "--out", str(out),
                 "--permutations", "0"]) == 0  # no evidence: said, not invented
    capsys.readouterr()
    assert main(["bank", "info", str(out)]) == 0
    assert "no evidence stored" in capsys.readouterr().out
    info = summary(load_bank(out))
    assert 0.0 <= info["pairs"]["geometry-texture"]["scale_inv_distance"] <= 1.0
    assert main(["bank", "build", "--adapters", str(tmp_path), "--out", str(out)]) == 2
    assert "no adapter folders" in capsys.readouterr().err


def test_cli_finetune_reduced_on_a_task(
    bank: Bank, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_bank(bank, tmp_path / "bank.safetensors")
    out = tmp_path / "run"
    common = ["--task", "print_attack", "--untrained", "--steps", "1", "--batch-size", "1",
              "--train-scenes", "2", "--eval-scenes", "2", "--views", "2", "--size", "28",
              "--cache", str(tmp_path / "cache")]
    assert main(["finetune", "--method", "reduced", "--bank", str(path), "--factors",
                 "texture,geometry", "--rank", "2", "--ortho", "qr", "--out", str(out),
                 *common]) == 0
    row = json.loads((out / "metrics.json").read_text())
    assert row["method"] == "reduced" and row["factors"] == ["texture", "geometry"]
    expected = sum(b.shape[0] * b.shape[1]
                   for b in bank.integrate(["texture", "geometry"], 2, "qr").values())
    assert row["trainable_params"] == expected and row["train_wall_s"] > 0
    assert "main" in row and (out / "reduced.safetensors").is_file()
    assert json.loads(capsys.readouterr().out)["trainable_params"] == expected

    assert main(["render", "--factor", "canonical", "--scenes", "2", "--views", "2", "--size", "28",
                 "--out", str(tmp_path / "data")]) == 0
    data = capsys.readouterr().out.strip()
    evaluate = ["evaluate", "--untrained", "--data", data, "--size", "28", "--json"]
    assert main([*evaluate, "--adapter", str(out), "--bank", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2
    assert main([*evaluate, "--adapter", str(out)]) == 2
    assert "pass the bank it used" in capsys.readouterr().err
    assert main([*evaluate, "--adapter", str(tmp_path)]) == 2
    assert "holds no adapter" in capsys.readouterr().err
    assert main(["finetune", "--method", "adalora", *common]) == 2
    assert "unknown method 'adalora'" in capsys.readouterr().err
    assert main(["finetune", "--method", "reduced", "--factors", "texture", *common]) == 2
    assert "needs --bank" in capsys.readouterr().err
    assert main(["finetune", "--method", "reduced", "--bank", str(path), "--factors", "smell",
                 *common]) == 2
    assert "unknown factor" in capsys.readouterr().err
