"""The attrsub command line as a user runs it: render, show, evaluate, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from attrsub.cli import main

RENDER = ["render", "--scenes", "2", "--views", "2", "--size", "28"]


def test_render_then_show_writes_a_readable_contact_sheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for factor in ("texture", "camera"):
        assert main([*RENDER, "--factor", factor, "--out", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Path(p, "spec.json").is_file() for p in printed)
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(tmp_path / "data"), "--out", str(sheet)]) == 0
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300


def test_show_families_puts_the_canonical_world_and_every_family_on_one_sheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "families.png"
    args = ["show", "--families", "--scenes", "1", "--views", "2", "--size", "28",
            "--cache", str(tmp_path / "cache"), "--out", str(sheet)]
    assert main(args) == 0
    rendered = sorted(p.name.split("-g")[0] for p in (tmp_path / "cache").iterdir())
    assert rendered == ["camera", "canonical", "geometry", "lighting", "texture"]
    with Image.open(sheet) as im:  # five rows: canonical, then each family
        assert im.format == "PNG" and im.height > im.width
    capsys.readouterr()
    assert main(["show", "--out", str(sheet)]) == 2
    assert "a dataset folder or --families" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--factor", "colour"], "unknown factor 'colour'"),
        (["--factor", "texture", "--size", "100"], "--size: 100 is not a positive multiple"),
        (["--factor", "texture", "--scenes", "0"], "--scenes: 0 is not a positive integer"),
        (["--factor", "texture", "--views", "0"], "--views: 0 is not a positive integer"),
    ],
)
def test_render_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "data"
    code = main(["render", "--scenes", "2", "--views", "2", "--size", "28", *args,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "nothing rendered on bad input"


def test_render_to_an_unwritable_place_fails_before_rendering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main([*RENDER, "--factor", "texture", "--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err


def test_evaluate_prints_json_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([*RENDER, "--factor", "canonical", "--out", str(tmp_path)])
    data = capsys.readouterr().out.strip()
    assert main(["evaluate", "--model", "vggt-tiny", "--untrained", "--data", data, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("depth_absrel", "depth_delta1", "cam_auc30", "pc_acc", "samples"):
        assert key in metrics
    assert metrics["samples"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "vggt-huge"], "unknown model config 'vggt-huge'"),
        (["--weights", "/nonexistent/model.pt"], "does not exist"),
        (["--model", "vggt-1b"], "pass --weights PATH"),
    ],
)
def test_evaluate_bad_model_or_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    main([*RENDER, "--factor", "canonical", "--out", str(tmp_path)])
    data = capsys.readouterr().out.strip()
    assert main(["evaluate", *args, "--data", data]) == 2
    assert needle in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attrsub", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    for command in ("render", "show", "pretrain", "evaluate"):
        assert command in proc.stdout
