"""A study's storage, local or a URI, through one layer (attrsub.storage), and weights by URI
(attrsub.fetch): a real S3-protocol server on loopback (moto's) and file:// URIs."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from attrsub import fetch, storage
from attrsub.errors import ConfigError, DataError
from attrsub.model.base import WEIGHTS_DIR, load_base

SHIPPED = WEIGHTS_DIR / "vggt-tiny.safetensors"


@pytest.fixture(params=["s3", "file"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh folder URI on the S3 server, or a file:// URI."""
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3"), tmp_path.name)
    return f"file://{tmp_path / 'store'}"


def test_files_and_folders_round_trip(where: str, tmp_path: Path) -> None:
    assert storage.list_names(where) == [] and not storage.exists(storage.join(where, "a"))
    storage.write_bytes(storage.join(where, "a.json"), b"{}")
    assert storage.read_bytes(storage.join(where, "a.json")) == b"{}"
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\0" * 3_000_000)  # several parts on S3
    (src / "done.json").write_text("{}")
    storage.put_dir(src, storage.join(where, "adapters", "one"), "done.json")
    assert storage.list_names(storage.join(where, "adapters")) == ["one"]
    back = storage.get_dir(storage.join(where, "adapters", "one"), tmp_path / "back", "done.json")
    assert (back / "sub" / "w.bin").read_bytes() == b"\0" * 3_000_000
    assert sorted(p.name for p in back.rglob("*")) == ["done.json", "sub", "w.bin"]
    storage.write_bytes(storage.join(where, "half", "w.bin"), b"x")  # no marker yet
    with pytest.raises(DataError, match="not complete"):
        storage.get_dir(storage.join(where, "half"), tmp_path / "half", "done.json")
    assert not (tmp_path / "half").exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_by_uri_are_verified_fetched_once_and_reused(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTRSUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    uri = storage.join(where, "vggt-tiny.safetensors")
    storage.put_file(SHIPPED, uri)
    want = _sha(SHIPPED)
    with pytest.raises(ConfigError, match="no sha256 to verify"):
        fetch.fetch(uri)
    with pytest.raises(DataError, match=f"expected {'0' * 64}"):
        fetch.fetch(fetch.with_sha256(uri, "0" * 64))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    got = fetch.fetch(fetch.with_sha256(uri, want))
    assert got == tmp_path / "cache" / f"{want}.safetensors" and _sha(got) == want
    base = load_base("vggt-tiny", fetch.with_sha256(uri, want))
    assert base.weights_hash == load_base("vggt-tiny").weights_hash
    # published beside the file: <file>.sha256 (sha256sum's format) is enough
    storage.write_bytes(f"{uri}.sha256", f"{want}  vggt-tiny.safetensors\n".encode())
    assert fetch.fetch(uri) == got
    # the cached copy is reused: the URI is not read again
    fs, p = storage.resolve(uri)
    fs.delete_file(p)
    assert fetch.fetch(fetch.with_sha256(uri, want)) == got
    with pytest.raises(ConfigError, match="64 hex digits"):
        fetch.fetch(f"{uri}#md5=abc")


def _study_error(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    from sweeps.ablation import main

    capsys.readouterr()
    assert main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_study_with_wrong_weights_hash_is_refused_before_any_trial(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATTRSUB_WEIGHTS_CACHE", str(tmp_path / "cache"))
    uri = storage.join(where, "w.safetensors")
    storage.put_file(SHIPPED, uri)
    studies = tmp_path / "studies"
    base = ["--preset", "quick", "--storage", str(studies)]
    line = _study_error([*base, "--weights", fetch.with_sha256(uri, "0" * 64)], tmp_path,
                        capsys)
    assert line.startswith("ablation: error: ") and "0" * 64 in line and "w.safetensors" in line
    line = _study_error([*base, "--weights", uri], tmp_path, capsys)
    assert "no sha256 to verify" in line
    assert not studies.exists() and not (tmp_path / "cache").exists()


def test_a_pinned_hash_in_the_preset_is_checked(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from sweeps.config import PRESETS

    quick = yaml.safe_load(PRESETS.read_text())["quick"]
    quick["weights_sha256"] = "f" * 64
    presets = tmp_path / "presets.yaml"
    presets.write_text(yaml.safe_dump({"quick": quick}, sort_keys=False))
    local = tmp_path / "w.safetensors"
    shutil.copy(SHIPPED, local)
    line = _study_error(["--preset", "quick", "--presets", str(presets), "--storage",
                         str(tmp_path / "studies"), "--weights", str(local)], tmp_path, capsys)
    assert "f" * 64 in line and "w.safetensors" in line


def _tables(study: str) -> dict[str, object]:
    import pandas as pd

    from results.schema import read_table

    out = {}
    for name in ("trials", "overlaps", "spectra", "evidence"):
        rows = read_table(storage.join(study, f"{name}.parquet"))
        frame = pd.DataFrame(rows)
        key = [c for c in ("trial_id", "extraction", "pair", "factor", "layer", "index", "side",
                           "kind", "stat") if c in frame.columns]
        out[name] = frame.sort_values(key).reset_index(drop=True) if key else frame
    return out


@pytest.mark.slow
def test_the_storage_uri_is_the_whole_study(where: str, tmp_path: Path) -> None:
    """Run the smoke study to a URI, lose every local folder (a new head with an empty
    disk), resume: adapters and banks come back from the URI, nothing is mined or extracted
    again, no trial reruns, and every table is as it was."""
    import json
    import os
    import subprocess
    import sys

    import pandas as pd

    from sweeps.config import load_preset

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"

    def study(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(repo / "sweeps" / "ablation.py"), "--preset", "smoke",
             "--storage", where, "--work-dir", str(work), "--num-cpus", "2", *extra],
            env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
            timeout=1200, cwd=tmp_path,
        )

    first = study()
    assert first.returncode == 0, first.stderr[-3000:]
    # a line per finished trial, as `ray job logs --follow` shows them, and the dashboard
    assert re.search(r"^mining \d+/\d+ ok factor=\w+ group=\d seed=\d loss=", first.stdout, re.M)
    assert re.search(r"^ablation \d+/\d+ ok .*task=", first.stdout, re.M), first.stdout[-2000:]
    assert "Ray dashboard: " in first.stdout
    root = storage.join(where, "smoke")
    preset = load_preset("smoke")
    adapters = storage.list_names(storage.join(root, "adapters"))
    assert len(adapters) == len(preset.factors) * preset.groups * len(preset.adapter_seeds)
    banks = storage.list_names(storage.join(root, "banks"))
    assert banks == sorted(f"bank-{m}.safetensors"
                           for m in {preset.extraction.method, *preset.ablation.extraction})
    for name in ("study.json", "report.md", "optuna.journal", "fig-rank.png"):
        assert storage.exists(storage.join(root, name)), name
    before = _tables(root)

    shutil.rmtree(work)  # the head's disk is gone; the URI is all that is left
    again = study("--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    stats = json.loads(next(x for x in again.stdout.splitlines()
                            if x.startswith("subspace actor: ")).removeprefix("subspace actor: "))
    assert stats["extractions"] == 0 and stats["pulled"] == len(adapters) + len(banks)
    assert "mining 1/" not in again.stdout + again.stderr  # no mining trial ran
    after = _tables(root)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(after[name], frame, check_like=True, obj=name)


def test_real_captures_are_published_once_and_pulled_by_a_fresh_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver publishes its verified captures to the study's storage; a node with an
    empty cache (and no apt, no .debs) gets them from there, checked against the packages'
    hashes, and a damaged copy is refused."""
    from attrsub.data.capture_sources import CACHE_NAME, MANIFEST, require_real_data
    from sweeps.study import ensure_task_data

    where = f"file://{tmp_path / 'store' / CACHE_NAME}"
    ensure_task_data("real", None, where)  # this machine's captures (.ci/setup fetched them)
    assert storage.exists(storage.join(where, MANIFEST))
    stamp = (tmp_path / "store" / CACHE_NAME / MANIFEST).stat().st_mtime_ns
    ensure_task_data("real", None, where)  # once: already there, not copied again
    assert (tmp_path / "store" / CACHE_NAME / MANIFEST).stat().st_mtime_ns == stamp

    monkeypatch.setenv("ATTRSUB_CACHE", str(tmp_path / "fresh-default"))
    node = tmp_path / "node-cache"
    with pytest.raises(DataError, match="not found"):
        ensure_task_data("real", node, None)  # a local study: nothing to pull from
    ensure_task_data("real", node, where)
    assert require_real_data(node).is_relative_to(node)

    damaged = tmp_path / "store2" / CACHE_NAME
    shutil.copytree(tmp_path / "store" / CACHE_NAME, damaged)
    victim = next(p for p in sorted(damaged.rglob("*")) if p.is_file() and p.name != MANIFEST)
    victim.write_bytes(b"\0" * victim.stat().st_size)
    with pytest.raises(DataError, match="sha256"):
        ensure_task_data("real", tmp_path / "node2", f"file://{damaged}")
    assert not (tmp_path / "node2" / CACHE_NAME).exists()


def test_the_subspace_actor_publishes_and_a_fresh_one_pulls_back(tmp_path: Path) -> None:
    """The actor's class without Ray: what a crashed head left unpublished is published on
    restart, and an actor with an empty cache pulls every adapter and bank back."""
    from attrsub.adapters.lora import SIDECAR
    from attrsub.subspace.mine import mine_adapter
    from sweeps.actor import SubspaceActor

    head = tmp_path / "head"
    mine_adapter("texture", 0, 0, head / "adapters" / "mine-texture-g0-s0", random_init=True,
                 scenes=1, views=2, size=28, steps=1, batch_size=1, rank=2,
                 cache=tmp_path / "cache")
    (head / "banks").mkdir()
    (head / "banks" / "bank-irls.safetensors").write_bytes(b"a bank's bytes")
    (head / "banks" / ".bank-mean.safetensors.tmp").write_bytes(b"half written")
    where = f"file://{tmp_path / 'store'}"
    extract = {"method": "irls", "rank": 2}
    first = SubspaceActor(str(head), ["texture"], 3, extract, published=where)
    assert first.counts["published"] == 2 and first.counts["pulled"] == 0
    assert storage.exists(storage.join(where, "adapters", "mine-texture-g0-s0", SIDECAR))
    assert storage.list_names(storage.join(where, "banks")) == ["bank-irls.safetensors"]
    again = SubspaceActor(str(head), ["texture"], 3, extract, published=where)
    assert again.counts["published"] == 0  # nothing left to publish

    fresh = SubspaceActor(str(tmp_path / "new-head"), ["texture"], 3, extract, published=where)
    assert fresh.counts["pulled"] == 2 and fresh.stats()["adapters"] == {"texture": 1}
    assert fresh.adapter_meta("mine-texture-g0-s0") is not None
    assert (tmp_path / "new-head" / "banks" / "bank-irls.safetensors").read_bytes() == (
        b"a bank's bytes")
