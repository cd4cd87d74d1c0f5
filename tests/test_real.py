"""Real captured data: fetch and checksums, each source's units and geometry, the
bring-your-own export, and the synthetic-to-real task.

The session fixture fetches the two Debian packages once into the dataset cache root
(``$ATTRSUB_CACHE`` or ``~/.cache/attrsub/datasets``) and reuses them afterwards.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attrsub.cli import main
from attrsub.data.capture_sources import (
    SHA256,
    fetch_real,
    real_data_dir,
    require_real_data,
    verify_files,
)
from attrsub.data.captures import (
    ALOE_BASELINE_M,
    ALOE_DMIN_PX,
    ALOE_FOCAL_PX,
    CASTEL_FRAMES,
    CHESS_PAIRS,
    SOURCES,
    CaptureDataset,
    Frame,
    aloe_frames,
    board_points,
    castel_cameras,
    castel_frames,
    castel_windows,
    chessboard_calibration,
    load_captures,
    read_pos_file,
)
from attrsub.data.datasets import default_cache_root
from attrsub.data.folders import FolderDataset
from attrsub.errors import ConfigError, DataError
from attrsub.methods import finetune
from attrsub.tasks import RealTask, TaskSize, get_task, plane_fit_residual

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="session")
def cache() -> Path:
    """The cache root holding the real captures (fetched here once when absent)."""
    root = default_cache_root()
    fetched = (real_data_dir(root) / "attrsub-real.json").is_file()
    if not fetched and shutil.which("apt-get") is None:
        pytest.skip("real data absent and no apt-get to fetch them (not a Debian system)")
    fetch_real(root)
    return root


@pytest.fixture(scope="session")
def root(cache: Path) -> Path:
    return require_real_data(cache)


def _homog(E: np.ndarray) -> np.ndarray:
    return np.vstack([E, [0.0, 0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- fetch


def test_missing_data_names_the_fetch_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTRSUB_CACHE", str(tmp_path / "empty-default"))
    for call in (
        lambda: require_real_data(tmp_path),
        lambda: load_captures("castel", tmp_path),
        lambda: get_task("real").train_data(tmp_path, TaskSize(2, 2, 2, 28)),
    ):
        with pytest.raises(DataError, match=rf"not found at '{tmp_path}.*attrsub fetch-real"):
            call()
    with pytest.raises(ConfigError, match="unknown real-data source 'kitti'"):
        load_captures("kitti", tmp_path)
    assert main(["finetune", "--task", "real", "--method", "none", "--cache", str(tmp_path)]) == 2


def test_cached_files_match_their_checksums(root: Path, tmp_path: Path) -> None:
    verify_files(root)
    assert len(SHA256) == 2 * CASTEL_FRAMES + 5 + 3 + 1 + 2 * len(CHESS_PAIRS)
    for name in SHA256:  # a copy made of links, with one file changed
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(root / name)
    (tmp_path / "castel/chateau.init").unlink()
    (tmp_path / "castel/chateau.init").write_text("4\n0 0 0\n")
    with pytest.raises(DataError, match=r"castel/chateau.init: sha256 .* does not match"):
        verify_files(tmp_path)
    assert fetch_real(root.parent) == root  # a complete cache is reused, not fetched again


# --------------------------------------------------------------------------- castel


def test_castel_units_intrinsics_and_masks(root: Path) -> None:
    frames = castel_frames(root)
    assert len(frames) == CASTEL_FRAMES
    K_cv, _ = castel_cameras(root)
    for f in frames:
        assert f.rgb.shape == (480, 640, 3) and f.rgb.dtype == np.uint8
        assert (f.rgb[..., 0] == f.rgb[..., 2]).all(), "grey camera repeated into RGB"
        assert f.depth.shape == (480, 640) and f.depth.dtype == np.float32
        valid = f.depth > 0
        assert 0.5 < valid.mean() < 0.85
        # metres: a tabletop castle 0.18-0.85 m from an SR300
        assert f.depth[valid].min() > 0.15 and f.depth[valid].max() < 0.9
        assert 0.2 < float(np.median(f.depth[valid])) < 0.35
        np.testing.assert_allclose(f.K[0], [615.1674804688, 0, 312.1889953613 + 0.5])
        np.testing.assert_allclose(f.K[1], [0, 615.1675415039, 243.4373779297 + 0.5])
    assert np.allclose(frames[0].E, np.eye(4)[:3])
    # The tracker's pose of the castle model in frame 0 (chateau.0.pos) puts two of the model
    # points clicked at initialisation (chateau.init) where the registered depth sees them
    # (point 1 is on the black tower, which returns no depth; point 3 is on a hidden face).
    cMo = read_pos_file(root / "castel" / "chateau.0.pos")
    model = np.loadtxt(root / "castel" / "chateau.init", skiprows=1)
    cam = cMo[:3, :3] @ model.T + cMo[:3, 3:]
    u = K_cv[0, 0] * cam[0] / cam[2] + K_cv[0, 2]
    v = K_cv[1, 1] * cam[1] / cam[2] + K_cv[1, 2]
    for k in (0, 2):
        r, c = round(v[k]), round(u[k])
        win = frames[0].depth[r - 2 : r + 3, c - 2 : c + 3]
        assert abs(float(np.median(win[win > 0])) - cam[2, k]) < 0.006


def _reproject(
    frames: tuple[Frame, ...], a: int, b: int, E_ab: np.ndarray
) -> tuple[float, float]:
    """Median |z| error of frame a's points moved into frame b by E_ab against b's depth, and
    the mean grey difference at the matched pixels."""
    fa, fb = frames[a], frames[b]
    h, w = fa.depth.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    m = fa.depth > 0
    pts = np.linalg.inv(fa.K) @ np.stack([xs[m], ys[m], np.ones(m.sum())]) * fa.depth[m]
    q = E_ab[:3, :3] @ pts + E_ab[:3, 3:]
    col = np.floor(fb.K[0, 0] * q[0] / q[2] + fb.K[0, 2]).astype(int)
    row = np.floor(fb.K[1, 1] * q[1] / q[2] + fb.K[1, 2]).astype(int)
    ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    zb = fb.depth[row[ok], col[ok]]
    seen = zb > 0
    dz = float(np.median(np.abs(zb[seen] - q[2][ok][seen])))
    grey = np.abs(fa.rgb[..., 0][m][ok].astype(float) - fb.rgb[..., 0][row[ok], col[ok]]).mean()
    return dz, float(grey)


@pytest.mark.parametrize(("a", "b"), [(0, 29), (0, 20), (20, 29), (12, 16)])
def test_castel_poses_reproject_depth_between_frames(root: Path, a: int, b: int) -> None:
    frames = castel_frames(root)
    E_ab = _homog(frames[b].E) @ np.linalg.inv(_homog(frames[a].E))
    dz, grey = _reproject(frames, a, b, E_ab)
    dz_id, grey_id = _reproject(frames, a, b, np.eye(4))
    assert dz < 0.002 and dz < 0.5 * dz_id, (dz, dz_id)
    assert grey < 0.75 * grey_id, (grey, grey_id)


# --------------------------------------------------------------------------- chessboard


def test_chessboard_poses_reproject_corners_and_baseline_is_consistent(root: Path) -> None:
    cal = chessboard_calibration(root)
    assert cal.rms < 0.6
    baseline = float(np.linalg.norm(cal.T))
    assert 0.08 < baseline < 0.087  # metres, from 25 mm squares
    obj = board_points()
    errors, baselines = [], []
    for k in range(len(CHESS_PAIRS)):
        R_b, t_b = cal.board_poses[k]
        for K, dist, R, t, seen in (
            (cal.K_left, cal.dist_left, R_b, t_b, cal.corners_left[k]),
            (cal.K_right, cal.dist_right, cal.R @ R_b, cal.R @ t_b + cal.T, cal.corners_right[k]),
        ):
            proj, _ = cv2.projectPoints(obj, cv2.Rodrigues(R)[0], t, K, dist)
            errors.append(float(np.sqrt(((proj[:, 0] - seen) ** 2).sum(1).mean())))
        # the right camera's own PnP pose gives the same baseline in every pair
        _, rvec, tvec = cv2.solvePnP(obj, cal.corners_right[k], cal.K_right, cal.dist_right)
        R_rel = cv2.Rodrigues(rvec)[0] @ R_b.T
        baselines.append(float(np.linalg.norm(tvec.ravel() - R_rel @ t_b)))
    assert float(np.median(errors)) < 0.5 and max(errors) < 1.5, errors
    assert np.allclose(baselines, baseline, rtol=0.05) and np.std(baselines) < 0.0015


def test_chessboard_depth_is_the_board_plane(root: Path) -> None:
    cal = chessboard_calibration(root)
    caps = load_captures("chessboard", root.parent)
    assert [c.name for c in caps] == [f"chessboard-{i:02d}" for i in CHESS_PAIRS]
    for cap in caps[:4]:
        left, right = cap.frames
        assert np.allclose(left.E, np.eye(4)[:3])
        np.testing.assert_allclose(right.E, np.hstack([cal.R, cal.T[:, None]]))
        s = cap.sample(112)
        valid = s["valid"]
        assert 0.05 < float(valid.float().mean()) < 0.9 and bool(valid.any(dim=(1, 2)).all())
        assert float(s["depths"][valid].min()) > 0.15 and float(s["depths"][valid].max()) < 0.7
        # both views' points lie on one plane in the shared world (left camera) frame
        assert plane_fit_residual(s["world_points"][valid]) < 2e-3
    # the undistorted images are pinhole: the board corners project where they are seen
    R_b, t_b = cal.board_poses[0]
    seen = cv2.undistortPoints(cal.corners_left[0].reshape(-1, 1, 2).astype(np.float64),
                               cal.K_left, cal.dist_left, P=cal.K_left)[:, 0]
    K = caps[0].frames[0].K
    cam = R_b @ board_points().T.astype(np.float64) + t_b[:, None]
    uv = (K @ cam)[:2] / cam[2] - 0.5  # our +0.5 pixel-centre convention back to OpenCV's
    assert float(np.sqrt(((uv.T - seen) ** 2).sum(1).mean())) < 0.5


# --------------------------------------------------------------------------- aloe


def test_aloe_depth_from_disparity_and_stereo_warp(root: Path) -> None:
    left, right = aloe_frames(root)
    from PIL import Image

    disp = np.asarray(Image.open(root / "opencv" / "aloeGT.png")).astype(float)
    assert left.rgb.shape == (1110, 1282, 3)
    valid = disp > 0
    np.testing.assert_array_equal(left.depth > 0, valid)
    r, c = 555, 641
    assert disp[r, c] > 0
    expected = ALOE_FOCAL_PX * ALOE_BASELINE_M / (disp[r, c] + ALOE_DMIN_PX)
    assert left.depth[r, c] == pytest.approx(expected, rel=1e-6)
    assert left.depth[valid].min() > 1.1 and left.depth[valid].max() < 2.0  # metres
    # x_l - d lands on matching colours in the right image, at full resolution ...
    ys, xs = np.nonzero(valid)
    xr = xs - disp[ys, xs].astype(int)
    ok = xr >= 0
    warped = np.abs(left.rgb[ys[ok], xs[ok]].astype(float) - right.rgb[ys[ok], xr[ok]]).mean()
    unwarped = np.abs(left.rgb[ys, xs].astype(float) - right.rgb[ys, xs]).mean()
    assert warped < 0.35 * unwarped, (warped, unwarped)
    # ... and through the sample's cameras: left world points project onto the right view
    s = load_captures("aloe", root.parent)[0].sample(224)
    m = s["valid"][0]
    pts = s["world_points"][0][m].double()
    E, K = s["extrinsics"][1].double(), s["intrinsics"][1].double()
    cam = pts @ E[:, :3].T + E[:, 3]
    uv = cam @ K.T
    col = (uv[:, 0] / uv[:, 2]).floor().long()
    row = (uv[:, 1] / uv[:, 2]).floor().long()
    inside = (col >= 0) & (col < 224) & (row >= 0) & (row < 224)
    img_l, img_r = s["images"][0], s["images"][1]
    src = img_l[:, m][:, inside]
    err = (src - img_r[:, row[inside], col[inside]]).abs().mean()
    rows, cols = torch.nonzero(m, as_tuple=True)
    err_id = (img_l[:, m] - img_r[:, rows, cols]).abs().mean()
    assert float(err) < 0.4 * float(err_id), (float(err), float(err_id))
    assert float(right.depth[right.depth > 0].min()) > 1.1


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("source", SOURCES)
def test_samples_have_the_rendered_form(root: Path, source: str) -> None:
    cap = load_captures(source, root.parent, views=3)[0]
    s = cap.sample(56)
    v = len(cap.frames)
    assert v == {"castel": 3, "chessboard": 2, "aloe": 2}[source]
    shapes = {
        "images": (v, 3, 56, 56), "depths": (v, 56, 56), "valid": (v, 56, 56),
        "extrinsics": (v, 3, 4), "intrinsics": (v, 3, 3), "world_points": (v, 56, 56, 3),
    }
    assert {k: tuple(t.shape) for k, t in s.items()} == shapes
    assert s["valid"].dtype == torch.bool and torch.equal(s["valid"], s["depths"] > 0)
    assert float(s["images"].min()) >= 0 and float(s["images"].max()) <= 1
    assert torch.allclose(s["extrinsics"][0], torch.eye(4)[:3], atol=1e-6)
    # world points re-project to their own pixels with the sample's cameras
    for view in range(v):
        m = s["valid"][view]
        E, K = s["extrinsics"][view].double(), s["intrinsics"][view].double()
        cam = s["world_points"][view][m].double() @ E[:, :3].T + E[:, 3]
        uv = (cam @ K.T)[:, :2] / cam[:, 2:]
        rows, cols = torch.nonzero(m, as_tuple=True)
        want = torch.stack([cols, rows], -1).double() + 0.5
        assert float((uv - want).abs().max()) < 1e-3
        assert torch.allclose(cam[:, 2], s["depths"][view][m].double(), rtol=1e-4)


def test_export_is_a_folder_dataset_with_identical_tensors(root: Path, tmp_path: Path) -> None:
    assert main(["fetch-real", "--cache", str(root.parent), "--export", str(tmp_path / "x"),
                 "--views", "5"]) == 0
    for source in SOURCES:
        ours = CaptureDataset(load_captures(source, root.parent, views=5), 56)
        theirs = FolderDataset(tmp_path / "x" / source, size=56)
        assert len(ours) == len(theirs) == {"castel": 6, "chessboard": 13, "aloe": 1}[source]
        for i in range(len(ours)):
            a, b = ours[i], theirs[i]
            assert set(a) == set(b)
            for key in a:
                assert torch.equal(a[key], b[key]), (source, i, key)
    assert main(["evaluate", "--data", str(tmp_path / "x" / "aloe"), "--size", "28",
                 "--depth-align", "scale_shift", "--json"]) == 0


# --------------------------------------------------------------------------- the task


def test_real_task_splits_are_disjoint_and_deterministic() -> None:
    task = get_task("real")
    assert isinstance(task, RealTask) and task.main_metric == "test/depth_absrel"
    size = TaskSize(train_scenes=16, eval_scenes=16, views=4, size=56)
    a, b = task.windows(0, size), task.windows(0, size)
    assert a == b
    assert (len(a["train"]), len(a["test"])) == (4, 3)  # 7 windows, at most half for test
    train = {f for w in a["train"] for f in w}
    test = {f for w in a["test"] for f in w}
    assert not train & test and len(train) == 16 and len(test) == 12
    assert len({str(task.windows(s, size)) for s in range(6)}) > 1, "the seed picks the split"
    assert len(task.chessboard_pairs(0, size)) == len(CHESS_PAIRS)
    assert task.chessboard_pairs(3, TaskSize(2, 2, 2, 28)) == task.chessboard_pairs(
        3, TaskSize(2, 2, 2, 28)
    )
    assert len(task.chessboard_pairs(3, TaskSize(2, 2, 2, 28))) == 2
    big = task.windows(1, TaskSize(1, 1, 40, 28))  # views capped at 15: two windows
    assert [len(w) for w in big["train"] + big["test"]] == [15, 15]
    small = task.windows(0, TaskSize(1, 1, 2, 28))
    assert len(small["train"]) == len(small["test"]) == 1
    assert castel_windows(4)[-1] == (24, 25, 26, 27)
    with pytest.raises(ConfigError, match="2..15 views"):
        castel_windows(16)


def test_real_task_tiny_finetune_gives_finite_metrics(root: Path) -> None:
    row = finetune("real", "lora", rank=4, steps=2, batch_size=1, train_scenes=1, eval_scenes=1,
                   views=2, size=28, cache=root.parent)
    assert row["steps"] == 2 and math.isfinite(row["final_loss"])
    for split, n in (("test", 1), ("chessboard", 1), ("aloe", 1)):
        assert row[f"{split}/samples"] == n
        for metric in ("depth_absrel", "depth_delta1", "pc_acc", "cam_rra15"):
            assert math.isfinite(row[f"{split}/{metric}"]), (split, metric)
    assert row["main"] == row["test/depth_absrel"]
