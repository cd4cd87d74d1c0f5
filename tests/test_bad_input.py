"""Bad input to the command line: one line on stderr, exit status 2, nothing left on disk.

Table-driven. A ``Case`` builds its bad input under ``tmp_path`` (real PNGs, .npy depth,
safetensors, adapters made by the CLI itself), runs the real entry point in-process and
``run_case`` checks the three promises: (1) exit status 2; (2) exactly one non-empty line
on stderr, ``<prog> <command>: error: ...``, naming the bad value; (3) no path under
``tmp_path``, the shared fixtures or the shipped weights appeared, vanished or changed.
The dataset cache (``$ATTRSUB_CACHE``) and the working directory point into ``tmp_path``
during a case, so a command that writes there by default is caught too.

Other command lines (the sweep drivers) keep their own list of Cases and reuse
``run_case`` with their ``entry``; this file's list is ``CLI_CASES``.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from attrsub.cli import build_parser
from attrsub.cli import main as cli_main
from attrsub.data.datasets import find_datasets
from attrsub.model.base import WEIGHTS_DIR

Paths = Mapping[str, Path]
Setup = Callable[[Path, Paths], None]
Entry = Callable[[list[str]], "int | None"]

# A device string that names no usable GPU on this machine.
NO_CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
FOLDER_SIZE = 28


@dataclass(frozen=True)
class Case:
    """One bad command line: files to build first, its argv, what its error line must say.

    ``argv`` and ``expect`` may hold ``{tmp}`` and the shared fixtures' names (``{data}``,
    ``{adapters}``, ``{adapter}``, ``{bank}``, ``{folder}``); ``prefix`` is how the error
    line must start (``attrsub render: error: `` for the CLI).
    """

    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Setup | None = None
    entry: Entry = cli_main
    prefix: str = ""


COMMANDS = ("render", "show", "pretrain", "evaluate", "fetch-real", "mine-adapter", "bank",
            "finetune", "export")


def _prog(argv: Sequence[str]) -> str:
    if not argv or argv[0] not in COMMANDS:
        return "attrsub"
    if argv[0] == "bank" and len(argv) > 1 and argv[1] in ("build", "info", "export", "import"):
        return f"attrsub bank {argv[1]}"
    return f"attrsub {argv[0]}"


def cli(id: str, argv: Sequence[str], *expect: str, setup: Setup | None = None) -> Case:
    """A Case of the ``attrsub`` command line."""
    return Case(id, tuple(argv), tuple(expect), setup, cli_main, f"{_prog(argv)}: error: ")


# --------------------------------------------------------------------------- the harness


def snapshot(roots: Sequence[Path]) -> dict[str, tuple[int, int, int]]:
    """Every path under ``roots``: its type and, for files, size and modification time."""
    seen: dict[str, tuple[int, int, int]] = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            seen[str(p)] = (kind, 0, 0) if stat.S_ISDIR(st.st_mode) else (
                kind, st.st_size, st.st_mtime_ns)
    return seen


def run_case(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], shared: Paths | None = None
) -> str:
    """Build the case's input, run it, check the three promises; returns the error line."""
    paths: dict[str, Path] = {"tmp": tmp_path, **(shared or {})}
    if case.setup is not None:
        case.setup(tmp_path, paths)
    argv = [a.format(**paths) for a in case.argv]
    watched = [tmp_path, *(p for p in (shared or {}).values() if p.is_dir()), WEIGHTS_DIR]
    before = snapshot(watched)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTRSUB_CACHE", str(tmp_path / "cache"))
        mp.chdir(tmp_path)
        try:
            code = case.entry(argv)
        except SystemExit as exc:
            code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code!r}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(case.prefix), line
    for needle in case.expect:
        assert needle.format(**paths) in line, f"{needle!r} not in {line!r}"
    after = snapshot(watched)
    assert after == before, (
        f"left on disk: {sorted(set(after) - set(before))}; gone: "
        f"{sorted(set(before) - set(after))}; changed: "
        f"{sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}"
    )
    return line


# --------------------------------------------------------------------------- real inputs


def make_folder(root: Path, *, frames: int = 2, cameras: bool = True) -> Path:
    """A valid bring-your-own folder: one sample ``s0`` of ``frames`` PNG + .npy frames."""
    sample = root / "s0"
    (sample / "rgb").mkdir(parents=True)
    (sample / "depth").mkdir()
    rng = np.random.default_rng(0)
    cams = {}
    for i in range(frames):
        rgb = rng.integers(0, 255, (FOLDER_SIZE, FOLDER_SIZE, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(sample / "rgb" / f"f{i}.png")
        np.save(sample / "depth" / f"f{i}.npy",
                rng.uniform(1.0, 2.0, (FOLDER_SIZE, FOLDER_SIZE)).astype(np.float32))
        extr = np.hstack([np.eye(3), [[0.1 * i], [0.0], [0.0]]])
        K = [[30.0, 0.0, 14.0], [0.0, 30.0, 14.0], [0.0, 0.0, 1.0]]
        cams[f"f{i}"] = {"K": K, "extrinsics": extr.tolist()}
    if cameras:
        (sample / "cameras.json").write_text(json.dumps(cams))
    (root / "attrsub-folder.json").write_text(json.dumps({"depth_unit": 1.0}))
    return root


def build_shared(root: Path) -> dict[str, Path]:
    """The expensive inputs, made once by the CLI's own small commands: a rendered dataset,
    two rank-4 adapters (texture, geometry), a bank of them, and a bring-your-own folder."""
    tiny = ["--scenes", "1", "--views", "2", "--size", "28"]
    assert cli_main(["render", "--factor", "canonical", *tiny, "--out", str(root / "data")]) == 0
    for factor in ("texture", "geometry"):
        assert cli_main(["mine-adapter", "--factor", factor, "--untrained", *tiny, "--steps", "1",
                         "--batch-size", "1", "--rank", "4", "--cache", str(root / "cache"),
                         "--out", str(root / "adapters" / factor)]) == 0
    assert cli_main(["bank", "build", "--adapters", str(root / "adapters"), "--out",
                     str(root / "bank.safetensors"), "--rank", "2", "--permutations", "0",
                     "--iters", "2"]) == 0
    return {
        "data": find_datasets(root / "data")[0],
        "adapters": root / "adapters",
        "adapter": root / "adapters" / "texture",
        "bank": root / "bank.safetensors",
        "folder": make_folder(root / "folder"),
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_shared(tmp_path_factory.mktemp("shared"))


# --------------------------------------------------------------------------- setups


def blocker(tmp: Path, paths: Paths) -> None:
    """A plain file where a folder is needed (unwritable even as root)."""
    (tmp / "blocker").write_text("a file, not a folder")


def mkdirs(*names: str) -> Setup:
    def setup(tmp: Path, paths: Paths) -> None:
        for name in names:
            (tmp / name).mkdir(parents=True)
    return setup


def earlier_run(tmp: Path, paths: Paths) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.json").write_text('{"method": "none"}\n')


def write_bytes(name: str, data: bytes) -> Setup:
    def setup(tmp: Path, paths: Paths) -> None:
        (tmp / name).write_bytes(data)
    return setup


def torch_list(tmp: Path, paths: Paths) -> None:
    torch.save([torch.zeros(2)], tmp / "list.pt")


def adapter_as_weights(tmp: Path, paths: Paths) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp / "other.safetensors"))


def byo(mutate: Callable[[Path], None]) -> Setup:
    """A copy of the shared bring-your-own folder at ``{tmp}/byo``, then ``mutate``d."""
    def setup(tmp: Path, paths: Paths) -> None:
        shutil.copytree(paths["folder"], tmp / "byo")
        mutate(tmp / "byo")
    return setup


def no_manifest(root: Path) -> None:
    (root / "attrsub-folder.json").unlink()


def corrupt_png(root: Path) -> None:
    (root / "s0" / "rgb" / "f0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")


def cameras_without_k(root: Path) -> None:
    cams = json.loads((root / "s0" / "cameras.json").read_text())
    for cam in cams.values():
        del cam["K"]
    (root / "s0" / "cameras.json").write_text(json.dumps(cams))


def manifest_list(root: Path) -> None:
    (root / "attrsub-folder.json").write_text("[0.001, 0]")


def object_npy(root: Path) -> None:
    np.save(root / "s0" / "depth" / "f0.npy", np.array([{"depth": 1.0}, None], dtype=object))


def nan_depth(root: Path) -> None:
    for f in (root / "s0" / "depth").glob("*.npy"):
        np.save(f, np.full((FOLDER_SIZE, FOLDER_SIZE), np.nan, dtype=np.float32))


def missing_depth(root: Path) -> None:
    (root / "s0" / "depth" / "f1.npy").unlink()


def small_depth(root: Path) -> None:
    np.save(root / "s0" / "depth" / "f0.npy", np.ones((7, 7), dtype=np.float32))


def copied_adapter(edit: Callable[[Path], None]) -> Setup:
    """A copy of the shared texture adapter at ``{tmp}/ads/texture``, then ``edit``ed."""
    def setup(tmp: Path, paths: Paths) -> None:
        shutil.copytree(paths["adapter"], tmp / "ads" / "texture")
        edit(tmp / "ads" / "texture")
    return setup


def _sidecar(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "attrsub-adapter.json").read_text())
        edit(meta)
        (folder / "attrsub-adapter.json").write_text(json.dumps(meta))
    return apply


def truncate_weights(folder: Path) -> None:
    f = folder / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def sidecar_text(folder: Path) -> None:
    (folder / "attrsub-adapter.json").write_text("{not json")


def junk_debs(tmp: Path, paths: Paths) -> None:
    for name in ("visp-images-data_3.5.0-1_all.deb", "opencv-doc_4.6.0+dfsg-12_all.deb"):
        (tmp / name).write_bytes(b"!<arch>\nnot a debian package\n")


def junk_debs_and(other: Setup) -> Setup:
    def setup(tmp: Path, paths: Paths) -> None:
        junk_debs(tmp, paths)
        other(tmp, paths)
    return setup


def export_taken(tmp: Path, paths: Paths) -> None:
    (tmp / "export" / "castel").mkdir(parents=True)
    (tmp / "export" / "castel" / "old.txt").write_text("an earlier export")


# --------------------------------------------------------------------------- the cases

R = ["render", "--scenes", "1", "--views", "2", "--size", "28"]
RO = [*R, "--factor", "texture", "--out", "{tmp}/data"]
SF = ["show", "--families", "--scenes", "1", "--views", "2", "--size", "28", "--cache",
      "{tmp}/cache"]
P = ["pretrain", "--scenes", "1", "--steps", "1", "--size", "28", "--batch-size", "1",
     "--cache", "{tmp}/cache"]
PO = [*P, "--out", "{tmp}/weights"]
E = ["evaluate", "--untrained", "--size", "28"]
ED = [*E, "--data", "{data}"]
DEBS = ["{tmp}/visp-images-data_3.5.0-1_all.deb", "{tmp}/opencv-doc_4.6.0+dfsg-12_all.deb"]
FR = ["fetch-real", "--cache", "{tmp}/newcache"]
M = ["mine-adapter", "--untrained", "--scenes", "1", "--views", "2", "--size", "28", "--steps",
     "1", "--batch-size", "1", "--cache", "{tmp}/cache"]
MT = [*M, "--factor", "texture"]
MO = [*MT, "--out", "{tmp}/adapter"]
B = ["bank", "build", "--adapters", "{adapters}", "--permutations", "0", "--iters", "2"]
BO = [*B, "--out", "{tmp}/bank.safetensors"]
F = ["finetune", "--task", "print_attack", "--steps", "1", "--batch-size", "1", "--train-scenes",
     "2", "--eval-scenes", "2", "--views", "2", "--size", "28", "--cache", "{tmp}/cache"]
FU = [*F, "--untrained"]
FN = [*FU, "--method", "none"]
FL = [*FU, "--method", "lora"]
FR_ = [*FU, "--method", "reduced", "--bank", "{bank}", "--factors", "texture"]

X = ["export", "--adapter", "{adapter}", "--format", "peft-lora", "--out", "{tmp}/x"]
BX = ["bank", "export", "{bank}", "--format", "authors", "--out", "{tmp}/space.safetensors"]


def reduced_run(tmp: Path, paths: Paths) -> None:
    """A finetune --out folder of the reduced method (its metrics name the method)."""
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.json").write_text(json.dumps(
        {"method": "reduced", "factors": ["texture"], "rank": 2, "ortho": "qr", "seed": 0,
         "total_rank": None, "base": "vggt-tiny"}))
    save_file({"w": torch.zeros(2, 2)}, str(tmp / "run" / "reduced.safetensors"))


CLI_CASES: list[Case] = [
    # the command line itself
    cli("no-command", [], "command"),
    cli("unknown-command", ["frobnicate"], "'frobnicate'"),
    cli("unknown-option", [*RO, "--colour", "red"], "--colour"),
    # render
    cli("render-unknown-factor", [*R, "--factor", "colour", "--out", "{tmp}/data"], "'colour'"),
    cli("render-size-not-a-multiple-of-14", [*RO, "--size", "100"], "100", "14"),
    cli("render-scenes-zero", [*RO, "--scenes", "0"], "scenes", "0"),
    cli("render-scenes-not-a-number", [*RO, "--scenes", "two"], "scenes", "'two'"),
    cli("render-views-negative", [*RO, "--views", "-1"], "views", "-1"),
    cli("render-group-negative", [*RO, "--group", "-1"], "group", "-1"),
    cli("render-seed-negative", [*RO, "--seed", "-1"], "seed", "-1"),
    cli("render-size-too-large-for-memory", [*RO, "--size", "140000"], "140000", "memory"),
    cli("render-scenes-too-many-for-disk", [*RO, "--scenes", "100000000", "--size", "112"],
        "100000000"),
    cli("render-device-unknown", [*RO, "--device", "gpu"], "'gpu'", "cpu"),
    cli("render-device-unavailable", [*RO, "--device", NO_CUDA], f"'{NO_CUDA}'"),
    cli("render-device-bad-index", [*RO, "--device", "cuda:x"], "'cuda:x'"),
    cli("render-out-is-a-file", [*R, "--factor", "texture", "--out", "{tmp}/blocker"],
        "blocker", setup=blocker),
    cli("render-out-under-a-file", [*R, "--factor", "texture", "--out", "{tmp}/blocker/sub"],
        "blocker", setup=blocker),
    # show
    cli("show-families-scenes-zero", [*SF, "--scenes", "0", "--out", "{tmp}/s.png"],
        "scenes", "0"),
    cli("show-views-zero", ["show", "{data}", "--views", "0", "--out", "{tmp}/s.png"],
        "views", "0"),
    cli("show-out-is-a-folder", ["show", "{data}", "--out", "{tmp}/outdir"], "outdir",
        setup=mkdirs("outdir")),
    cli("show-out-under-a-file", ["show", "{data}", "--out", "{tmp}/blocker/s.png"], "blocker",
        setup=blocker),
    cli("show-families-out-under-a-file", [*SF, "--out", "{tmp}/blocker/s.png"], "blocker",
        setup=blocker),
    cli("show-no-dataset-there", ["show", "{tmp}/empty", "--out", "{tmp}/s.png"], "empty",
        setup=mkdirs("empty")),
    cli("show-missing-folder", ["show", "{tmp}/nowhere", "--out", "{tmp}/s.png"], "nowhere"),
    cli("show-families-size-bad", [*SF, "--size", "30", "--out", "{tmp}/s.png"], "30"),
    cli("show-neither-data-nor-families", ["show", "--out", "{tmp}/s.png"], "--families"),
    # pretrain
    cli("pretrain-steps-zero", [*PO, "--steps", "0"], "steps", "0"),
    cli("pretrain-lr-nan", [*PO, "--lr", "nan"], "lr", "nan"),
    cli("pretrain-lr-negative", [*PO, "--lr", "-0.1"], "lr", "-0.1"),
    cli("pretrain-batch-size-zero", [*PO, "--batch-size", "0"], "batch-size", "0"),
    cli("pretrain-config-unknown", [*PO, "--config", "vggt-huge"], "'vggt-huge'"),
    cli("pretrain-out-is-a-file", [*P, "--out", "{tmp}/blocker"], "blocker", setup=blocker),
    cli("pretrain-size-too-large", [*PO, "--size", "140000"], "140000"),
    cli("pretrain-device-unknown", [*PO, "--device", "gpu"], "'gpu'"),
    # evaluate
    cli("evaluate-max-samples-negative", [*ED, "--max-samples", "-1"], "max-samples", "-1"),
    cli("evaluate-max-samples-zero", [*ED, "--max-samples", "0"], "max-samples", "0"),
    cli("evaluate-data-missing", [*E, "--data", "{tmp}/nowhere"], "nowhere"),
    cli("evaluate-folder-without-manifest", [*E, "--data", "{tmp}/byo"], "attrsub-folder.json",
        setup=byo(no_manifest)),
    cli("evaluate-corrupt-png", [*E, "--data", "{tmp}/byo"], "f0.png", setup=byo(corrupt_png)),
    cli("evaluate-cameras-without-K", [*E, "--data", "{tmp}/byo"], "cameras.json", "'K'",
        setup=byo(cameras_without_k)),
    cli("evaluate-manifest-is-a-list", [*E, "--data", "{tmp}/byo"], "attrsub-folder.json",
        setup=byo(manifest_list)),
    cli("evaluate-object-array-npy", [*E, "--data", "{tmp}/byo"], "f0.npy",
        setup=byo(object_npy)),
    cli("evaluate-all-nan-depth", [*E, "--data", "{tmp}/byo"], "s0", "valid",
        setup=byo(nan_depth)),
    cli("evaluate-frame-without-depth", [*E, "--data", "{tmp}/byo"], "'f1'",
        setup=byo(missing_depth)),
    cli("evaluate-depth-size-mismatch", [*E, "--data", "{tmp}/byo"], "'f0'",
        setup=byo(small_depth)),
    cli("evaluate-depth-align-unknown", [*ED, "--depth-align", "mean"], "'mean'"),
    cli("evaluate-size-bad", [*E, "--data", "{folder}", "--size", "50"], "50"),
    cli("evaluate-weights-missing", ["evaluate", "--weights", "{tmp}/nope.pt", "--data", "{data}"],
        "nope.pt"),
    cli("evaluate-weights-a-torch-list", ["evaluate", "--weights", "{tmp}/list.pt", "--data",
                                          "{data}"], "list.pt", setup=torch_list),
    cli("evaluate-weights-corrupt-safetensors",
        ["evaluate", "--weights", "{tmp}/w.safetensors", "--data", "{data}"], "w.safetensors",
        setup=write_bytes("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")),
    cli("evaluate-weights-of-another-model",
        ["evaluate", "--weights", "{tmp}/other.safetensors", "--data", "{data}"],
        "other.safetensors", setup=adapter_as_weights),
    cli("evaluate-model-unknown", ["evaluate", "--model", "vggt-huge", "--data", "{data}"],
        "'vggt-huge'"),
    cli("evaluate-device-unknown", [*ED, "--device", "gpu"], "'gpu'", "cuda"),
    cli("evaluate-device-unavailable", [*ED, "--device", NO_CUDA], f"'{NO_CUDA}'"),
    cli("evaluate-adapter-not-an-adapter", [*ED, "--adapter", "{tmp}/empty"], "empty",
        setup=mkdirs("empty")),
    cli("evaluate-adapter-sidecar-without-base", [*ED, "--adapter", "{tmp}/ads/texture"],
        "'base'", setup=copied_adapter(_sidecar(lambda m: m.pop("base")))),
    # fetch-real
    cli("fetch-real-debs-missing", [*FR, "--debs", "{tmp}/missing.deb"], "missing.deb"),
    cli("fetch-real-debs-not-packages", [*FR, "--debs", *DEBS], "visp-images-data_3.5.0-1",
        setup=junk_debs),
    cli("fetch-real-export-under-a-file", [*FR, "--debs", *DEBS, "--export", "{tmp}/blocker/x"],
        "blocker", setup=junk_debs_and(blocker)),
    cli("fetch-real-export-taken", [*FR, "--debs", *DEBS, "--export", "{tmp}/export"],
        "castel", setup=junk_debs_and(export_taken)),
    cli("fetch-real-views-zero", [*FR, "--debs", *DEBS, "--views", "0"], "views", "0",
        setup=junk_debs),
    cli("fetch-real-views-too-many", [*FR, "--debs", *DEBS, "--export", "{tmp}/export",
                                      "--views", "99"], "99", setup=junk_debs),
    cli("fetch-real-cache-is-a-file", ["fetch-real", "--cache", "{tmp}/blocker", "--debs", *DEBS],
        "blocker", setup=junk_debs_and(blocker)),
    # mine-adapter
    cli("mine-rank-wider-than-the-layers", [*MO, "--rank", "200"], "200", "64"),
    cli("mine-factor-all", [*M, "--factor", "all", "--out", "{tmp}/adapter"], "'all'"),
    cli("mine-factor-canonical", [*M, "--factor", "canonical", "--out", "{tmp}/adapter"],
        "'canonical'", "texture"),
    cli("mine-out-exists", [*MO], "{tmp}/adapter", setup=mkdirs("adapter")),
    cli("mine-out-under-a-file", [*MT, "--out", "{tmp}/blocker/adapter"], "blocker",
        setup=blocker),
    cli("mine-steps-zero", [*MO, "--steps", "0"], "steps", "0"),
    cli("mine-lr-infinite", [*MO, "--lr", "inf"], "lr", "inf"),
    cli("mine-alpha-zero", [*MO, "--alpha", "0"], "alpha", "0"),
    cli("mine-init-scale-negative", [*MO, "--init-scale", "-0.5"], "init-scale", "-0.5"),
    cli("mine-batch-size-zero", [*MO, "--batch-size", "0"], "batch-size", "0"),
    cli("mine-group-negative", [*MO, "--group", "-2"], "group", "-2"),
    cli("mine-weights-missing", [*MO[:1], *MO[2:], "--weights", "{tmp}/nope.safetensors"],
        "nope.safetensors"),
    cli("mine-size-too-large", [*MO, "--size", "140000"], "140000"),
    cli("mine-scenes-too-many-for-memory", [*MO, "--scenes", "10000000"], "10000000"),
    cli("mine-base-unknown", [*MO, "--base", "vggt-huge"], "'vggt-huge'"),
    cli("mine-device-unavailable", [*MO, "--device", NO_CUDA], f"'{NO_CUDA}'"),
    cli("mine-checkpoint-dir-under-a-file", [*MO, "--checkpoint-dir", "{tmp}/blocker/ck"],
        "blocker", setup=blocker),
    # bank build
    cli("bank-build-rank-above-the-adapters", [*BO, "--rank", "100"], "100", "4"),
    cli("bank-build-out-under-a-file", [*B, "--out", "{tmp}/blocker/bank.safetensors"],
        "blocker", setup=blocker),
    cli("bank-build-out-is-a-folder", [*B, "--out", "{tmp}/outdir"], "outdir",
        setup=mkdirs("outdir")),
    cli("bank-build-method-unknown", [*BO, "--method", "pca"], "'pca'"),
    cli("bank-build-rank-rule-unknown", [*BO, "--rank", "cliff"], "'cliff'"),
    cli("bank-build-rank-zero", [*BO, "--rank", "0"], "rank", "0"),
    cli("bank-build-iters-zero", [*BO, "--iters", "0"], "iters", "0"),
    cli("bank-build-alpha-out-of-range", [*BO, "--alpha", "3"], "alpha", "3"),
    cli("bank-build-permutations-negative", [*BO, "--permutations", "-5"], "permutations", "-5"),
    cli("bank-build-adapters-missing", ["bank", "build", "--adapters", "{tmp}/nowhere", "--out",
                                        "{tmp}/bank.safetensors"], "nowhere"),
    cli("bank-build-sidecar-without-base",
        ["bank", "build", "--adapters", "{tmp}/ads", "--out", "{tmp}/bank.safetensors"], "'base'",
        setup=copied_adapter(_sidecar(lambda m: m.pop("base")))),
    cli("bank-build-sidecar-unknown-factor",
        ["bank", "build", "--adapters", "{tmp}/ads", "--out", "{tmp}/bank.safetensors"],
        "'smell'", setup=copied_adapter(_sidecar(lambda m: m.update(factor="smell")))),
    cli("bank-build-sidecar-not-json",
        ["bank", "build", "--adapters", "{tmp}/ads", "--out", "{tmp}/bank.safetensors"],
        "attrsub-adapter.json", setup=copied_adapter(sidecar_text)),
    cli("bank-build-corrupt-adapter-weights",
        ["bank", "build", "--adapters", "{tmp}/ads", "--out", "{tmp}/bank.safetensors"],
        "adapter_model.safetensors", setup=copied_adapter(truncate_weights)),
    # bank info
    cli("bank-info-on-an-adapter-file", ["bank", "info", "{adapter}/adapter_model.safetensors"],
        "adapter_model.safetensors", "not a subspace bank"),
    cli("bank-info-missing", ["bank", "info", "{tmp}/nope.safetensors"], "nope.safetensors"),
    cli("bank-info-corrupt", ["bank", "info", "{tmp}/b.safetensors"], "b.safetensors",
        setup=write_bytes("b.safetensors", b"garbage")),
    cli("bank-info-on-a-folder", ["bank", "info", "{adapter}"], "{adapter}"),
    # finetune
    cli("finetune-out-holds-an-earlier-run", [*FN, "--out", "{tmp}/run"], "{tmp}/run",
        setup=earlier_run),
    cli("finetune-reduced-without-bank", [*FU, "--method", "reduced", "--factors", "texture",
                                          "--out", "{tmp}/new/run"], "--bank"),
    cli("finetune-out-is-a-file", [*FN, "--out", "{tmp}/blocker"], "blocker", setup=blocker),
    cli("finetune-task-unknown", [*FN[:2], "spoof", *FN[3:]], "'spoof'"),
    cli("finetune-method-unknown", [*FU, "--method", "adalora"], "'adalora'"),
    cli("finetune-ortho-unknown", [*FR_, "--ortho", "polar"], "'polar'"),
    cli("finetune-factors-unknown", [*FU, "--method", "reduced", "--bank", "{bank}", "--factors",
                                     "texture,smell"], "'smell'"),
    cli("finetune-bank-missing", [*FU, "--method", "reduced", "--bank", "{tmp}/nope.safetensors",
                                  "--factors", "texture"], "nope.safetensors"),
    cli("finetune-bank-is-an-adapter-file",
        [*FU, "--method", "reduced", "--bank", "{adapter}/adapter_model.safetensors",
         "--factors", "texture"], "not a subspace bank"),
    cli("finetune-reduced-rank-above-the-bank", [*FR_, "--rank", "9"], "9", "2"),
    cli("finetune-lora-rank-wider-than-the-layers", [*FL, "--rank", "200"], "200", "64"),
    cli("finetune-rank-zero", [*FL, "--rank", "0"], "rank", "0"),
    cli("finetune-total-rank-zero", [*FR_, "--total-rank", "0"], "total-rank", "0"),
    cli("finetune-steps-zero", [*FL, "--steps", "0"], "steps", "0"),
    cli("finetune-lr-nan", [*FL, "--lr", "nan"], "lr", "nan"),
    cli("finetune-lr-zero", [*FL, "--lr", "0"], "lr", "0"),
    cli("finetune-size-too-large", [*FN, "--size", "140000"], "140000"),
    cli("finetune-train-scenes-too-many", [*FL, "--train-scenes", "90000", "--size", "518"],
        "90000"),
    cli("finetune-views-one", [*FN, "--views", "1"], "views", "1"),
    cli("finetune-seed-negative", [*FN, "--seed", "-1"], "seed", "-1"),
    cli("finetune-device-unknown", [*FN, "--device", "gpu"], "'gpu'"),
    cli("finetune-weights-a-torch-list", [*F, "--method", "none", "--weights", "{tmp}/list.pt"],
        "list.pt", setup=torch_list),
    cli("finetune-base-unknown", [*FN, "--base", "vggt-huge"], "'vggt-huge'"),
    # export, bank export, bank import
    cli("export-format-unknown", [*X[:4], "onnx", *X[5:]], "'onnx'", "peft-lora"),
    cli("export-out-exists", X, "{tmp}/x", "exists", setup=mkdirs("x")),
    cli("export-not-an-adapter", ["export", "--adapter", "{tmp}/empty", *X[3:]], "empty",
        setup=mkdirs("empty")),
    cli("export-reduced-without-bank", ["export", "--adapter", "{tmp}/run", *X[3:]], "--bank",
        setup=reduced_run),
    cli("bank-export-format-unknown", [*BX[:4], "npz", *BX[5:]], "'npz'", "authors"),
    cli("bank-export-out-is-a-folder", [*BX[:-1], "{tmp}/outdir"], "outdir",
        setup=mkdirs("outdir")),
    cli("bank-export-factor-unknown", [*BX, "--factors", "smell"], "'smell'"),
    cli("bank-export-of-an-adapter-file", ["bank", "export", "{adapter}/adapter_model.safetensors",
                                           *BX[3:]], "not a subspace bank"),
    cli("bank-import-missing", ["bank", "import", "{tmp}/nope.safetensors", "--out",
                                "{tmp}/b.safetensors"], "nope.safetensors"),
    cli("bank-import-corrupt", ["bank", "import", "{tmp}/s.safetensors", "--out",
                                "{tmp}/b.safetensors"], "s.safetensors",
        setup=write_bytes("s.safetensors", b"garbage")),
    cli("bank-import-out-under-a-file", ["bank", "import", "{bank}", "--out",
                                         "{tmp}/blocker/b.safetensors"], "blocker",
        setup=blocker),
    cli("bank-import-ranks-zero", ["bank", "import", "{bank}", "--out", "{tmp}/b.safetensors",
                                   "--ranks", "2,0"], "ranks", "0"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], shared: dict[str, Path]
) -> None:
    run_case(case, tmp_path, capsys, shared)


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CLI_CASES}) == len(CLI_CASES) >= 50


@pytest.mark.parametrize(
    "argv",
    [
        ["mine-adapter", "--factor", "all", "--out", "{tmp}/adapter"],
        ["evaluate", "--device", "gpu", "--data", "{tmp}"],
    ],
    ids=["mine-factor-all", "evaluate-device-unknown"],
)
def test_a_real_process_exits_2_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attrsub", *(a.format(tmp=tmp_path) for a in argv)],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"attrsub {argv[0]}: error: "), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_pretrain_never_writes_the_shipped_weights_by_default(tmp_path: Path) -> None:
    args = build_parser().parse_args(["pretrain"])
    assert args.out is not None
    out = (tmp_path / args.out).resolve()
    assert WEIGHTS_DIR.resolve() not in (out, *out.parents)
    proc = subprocess.run([sys.executable, "-m", "attrsub", "pretrain", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "current directory" in " ".join(proc.stdout.split())


# --------------------------------------------------------------------------- the study drivers
# The same three promises for `python sweeps/{mine,ablation,search}.py` and the report: every
# case below is refused by the driver's checks before Ray starts or a folder is made.


def _study_entry(module: str) -> Entry:
    def entry(argv: list[str]) -> int | None:
        import importlib

        return importlib.import_module(module).main(argv)
    return entry


ABLATION, MINE, SEARCH = (_study_entry(f"sweeps.{m}") for m in ("ablation", "mine", "search"))
REPORT = _study_entry("results.report")
ST = ["--preset", "smoke", "--storage", "{tmp}/studies"]
STP = [*ST, "--presets", "{tmp}/presets.yaml"]


def study(id: str, entry: Entry, prog: str, argv: Sequence[str], *expect: str,
          setup: Setup | None = None) -> Case:
    """A Case of a study driver (``prog`` starts its error line)."""
    return Case(id, tuple(argv), tuple(expect), setup, entry, f"{prog}: error: ")


def presets(text: str | None = None, **changes: object) -> Setup:
    """``{tmp}/presets.yaml``: ``text`` as is, or the shipped smoke preset with ``changes``
    (dotted keys) applied."""
    def setup(tmp: Path, paths: Paths) -> None:
        import copy

        import yaml

        from sweeps.config import PRESETS

        if text is not None:
            (tmp / "presets.yaml").write_text(text)
            return
        smoke = copy.deepcopy(yaml.safe_load(PRESETS.read_text())["smoke"])
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            d = smoke
            for k in parents:
                d = d[k]
            d[last] = value
        (tmp / "presets.yaml").write_text(yaml.safe_dump({"smoke": smoke}, sort_keys=False))
    return setup


def existing_study(tmp: Path, paths: Paths) -> None:
    """A smoke study at ``{tmp}/studies`` as a driver's session starts it (its record)."""
    from results.schema import write_record
    from sweeps.study import claim, open_study, study_parser

    args = study_parser("setup", None).parse_args(
        ["--preset", "smoke", "--storage", str(tmp / "studies")])
    st = open_study(args)
    st.paths.local.mkdir(parents=True)
    write_record(st.record, claim(st))


def existing_study_and(other: Setup) -> Setup:
    def setup(tmp: Path, paths: Paths) -> None:
        existing_study(tmp, paths)
        other(tmp, paths)
    return setup


def study_folder(*files: tuple[str, bytes]) -> Setup:
    def setup(tmp: Path, paths: Paths) -> None:
        (tmp / "st").mkdir()
        for name, data in files:
            (tmp / "st" / name).write_bytes(data)
    return setup


STUDY_CASES: list[Case] = [
    study("ablation-unknown-preset", ABLATION, "ablation", [*ST[:1], "nope", *ST[2:]], "'nope'",
          "smoke"),
    study("ablation-unknown-option", ABLATION, "ablation", [*ST, "--seeds", "3"], "--seeds"),
    study("ablation-presets-missing", ABLATION, "ablation", STP, "presets.yaml"),
    study("ablation-presets-a-list", ABLATION, "ablation", STP, "presets.yaml", "list",
          setup=presets("- smoke\n- quick\n")),
    study("ablation-presets-empty", ABLATION, "ablation", STP, "presets.yaml", "empty",
          setup=presets("")),
    study("ablation-presets-malformed-yaml", ABLATION, "ablation", STP, "presets.yaml",
          setup=presets("smoke: [model: vggt-tiny\n")),
    study("ablation-lr-infinite", ABLATION, "ablation", STP, "inf",
          setup=presets(**{"downstream.lr": float("inf")})),
    study("ablation-size-too-large-for-memory", ABLATION, "ablation", STP, "140000", "memory",
          setup=presets(size=140000)),
    study("ablation-duplicate-factors", ABLATION, "ablation", STP, "texture",
          setup=presets(factors=["texture", "texture"])),
    study("ablation-extraction-unknown-key", ABLATION, "ablation", STP, "rnk", "rank",
          setup=presets(extraction={"rnk": 4})),
    study("ablation-mining-steps-zero", ABLATION, "ablation", STP, "steps", "0",
          setup=presets(**{"mining.steps": 0})),
    study("ablation-unknown-task", ABLATION, "ablation", STP, "'spoof'",
          setup=presets(**{"downstream.tasks": ["spoof"]})),
    study("ablation-num-cpus-negative", ABLATION, "ablation", [*ST, "--num-cpus", "-1"], "-1"),
    study("ablation-resume-of-a-missing-study", ABLATION, "ablation", [*ST, "--resume"],
          "nothing to resume"),
    study("ablation-resume-with-another-preset", ABLATION, "ablation", [*STP, "--resume"],
          "preset.downstream.steps", setup=existing_study_and(presets(**{"downstream.steps": 3}))),
    study("ablation-extend-cannot-change-steps", ABLATION, "ablation",
          [*STP, "--resume", "--extend"], "preset.downstream.steps",
          setup=existing_study_and(presets(**{"downstream.steps": 3}))),
    study("ablation-existing-study-without-resume", ABLATION, "ablation", ST, "--resume",
          setup=existing_study),
    study("ablation-extend-without-resume", ABLATION, "ablation", [*ST, "--extend"], "--extend"),
    study("ablation-study-name-a-path", ABLATION, "ablation", [*ST, "--study", "../x"], "'../x'"),
    study("ablation-storage-is-a-file", ABLATION, "ablation",
          ["--preset", "smoke", "--storage", "{tmp}/blocker"], "blocker", setup=blocker),
    study("ablation-weights-with-a-random-init-preset", ABLATION, "ablation",
          [*ST, "--weights", "{tmp}/list.pt"], "random-init", setup=torch_list),
    study("ablation-weights-missing", ABLATION, "ablation",
          ["--preset", "quick", "--storage", "{tmp}/studies", "--weights", "{tmp}/nope.pt"],
          "nope.pt"),
    study("ablation-weights-corrupt", ABLATION, "ablation",
          ["--preset", "quick", "--storage", "{tmp}/studies", "--weights", "{tmp}/w.safetensors"],
          "w.safetensors", setup=write_bytes("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00")),
    study("mine-unknown-preset", MINE, "mine", ["--preset", "nope", *ST[2:]], "'nope'"),
    study("mine-resume-of-a-missing-study", MINE, "mine", [*ST, "--resume"], "nothing to resume"),
    study("mine-resume-with-another-preset", MINE, "mine", [*STP, "--resume"], "mining.steps",
          setup=existing_study_and(presets(**{"mining.steps": 4}))),
    study("search-resume-of-a-missing-study", SEARCH, "search", [*ST, "--resume"],
          "nothing to resume"),
    study("search-objectives-unknown", SEARCH, "search", [*ST, "--objectives", "speed"],
          "'speed'"),
    study("search-trials-zero", SEARCH, "search", [*ST, "--trials", "0"], "trials", "0"),
    study("search-sampler-unknown", SEARCH, "search", [*ST, "--sampler", "grid"], "'grid'"),
    study("search-task-unknown", SEARCH, "search", [*ST, "--task", "spoof"], "'spoof'"),
    study("report-not-a-folder", REPORT, "python -m results.report", ["{tmp}/nowhere"],
          "nowhere"),
    study("report-not-a-study-folder", REPORT, "python -m results.report", ["{tmp}/empty"],
          "empty", "study", setup=mkdirs("empty")),
    study("report-unreadable-table", REPORT, "python -m results.report", ["{tmp}/st"],
          "trials", setup=study_folder(("trials.parquet", b"not parquet"))),
    study("report-wall-s-negative", REPORT, "python -m results.report",
          ["{tmp}/st", "--wall-s", "-5"], "wall-s", "-5",
          setup=study_folder(("study.json", b"{}"))),
]


@pytest.mark.parametrize("case", STUDY_CASES, ids=[c.id for c in STUDY_CASES])
def test_study_driver_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    run_case(case, tmp_path, capsys)


def test_every_case_is_counted() -> None:
    """The issue asks for 60 cases at least; ids are unique across both lists."""
    ids = [c.id for c in (*CLI_CASES, *STUDY_CASES)]
    assert len(set(ids)) == len(ids) >= 60
