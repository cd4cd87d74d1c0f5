"""Real captured multi-view data: three sources from Debian packages, as samples in the form
rendered ones have (``attrsub.data.folders.assemble_sample``), and as bring-your-own folders.

Fetch the files once with ``attrsub fetch-real`` (``attrsub.data.capture_sources``); without
them every loader raises DataError naming that command. All depths are z-depths in metres (0 where
unknown); intrinsics put pixel centres at +0.5, as the renderer and ``attrsub.data.folders`` do
(OpenCV and ViSP put them at integer coordinates, so their principal points get +0.5);
extrinsics are OpenCV camera-from-world.

**castel** (visp-images-data 3.5.0-1, ``mbt-depth/castel``): 30 frames of an Intel RealSense
SR300 turning about 16 degrees (6 cm) around a toy castle, 640x480.

- ``image_NNNN.pgm``: 8-bit grey colour-camera images (repeated into three channels here).
- ``depth_image_NNNN.bin``: little-endian uint32 height (480) and width (640), then uint16
  depth; 0 = no measurement (about 44% of pixels: the black tower absorbs the projector).
  Unit: 0.000124986647 m per count, the SR300 depth scale hard-coded in ViSP's
  ``example/tracking/mbtGenericTrackingDepth.cpp``, which reads these files; depths run
  0.18-0.83 m (median 0.26 m). Checked: the tracker's frame-0 pose (``chateau.0.pos``) puts
  the model points of ``chateau.init`` within 4 mm of the registered depth.
- The depth is in the *depth* camera's frame: its intrinsics are ``chateau_depth.xml``
  (px 476.05, py 476.05, u0 311.48, v0 246.28) plus the SR300's inverse Brown-Conrady
  distortion (coefficients in the same ViSP example); ``depth_M_color.txt`` is the 4x4
  colour-to-depth transform (X_depth = M X_colour; ViSP's a_M_b maps b to a). The colour
  camera is ``chateau.xml`` (px 615.17, py 615.17, u0 312.19, v0 243.44, no distortion).
  ``register_depth`` maps every depth pixel into the colour camera (2x2 splat, nearest depth
  wins), so image and depth share one pinhole camera.
- No per-frame poses ship: only ``chateau.0.pos``, the tracker's pose of the castle model
  in frame 0 (translation, theta-u). ``castel_poses`` estimates each frame's pose relative
  to frame 0 by SIFT matches lifted with frame 0's registered depth and PnP-RANSAC (2 px),
  then Levenberg-Marquardt; moved by them, frame 0's depth meets the other frames' depth
  to a median 0.5-1.3 mm. They are our estimates, not sensor truth;
  the first ~8 frames barely move (< 1 mm, < 0.3 deg), so translation directions between
  them are noise and camera metrics on those windows mean little.

**chessboard** (opencv-doc 4.6.0+dfsg-12, ``examples/data``): 13 stereo pairs
``leftNN.jpg``/``rightNN.jpg`` (NN = 01-09, 11-14; 10 is absent), 640x480 grey, of a board
of 9x6 inner corners with 25 mm squares (``left_intrinsics.yml`` records square_size
0.025). ``chessboard_calibration`` detects the corners (``cv2.findChessboardCorners`` +
``cornerSubPix``), calibrates each camera and then the pair (``cv2.stereoCalibrate``, about
0.45 px RMS): the baseline comes out near 83.5 mm. Images are undistorted to pinhole
cameras. A pair is a two-view sample with world = left camera; the only known depth is the
board's plane, from the left board pose (``cv2.solvePnP``) carried into the right camera by
the stereo extrinsics, inside the board's outer squares (10x7 squares); everything else is
invalid.

**aloe** (opencv-doc, the Middlebury 2006 "Aloe" pair): ``aloeL.jpg``/``aloeR.jpg``
(1282x1110, full size) and ``aloeGT.png``, the left view's disparity in pixels (uint8,
0 = unknown; the right view matches at x_l - d). Middlebury 2006's published calibration:
focal length f = 3740 px, baseline B = 160 mm, depth Z = f B / (d + dmin) with the
dataset's disparity offset dmin = 270 px (full size; from the dataset's ``dmin.txt``, which
OpenCV does not ship, so it is recorded here). Middlebury calls f and B approximate, so
treat the metric scale as approximate (the task's depth metrics align scale and shift
anyway). The principal points are unknown: we centre them vertically and split them
horizontally by dmin around the image centre (cx_right - cx_left = dmin, which the offset
requires). The right view's depth is the left disparity forward-warped (largest disparity
wins; disoccluded pixels invalid). Extrinsics: left [I|0], right [I|(-B, 0, 0)].
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attrsub.data.capture_sources import require_real_data
from attrsub.data.folders import MANIFEST, assemble_sample
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_creatable, publish_dir, write_json
from attrsub.size import check_size

SOURCES = ("castel", "chessboard", "aloe")

CASTEL_FRAMES = 30
CASTEL_SIZE = (480, 640)  # rows, columns
# SR300 depth scale and depth-camera model, from ViSP's mbtGenericTrackingDepth.cpp.
SR300_DEPTH_SCALE = 0.000124986647  # metres per count
SR300_DEPTH_INTRINSICS = (476.053619, 476.053497, 311.484558, 246.283234)  # fx fy ppx ppy
SR300_DEPTH_COEFFS = (0.165056542, -0.0508309528, 0.00435937941, 0.00541406544, 0.250085592)
# PnP matches need this many inliers before a castel pose is trusted.
MIN_POSE_INLIERS = 30

CHESS_PAIRS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)
BOARD_CORNERS = (9, 6)  # inner corners per row, per column
SQUARE_M = 0.025

ALOE_FOCAL_PX = 3740.0
ALOE_BASELINE_M = 0.160
ALOE_DMIN_PX = 270.0


@dataclass(frozen=True)
class Frame:
    """One full-resolution view: ``rgb`` uint8 [H,W,3], ``depth`` float32 metres [H,W]
    (0 = unknown), pinhole ``K`` (pixel centres at +0.5), camera-from-world ``E`` [3,4]."""

    name: str
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    E: np.ndarray


@dataclass(frozen=True)
class Capture:
    """A multi-view sample of one source: its name and its frames (world = first frame)."""

    name: str
    frames: tuple[Frame, ...]

    def sample(self, size: int) -> dict[str, torch.Tensor]:
        """The frames cropped and resized to ``size`` px, as a SceneDataset-style dict."""
        check_size(size)
        fr = self.frames
        return assemble_sample(
            [f.rgb for f in fr], [f.depth for f in fr], [f.K for f in fr], [f.E for f in fr], size
        )


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        hint = "the real-data loaders need OpenCV: pip install opencv-python-headless"
        raise DataError(hint) from exc
    return cv2


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _pixel_centre_K(K: np.ndarray) -> np.ndarray:
    """An OpenCV/ViSP pinhole matrix (pixel centres at integers) in our +0.5 convention."""
    K = np.asarray(K, dtype=np.float64).copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def _grey_to_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------- castel


def _xml_camera(path: Path) -> np.ndarray:
    """The <camera> px/py/u0/v0 of a ViSP tracker XML as an OpenCV-convention K."""
    import xml.etree.ElementTree as ET

    try:
        cam = ET.parse(path).getroot().find("camera")
        vals = {k: float(cam.find(k).text) for k in ("px", "py", "u0", "v0")}  # type: ignore[union-attr, arg-type]
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path} has no readable <camera> px/py/u0/v0: {exc}") from exc
    return np.array([[vals["px"], 0, vals["u0"]], [0, vals["py"], vals["v0"]], [0, 0, 1.0]])


def read_castel_depth(path: Path) -> np.ndarray:
    """Raw uint16 depth counts [480, 640] of one ``depth_image_NNNN.bin``."""
    data = path.read_bytes()
    h, w = (int(x) for x in np.frombuffer(data[:8], "<u4"))
    if (h, w) != CASTEL_SIZE or len(data) != 8 + 2 * h * w:
        raise DataError(f"{path}: expected a 480x640 uint16 depth image, header says {h}x{w}")
    return np.frombuffer(data, "<u2", count=h * w, offset=8).reshape(h, w)


def castel_cameras(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Colour-camera K (OpenCV convention) and the 4x4 colour-to-depth transform."""
    K = _xml_camera(root / "castel" / "chateau.xml")
    depth_M_color = np.loadtxt(root / "castel" / "depth_M_color.txt")
    if depth_M_color.shape != (4, 4):
        raise DataError(f"depth_M_color.txt must hold a 4x4 matrix, got {depth_M_color.shape}")
    return K, depth_M_color


def register_depth(raw: np.ndarray, K_color: np.ndarray, depth_M_color: np.ndarray) -> np.ndarray:
    """SR300 depth counts [H,W] as metric z-depth in the colour camera's pixels.

    Each depth pixel is deprojected with the SR300 model (inverse Brown-Conrady, as
    librealsense and ViSP do), moved into the colour frame and splatted onto the 2x2 colour
    pixels around its projection; the nearest depth wins.
    """
    h, w = raw.shape
    rows, cols = np.nonzero(raw)
    z = raw[rows, cols].astype(np.float64) * SR300_DEPTH_SCALE
    fx, fy, ppx, ppy = SR300_DEPTH_INTRINSICS
    k1, k2, p1, p2, k3 = SR300_DEPTH_COEFFS
    x, y = (cols - ppx) / fx, (rows - ppy) / fy
    r2 = x * x + y * y
    f = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    ux = x * f + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    uy = y * f + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
    color_M_depth = np.linalg.inv(depth_M_color)
    pts = color_M_depth[:3, :3] @ np.stack([ux * z, uy * z, z]) + color_M_depth[:3, 3:]
    front = pts[2] > 1e-6
    pts = pts[:, front]
    u = K_color[0, 0] * pts[0] / pts[2] + K_color[0, 2]
    v = K_color[1, 1] * pts[1] / pts[2] + K_color[1, 2]
    out = np.full((h, w), np.inf)
    for du in (0, 1):
        for dv in (0, 1):
            uu = np.floor(u).astype(np.int64) + du
            vv = np.floor(v).astype(np.int64) + dv
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            np.minimum.at(out, (vv[ok], uu[ok]), pts[2][ok])
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


def _rt_to_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    M = np.eye(4)
    M[:3, :3] = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))[0]
    M[:3, 3] = np.asarray(tvec, dtype=np.float64).ravel()
    return M


def read_pos_file(path: Path) -> np.ndarray:
    """A ViSP ``.pos`` pose (tx ty tz, theta-u rx ry rz) as a 4x4 camera-from-object matrix."""
    vals = np.loadtxt(path).ravel()
    if vals.shape != (6,):
        raise DataError(f"{path} must hold 6 numbers (translation, theta-u), got {vals.size}")
    return _rt_to_matrix(vals[3:], vals[:3])


def _load_castel_raw(root: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    K, depth_M_color = castel_cameras(root)
    greys, depths = [], []
    for i in range(CASTEL_FRAMES):
        greys.append(np.asarray(Image.open(root / "castel" / f"image_{i:04d}.pgm").convert("L")))
        raw = read_castel_depth(root / "castel" / f"depth_image_{i:04d}.bin")
        depths.append(register_depth(raw, K, depth_M_color))
    return greys, depths, K


def castel_poses(
    greys: list[np.ndarray], depths: list[np.ndarray], K: np.ndarray
) -> list[np.ndarray]:
    """Camera-from-world 4x4 of every frame, world = frame 0's camera (see module doc)."""
    cv2 = _cv2()
    sift = cv2.SIFT_create(3000)
    kp0, des0 = sift.detectAndCompute(greys[0], None)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pts0 = np.array([k.pt for k in kp0])
    h, w = depths[0].shape
    col = np.clip(np.round(pts0[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.round(pts0[:, 1]).astype(int), 0, h - 1)
    z0 = depths[0][row, col].astype(np.float64)
    lifted = np.stack(
        [(pts0[:, 0] - K[0, 2]) / K[0, 0] * z0, (pts0[:, 1] - K[1, 2]) / K[1, 1] * z0, z0], -1
    )
    poses = [np.eye(4)]
    for i in range(1, len(greys)):
        kp, des = sift.detectAndCompute(greys[i], None)
        pairs = matcher.knnMatch(des0, des, k=2)
        good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
        src = np.array([m.queryIdx for m in good])
        dst = np.array([kp[m.trainIdx].pt for m in good])
        keep = z0[src] > 0
        obj, img = lifted[src[keep]], dst[keep]
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, K, None, reprojectionError=2.0, iterationsCount=2000,
            flags=cv2.SOLVEPNP_EPNP,
        )
        if not ok or inliers is None or len(inliers) < MIN_POSE_INLIERS:
            raise DataError(
                f"castel frame {i}: PnP found {0 if inliers is None else len(inliers)} inliers "
                f"(need {MIN_POSE_INLIERS}); the image or depth files look damaged"
            )
        idx = inliers[:, 0]
        rvec, tvec = cv2.solvePnPRefineLM(obj[idx], img[idx], K, None, rvec, tvec)
        poses.append(_rt_to_matrix(rvec, tvec))
    return poses


@functools.lru_cache(maxsize=4)
def castel_frames(root: Path) -> tuple[Frame, ...]:
    """All 30 castel frames with registered depth and estimated poses (computed once)."""
    greys, depths, K = _load_castel_raw(root)
    poses = castel_poses(greys, depths, K)
    Kc = _frozen(_pixel_centre_K(K))
    return tuple(
        Frame(f"{i:04d}", _frozen(np.repeat(g[..., None], 3, -1)), _frozen(d), Kc,
              _frozen(p[:3]))
        for i, (g, d, p) in enumerate(zip(greys, depths, poses, strict=True))
    )


def castel_windows(views: int) -> list[tuple[int, ...]]:
    """Non-overlapping runs of ``views`` consecutive frames (the remainder is dropped)."""
    if not isinstance(views, int) or not 2 <= views <= CASTEL_FRAMES // 2:
        raise ConfigError(
            f"castel windows need 2..{CASTEL_FRAMES // 2} views (at least two windows), "
            f"got {views!r}"
        )
    return [tuple(range(s, s + views)) for s in range(0, CASTEL_FRAMES - views + 1, views)]


def castel_captures(root: Path, windows: list[tuple[int, ...]]) -> list[Capture]:
    frames = castel_frames(root)
    for win in windows:
        if not win or not all(0 <= i < CASTEL_FRAMES for i in win):
            raise ConfigError(f"castel window {win!r} must name frames 0..{CASTEL_FRAMES - 1}")
    return [
        Capture(f"castel-{win[0]:02d}-{win[-1]:02d}", tuple(frames[i] for i in win))
        for win in windows
    ]


# --------------------------------------------------------------------------- chessboard


@dataclass(frozen=True)
class ChessboardCalibration:
    """Stereo calibration from the 13 pairs (OpenCV pixel convention, metres).

    ``R``, ``T`` map left-camera points to the right camera (X_r = R X_l + T);
    ``board_poses[k]`` = (R_b, t_b) maps board points to the left camera of pair k;
    ``corners_left/right[k]`` are the detected corners [54, 2] in the distorted images.
    """

    K_left: np.ndarray
    dist_left: np.ndarray
    K_right: np.ndarray
    dist_right: np.ndarray
    R: np.ndarray
    T: np.ndarray
    rms: float
    board_poses: tuple[tuple[np.ndarray, np.ndarray], ...]
    corners_left: tuple[np.ndarray, ...]
    corners_right: tuple[np.ndarray, ...]


def board_points() -> np.ndarray:
    """The board's inner corners [54, 3] in metres, in OpenCV's detection order."""
    cols, rows = BOARD_CORNERS
    pts = np.zeros((cols * rows, 3), np.float32)
    pts[:, :2] = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * SQUARE_M
    return pts


def _corners(cv2: Any, path: Path) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise DataError(f"cannot read {path}")
    found, corners = cv2.findChessboardCorners(grey, BOARD_CORNERS)
    if not found:
        raise DataError(f"{path}: no {BOARD_CORNERS[0]}x{BOARD_CORNERS[1]} chessboard found")
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    return cv2.cornerSubPix(grey, corners, (11, 11), (-1, -1), crit).reshape(-1, 2)


@functools.lru_cache(maxsize=4)
def chessboard_calibration(root: Path) -> ChessboardCalibration:
    """Detect the corners of all pairs and calibrate the stereo rig (computed once)."""
    cv2 = _cv2()
    folder = root / "opencv"
    left = [_corners(cv2, folder / f"left{i:02d}.jpg") for i in CHESS_PAIRS]
    right = [_corners(cv2, folder / f"right{i:02d}.jpg") for i in CHESS_PAIRS]
    obj = [board_points()] * len(CHESS_PAIRS)
    size = CASTEL_SIZE[::-1]  # the chessboard images are 640x480 too
    img_l = [c.astype(np.float32) for c in left]
    img_r = [c.astype(np.float32) for c in right]
    _, K_l, d_l, _, _ = cv2.calibrateCamera(obj, img_l, size, None, None)
    _, K_r, d_r, _, _ = cv2.calibrateCamera(obj, img_r, size, None, None)
    rms, K_l, d_l, K_r, d_r, R, T, _, _ = cv2.stereoCalibrate(
        obj, img_l, img_r, K_l, d_l, K_r, d_r, size, flags=cv2.CALIB_USE_INTRINSIC_GUESS
    )
    poses = []
    for corners in img_l:
        ok, rvec, tvec = cv2.solvePnP(board_points(), corners, K_l, d_l)
        if not ok:
            raise DataError("solvePnP failed on a chessboard view")
        poses.append((cv2.Rodrigues(rvec)[0], tvec.ravel()))
    return ChessboardCalibration(
        K_l, d_l.ravel(), K_r, d_r.ravel(), R, T.ravel(), float(rms), tuple(poses),
        tuple(left), tuple(right),
    )


def plane_depth(K: np.ndarray, R_b: np.ndarray, t_b: np.ndarray, shape: tuple[int, int],
                extent: tuple[float, float, float, float]) -> np.ndarray:
    """Z-depth [H,W] of the board plane seen by camera K (OpenCV convention) with board pose
    (R_b, t_b), inside the board rectangle ``extent`` = (x0, x1, y0, y1) metres; 0 elsewhere."""
    h, w = shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)])  # z = 1
    n = R_b[:, 2]
    denom = n @ rays
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (n @ t_b) / denom
    pts = rays * z
    board = R_b.T @ (pts - t_b[:, None])
    x0, x1, y0, y1 = extent
    inside = (
        np.isfinite(z) & (z > 0) & (board[0] >= x0) & (board[0] <= x1)
        & (board[1] >= y0) & (board[1] <= y1)
    )
    return np.where(inside, z, 0.0).reshape(h, w).astype(np.float32)


def board_extent() -> tuple[float, float, float, float]:
    """The board's outer squares around its inner corners: one square beyond each edge."""
    cols, rows = BOARD_CORNERS
    return (-SQUARE_M, cols * SQUARE_M, -SQUARE_M, rows * SQUARE_M)


@functools.lru_cache(maxsize=4)
def chessboard_frames(root: Path) -> tuple[tuple[Frame, Frame], ...]:
    """(left, right) undistorted frames of every pair, world = left camera."""
    cv2 = _cv2()
    cal = chessboard_calibration(root)
    folder = root / "opencv"
    E_left = _frozen(np.hstack([np.eye(3), np.zeros((3, 1))]))
    E_right = _frozen(np.hstack([cal.R, cal.T[:, None]]))
    K_l, K_r = _frozen(_pixel_centre_K(cal.K_left)), _frozen(_pixel_centre_K(cal.K_right))
    out = []
    for k, i in enumerate(CHESS_PAIRS):
        R_b, t_b = cal.board_poses[k]
        views = []
        for side, K, dist, R_v, t_v, E, Kp in (
            ("left", cal.K_left, cal.dist_left, R_b, t_b, E_left, K_l),
            ("right", cal.K_right, cal.dist_right, cal.R @ R_b, cal.R @ t_b + cal.T, E_right, K_r),
        ):
            grey = cv2.imread(str(folder / f"{side}{i:02d}.jpg"), cv2.IMREAD_GRAYSCALE)
            flat = cv2.undistort(grey, K, dist)
            depth = plane_depth(K, R_v, t_v, flat.shape, board_extent())
            views.append(Frame(f"{k}-{side}", _frozen(np.repeat(flat[..., None], 3, -1)),
                               _frozen(depth), Kp, E))
        out.append((views[0], views[1]))
    return tuple(out)


def chessboard_captures(root: Path, pairs: list[int] | None = None) -> list[Capture]:
    """Pairs by index into ``CHESS_PAIRS`` (all 13 when None)."""
    frames = chessboard_frames(root)
    chosen = range(len(frames)) if pairs is None else pairs
    for k in chosen:
        if not 0 <= k < len(frames):
            raise ConfigError(f"chessboard pair index {k!r} out of range 0..{len(frames) - 1}")
    return [Capture(f"chessboard-{CHESS_PAIRS[k]:02d}", frames[k]) for k in chosen]


# --------------------------------------------------------------------------- aloe


def aloe_depth(disparity: np.ndarray) -> np.ndarray:
    """Metric depth of Middlebury full-size disparities (0 = unknown stays 0)."""
    d = disparity.astype(np.float64)
    z = np.where(d > 0, ALOE_FOCAL_PX * ALOE_BASELINE_M / (d + ALOE_DMIN_PX), 0.0)
    return z.astype(np.float32)


def warp_disparity_right(disparity: np.ndarray) -> np.ndarray:
    """The left disparity map forward-warped to the right view (x_r = x_l - d); where
    several left pixels land, the largest disparity (the nearest surface) wins."""
    h, w = disparity.shape
    rows, cols = np.nonzero(disparity)
    d = disparity[rows, cols].astype(np.int64)
    xr = cols - d
    ok = xr >= 0
    out = np.zeros((h, w), np.int64)
    np.maximum.at(out, (rows[ok], xr[ok]), d[ok])
    return out


@functools.lru_cache(maxsize=4)
def aloe_frames(root: Path) -> tuple[Frame, Frame]:
    folder = root / "opencv"
    left = np.asarray(Image.open(folder / "aloeL.jpg").convert("RGB"))
    right = np.asarray(Image.open(folder / "aloeR.jpg").convert("RGB"))
    disp = np.asarray(Image.open(folder / "aloeGT.png"))
    if disp.ndim != 2 or disp.shape != left.shape[:2] or right.shape != left.shape:
        raise DataError(f"aloe images and disparity disagree in shape: {left.shape}, "
                        f"{right.shape}, {disp.shape}")
    h, w = disp.shape
    f = ALOE_FOCAL_PX

    def K(cx: float) -> np.ndarray:
        return _frozen(np.array([[f, 0, cx], [0, f, h / 2], [0, 0, 1.0]]))

    E_l = _frozen(np.hstack([np.eye(3), np.zeros((3, 1))]))
    E_r = _frozen(np.hstack([np.eye(3), np.array([[-ALOE_BASELINE_M], [0.0], [0.0]])]))
    return (
        Frame("0-left", _frozen(left), _frozen(aloe_depth(disp)), K(w / 2 - ALOE_DMIN_PX / 2),
              E_l),
        Frame("1-right", _frozen(right), _frozen(aloe_depth(warp_disparity_right(disp))),
              K(w / 2 + ALOE_DMIN_PX / 2), E_r),
    )


def aloe_captures(root: Path) -> list[Capture]:
    return [Capture("aloe", aloe_frames(root))]


# --------------------------------------------------------------------------- datasets


def load_captures(
    source: str, cache: str | os.PathLike[str] | None = None, *, views: int = 4
) -> list[Capture]:
    """Every capture of ``source`` (castel: windows of ``views`` frames)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown real-data source {source!r}; valid: {', '.join(SOURCES)}")
    root = require_real_data(cache)
    if source == "castel":
        return castel_captures(root, castel_windows(views))
    if source == "chessboard":
        return chessboard_captures(root)
    return aloe_captures(root)


class CaptureDataset(torch.utils.data.Dataset):
    """Captures as a torch Dataset of samples at ``size`` px (built once, kept in memory)."""

    def __init__(self, captures: list[Capture], size: int = 112) -> None:
        check_size(size)
        if not captures:
            raise ConfigError("a CaptureDataset needs at least one capture")
        self.names = [c.name for c in captures]
        self.size = size
        self._items = [c.sample(size) for c in captures]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._items[index]


def export_folder(captures: list[Capture], dest: str | os.PathLike[str]) -> Path:
    """Write captures as one bring-your-own folder (``attrsub.data.folders``), atomically.

    Colour as PNG, depth as float32 metres in .npy (depth_unit 1), K and extrinsics in
    ``cameras.json``, so ``FolderDataset(dest, size)`` gives the same tensors as
    ``CaptureDataset(captures, size)``.
    """
    dest = Path(dest)
    if dest.exists():
        raise ConfigError(f"export folder {str(dest)!r} already exists; choose a new path")

    def fill(tmp: Path) -> None:
        write_json(tmp / MANIFEST, {"depth_unit": 1.0, "invalid_depth": 0})
        for cap in captures:
            folder = tmp / cap.name
            (folder / "rgb").mkdir(parents=True)
            (folder / "depth").mkdir()
            cams = {}
            for fr in cap.frames:
                Image.fromarray(fr.rgb).save(folder / "rgb" / f"{fr.name}.png")
                np.save(folder / "depth" / f"{fr.name}.npy", fr.depth)
                cams[fr.name] = {"K": fr.K.tolist(), "extrinsics": fr.E.tolist()}
            (folder / "cameras.json").write_text(json.dumps(cams, indent=1))

    return publish_dir(dest, fill)


def export_all(
    out: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None, *, views: int = 4
) -> dict[str, Path]:
    """Every source as its own bring-your-own folder ``out/<source>``."""
    check_export(out, views)
    return {s: export_folder(load_captures(s, cache, views=views), Path(out) / s) for s in SOURCES}


def check_export(out: str | os.PathLike[str], views: int = 4) -> None:
    """ConfigError, before any capture is read, when ``export_all`` could not write ``out``."""
    castel_windows(views)
    root = check_creatable(out, "--export")
    taken = [s for s in SOURCES if (root / s).exists()]
    if taken:
        raise ConfigError(
            f"--export {str(root)!r} already holds {', '.join(taken)} (an earlier export?); "
            f"choose a new folder"
        )
