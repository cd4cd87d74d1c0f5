"""The rendered-dataset cache: content addressing, atomic publication, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from attrsub.data.datasets import (
    SAMPLE_KEYS,
    DatasetSpec,
    SceneDataset,
    collate,
    find_datasets,
    render_factor_dataset,
)
from attrsub.errors import ConfigError, DataError

SMALL = {"scenes": 3, "views": 2, "size": 28}


def test_render_is_cached_and_content_addressed(tmp_path: Path) -> None:
    spec = DatasetSpec("texture", group=1, **SMALL)
    a = render_factor_dataset(spec, tmp_path)
    mtime = (a / "spec.json").stat().st_mtime_ns
    b = render_factor_dataset(spec, tmp_path)
    assert a == b and (b / "spec.json").stat().st_mtime_ns == mtime
    c = render_factor_dataset(DatasetSpec("texture", group=2, **SMALL), tmp_path)
    assert c != a
    info = json.loads((a / "spec.json").read_text())
    assert info["meta"]["spec"] == spec.to_dict()
    assert len(info["scenes"]) == 3 and info["shards"] == [3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left"


def test_scene_dataset_items_have_the_contract_layout(tmp_path: Path) -> None:
    ds = SceneDataset(render_factor_dataset(DatasetSpec("canonical", **SMALL), tmp_path))
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == set(SAMPLE_KEYS)
    v, s = 2, 28
    assert item["images"].shape == (v, 3, s, s) and item["images"].dtype == torch.float32
    assert item["images"].min() >= 0 and item["images"].max() <= 1
    assert item["depths"].shape == (v, s, s)
    assert item["world_points"].shape == (v, s, s, 3)
    assert item["valid"].dtype == torch.bool
    assert item["extrinsics"].shape == (v, 3, 4) and item["intrinsics"].shape == (v, 3, 3)
    batch = collate([ds[0], ds[2]])
    assert batch["images"].shape == (2, v, 3, s, s)
    with pytest.raises(IndexError):
        ds[3]


def _render_in_child(root: str, queue: mp.Queue) -> None:
    path = render_factor_dataset(DatasetSpec("geometry", group=0, **SMALL), root)
    queue.put(str(path))


def test_two_processes_rendering_the_same_dataset_do_not_corrupt_it(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_render_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    ds = SceneDataset(paths.pop())
    assert len(ds) == 3 and torch.isfinite(ds[2]["depths"]).all()
    assert [p.name for p in tmp_path.iterdir()] == [ds.path.name], "temp dirs left"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"factor": "colour"}, "unknown factor 'colour'"),
        ({"factor": "texture", "scenes": 0}, "scenes must be a positive integer"),
        ({"factor": "texture", "views": 0}, "views must be a positive integer"),
        ({"factor": "texture", "size": 100}, "multiple of the patch size 14"),
        ({"factor": "texture", "group": -1}, "group must be"),
    ],
)
def test_bad_specs_fail_before_rendering(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DatasetSpec(**kwargs)


def test_unwritable_root_fails_before_rendering(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        root = blocker / "sub"
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot be created|not writable|not a folder"):
        render_factor_dataset(DatasetSpec("texture", **SMALL), root)


def test_missing_or_corrupt_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no rendered dataset"):
        find_datasets(tmp_path)
    path = render_factor_dataset(DatasetSpec("lighting", **SMALL), tmp_path)
    (path / "shard-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read dataset shard"):
        SceneDataset(path)[0]
