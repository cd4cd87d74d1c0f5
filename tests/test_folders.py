"""Bring-your-own folders: geometry survives loading, and malformed folders fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attrsub.data.folders import FolderDataset
from attrsub.errors import DataError

PLANE_N = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
PLANE_D = 4.0


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [k for k in range(3) if k != axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def _write_plane_sample(folder: Path, w: int, h: int, frames: int = 3) -> list[np.ndarray]:
    """Depth maps of the plane n.X = d seen by cameras posed around an arbitrary world."""
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    K = np.array([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1.0]])
    cams, extr = {}, []
    rng = np.random.default_rng(0)
    for f in range(frames):
        R = _rot(1, 4.0 * f) @ _rot(0, -3.0 * f)
        t = np.array([0.3 * f, -0.1, 0.2]) + 0.05 * rng.standard_normal(3)
        E = np.hstack([R, t[:, None]])
        C = -R.T @ t
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        rays = np.linalg.inv(K) @ np.stack([u, v, np.ones_like(u)]).reshape(3, -1)
        s = (PLANE_D - PLANE_N @ C) / (PLANE_N @ (R.T @ rays))
        depth_mm = np.round(s.reshape(h, w) * 1000).astype(np.uint16)
        depth_mm[: h // 8, : w // 8] = 0
        Image.fromarray(depth_mm).save(folder / "depth" / f"{f:03d}.png")
        rgb = (rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)
        Image.fromarray(rgb).save(folder / "rgb" / f"{f:03d}.png")
        cams[f"{f:03d}"] = {"K": K.tolist(), "extrinsics": E.tolist()}
        extr.append(E)
    (folder / "cameras.json").write_text(json.dumps(cams))
    return extr


def _manifest(root: Path) -> None:
    (root / "attrsub-folder.json").write_text(json.dumps({"depth_unit": 0.001}))


@pytest.mark.parametrize(("w", "h", "tol"), [(140, 112, 2e-3), (224, 252, 3e-2)])
def test_points_lie_on_the_captured_plane(tmp_path: Path, w: int, h: int, tol: float) -> None:
    _manifest(tmp_path)
    extr = _write_plane_sample(tmp_path / "seq0", w, h)
    item = FolderDataset(tmp_path, size=112)[0]
    assert item["images"].shape == (3, 3, 112, 112)
    assert np.allclose(item["extrinsics"][0].numpy(), np.hstack([np.eye(3), np.zeros((3, 1))]),
                       atol=1e-6)
    # The plane in the first camera's frame: n' = R0 n, d' = d + n' . t0.
    R0, t0 = extr[0][:, :3], extr[0][:, 3]
    n1 = R0 @ PLANE_N
    d1 = PLANE_D + n1 @ t0
    valid = item["valid"].numpy()
    assert valid.mean() > 0.9 and not valid[:, 0, 0].any()
    pts = item["world_points"].numpy()[valid].astype(np.float64)
    residual = np.abs(pts @ n1 - d1) / d1
    assert np.median(residual) < tol / 4 and residual.max() < tol
    # Reprojecting frame 1's points with its own camera recovers frame 1's depth.
    E1 = item["extrinsics"][1].double().numpy()
    pts_1 = item["world_points"][1].double().numpy()[valid[1]]
    cam = pts_1 @ E1[:, :3].T + E1[:, 3]
    assert np.allclose(cam[:, 2], item["depths"][1].numpy()[valid[1]], rtol=1e-4)


def test_missing_depth_and_mismatched_sizes_are_named(tmp_path: Path) -> None:
    _manifest(tmp_path)
    _write_plane_sample(tmp_path / "seq0", 140, 112)
    (tmp_path / "seq0" / "depth" / "001.png").unlink()
    with pytest.raises(DataError, match=r"frame '001' .* has no depth map"):
        FolderDataset(tmp_path)
    Image.fromarray(np.zeros((50, 60), np.uint16)).save(tmp_path / "seq0" / "depth" / "001.png")
    with pytest.raises(DataError, match="image is 140x112 but depth is 60x50"):
        FolderDataset(tmp_path)


def test_folder_without_manifest_or_samples(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="attrsub-folder.json"):
        FolderDataset(tmp_path)
    (tmp_path / "attrsub-folder.json").write_text(json.dumps({"depth_unit": -1}))
    with pytest.raises(DataError, match="depth_unit must be a positive number"):
        FolderDataset(tmp_path)
    _manifest(tmp_path)
    with pytest.raises(DataError, match="no sample folders"):
        FolderDataset(tmp_path)


def test_folder_without_cameras_gives_depth_only(tmp_path: Path) -> None:
    _manifest(tmp_path)
    _write_plane_sample(tmp_path / "seq0", 140, 112)
    (tmp_path / "seq0" / "cameras.json").unlink()
    item = FolderDataset(tmp_path, size=56)[0]
    assert set(item) == {"images", "depths", "valid"}
    assert item["depths"].shape == (3, 56, 56)


def test_evaluate_on_a_folder_without_poses_gives_depth_metrics(tmp_path: Path) -> None:
    from attrsub.eval.evaluate import evaluate, open_data
    from attrsub.model import build

    _manifest(tmp_path)
    _write_plane_sample(tmp_path / "seq0", 140, 112)
    (tmp_path / "seq0" / "cameras.json").unlink()
    metrics = evaluate(build("vggt-tiny"), open_data(tmp_path, size=56))
    assert {"depth_absrel", "depth_delta1", "samples"} <= set(metrics)
    assert "cam_auc30" not in metrics and "pc_acc" not in metrics
