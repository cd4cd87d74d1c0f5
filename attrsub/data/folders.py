"""Bring-your-own multi-view folders: real captures in a plain layout a person can make.

Layout (``DIR`` is what ``attrsub evaluate --data DIR`` takes)::

    DIR/attrsub-folder.json      {"depth_unit": 0.001, "invalid_depth": 0}
    DIR/<sample>/rgb/<frame>.png        (or .jpg) colour image
    DIR/<sample>/depth/<frame>.png      16-bit depth image, or .npy float array
    DIR/<sample>/cameras.json           optional: {"<frame>": {"K": 3x3,
                                                     "extrinsics": 3x4}}

Each sub-folder of ``DIR`` is one multi-view sample; frames pair up by file stem and are
taken in sorted order. Metric depth = stored value x ``depth_unit`` (metres per unit);
pixels equal to ``invalid_depth`` (or non-finite) are invalid. ``K`` is the pinhole
matrix in pixels of the stored image; ``extrinsics`` is OpenCV camera-from-world. Without
``cameras.json`` only depth metrics can be computed. Samples load in the same form as
rendered ones: resized (centre crop to square, then scale) to ``size`` px, with the
intrinsics adjusted and the world re-expressed in the first camera's frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attrsub.errors import DataError
from attrsub.size import check_size

MANIFEST = "attrsub-folder.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".npy", ".tif", ".tiff")


def is_folder_dataset(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise DataError(
            f"{root} has no {MANIFEST}; see attrsub.data.folders for the layout"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{root / MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DataError(
            f"{root / MANIFEST} must be a JSON object like {{\"depth_unit\": 0.001, "
            f"\"invalid_depth\": 0}}, got a {type(manifest).__name__}"
        )
    unit = manifest.get("depth_unit")
    if not isinstance(unit, (int, float)) or not unit > 0:
        raise DataError(
            f"{root / MANIFEST}: depth_unit must be a positive number (metres per stored "
            f"unit, e.g. 0.001 for millimetres), got {unit!r}"
        )
    return manifest


def _find(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _read_image(path: Path, rgb: bool = False) -> np.ndarray:
    """An image file as an array (``rgb``: converted to 8-bit RGB), or DataError naming the
    file (PIL's errors do not)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB") if rgb else img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {str(path)!r} cannot be read: {exc}") from exc


def _load_depth(path: Path, unit: float, invalid: float) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"depth map {str(path)!r} is not a plain numeric .npy array (object arrays and "
                f"pickles are refused): {exc}"
            ) from exc
    else:
        raw = _read_image(path)
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise DataError(f"depth map {str(path)!r} holds {raw.dtype} values, not numbers")
    raw = raw.astype(np.float64)
    if raw.ndim != 2:
        raise DataError(f"depth map {path} must be single-channel, got shape {raw.shape}")
    depth = raw * unit
    depth[(raw == invalid) | ~np.isfinite(raw) | (depth <= 0)] = 0.0
    return depth.astype(np.float32)


def _camera(entry: Any, path: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """A frame's K and extrinsics from cameras.json, or DataError naming what is missing."""
    if not isinstance(entry, dict) or "K" not in entry or "extrinsics" not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(
            f"{str(path)!r} frame {stem!r} needs 'K' (3x3) and 'extrinsics' (3x4), has {keys}"
        )
    try:
        return (np.asarray(entry["K"], dtype=np.float64),
                np.asarray(entry["extrinsics"], dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{str(path)!r} frame {stem!r}: K and extrinsics must be numbers: {exc}"
                        ) from exc


def crop_resize(
    rgb: np.ndarray, depth: np.ndarray, K: np.ndarray | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Centre-crop an RGB uint8 [H,W,3] image and its depth [H,W] to a square, resize to
    ``size`` (bilinear antialiased colour, nearest depth so no depth is invented across
    edges) and shift/scale the pinhole ``K`` (pixel centres at +0.5) to match."""
    h, w = depth.shape
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = torch.from_numpy(rgb[y0 : y0 + s, x0 : x0 + s].copy()).permute(2, 0, 1).float() / 255.0
    img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)[0].clamp(0, 1)
    dep = torch.from_numpy(depth[y0 : y0 + s, x0 : x0 + s].copy())
    dep = F.interpolate(dep[None, None], size=(size, size), mode="nearest-exact")[0, 0]
    if K is not None:
        scale = size / s
        K = K.astype(np.float64).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        K[:2] *= scale
    return img, dep, K


def load_folder_sample(
    root: Path, sample: Path, size: int, manifest: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """One sub-folder as a multi-view sample dict (same keys as rendered data)."""
    rgb_dir, depth_dir = sample / "rgb", sample / "depth"
    if not rgb_dir.is_dir():
        raise DataError(f"sample {sample} has no rgb/ folder")
    stems = sorted(p.stem for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not stems:
        raise DataError(f"sample {sample}/rgb holds no .png or .jpg images")
    cams: dict[str, Any] | None = None
    if (sample / "cameras.json").is_file():
        try:
            cams = json.loads((sample / "cameras.json").read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{sample / 'cameras.json'} is not valid JSON: {exc}") from exc
    unit = float(manifest["depth_unit"])
    invalid = float(manifest.get("invalid_depth", 0))
    images, depths, Ks, Es = [], [], [], []
    for stem in stems:
        dpath = _find(depth_dir, stem, DEPTH_EXTS)
        if dpath is None:
            raise DataError(
                f"frame {stem!r} of {sample} has no depth map: expected depth/{stem}.png "
                f"(16-bit) or depth/{stem}.npy"
            )
        rgb = _read_image(_find(rgb_dir, stem, IMAGE_EXTS), rgb=True)
        depth = _load_depth(dpath, unit, invalid)
        if rgb.shape[:2] != depth.shape:
            raise DataError(
                f"frame {stem!r} of {sample}: image is {rgb.shape[1]}x{rgb.shape[0]} but "
                f"depth is {depth.shape[1]}x{depth.shape[0]}; they must match"
            )
        K = E = None
        if cams is not None:
            if stem not in cams:
                raise DataError(f"{sample / 'cameras.json'} has no entry for frame {stem!r}")
            K, E = _camera(cams[stem], sample / "cameras.json", stem)
            if K.shape != (3, 3) or E.shape != (3, 4):
                raise DataError(
                    f"{sample / 'cameras.json'} frame {stem!r}: K must be 3x3 and "
                    f"extrinsics 3x4, got {K.shape} and {E.shape}"
                )
        if not (depth > 0).any():
            raise DataError(
                f"frame {stem!r} of sample {sample.name!r} ({str(dpath)!r}) has no valid depth "
                f"pixel (all NaN, infinite, zero or equal to invalid_depth {invalid:g})"
            )
        images.append(rgb)
        depths.append(depth)
        Ks.append(K)
        Es.append(E)
    if cams is None:
        return assemble_sample(images, depths, None, None, size)
    return assemble_sample(images, depths, Ks, Es, size)


def assemble_sample(
    rgbs: list[np.ndarray],
    depths: list[np.ndarray],
    Ks: list[np.ndarray] | None,
    Es: list[np.ndarray] | None,
    size: int,
) -> dict[str, torch.Tensor]:
    """Full-resolution frames as one multi-view sample dict (the keys rendered data have).

    ``rgbs`` uint8 [H,W,3], ``depths`` float32 metres [H,W] (0 = invalid), ``Ks`` pinhole
    matrices (pixel centres at +0.5), ``Es`` OpenCV camera-from-world [3,4] in any world.
    Every loader of captured data goes through here, so a capture and its bring-your-own
    export give identical tensors.
    """
    if (Ks is None) != (Es is None):
        raise DataError("a sample needs both intrinsics and extrinsics, or neither")
    images, deps, new_Ks = [], [], []
    for i, (rgb, depth) in enumerate(zip(rgbs, depths, strict=True)):
        img, dep, K = crop_resize(rgb, depth, None if Ks is None else Ks[i], size)
        images.append(img)
        deps.append(dep)
        new_Ks.append(K)
    out: dict[str, torch.Tensor] = {
        "images": torch.stack(images),
        "depths": torch.stack(deps),
        "valid": torch.stack(deps) > 0,
    }
    if Ks is not None and Es is not None:
        out.update(cameras_and_points(out["depths"], new_Ks, list(Es)))
    return out


def cameras_and_points(
    depths: torch.Tensor, Ks: list[np.ndarray], Es: list[np.ndarray]
) -> dict[str, torch.Tensor]:
    """Re-express poses with world = first camera, and lift depth to world points.

    ``Ks`` must already match the ``depths`` grid (pixel centres at +0.5)."""
    def to4(E: np.ndarray) -> np.ndarray:
        return np.vstack([E, [0.0, 0.0, 0.0, 1.0]])

    first_inv = np.linalg.inv(to4(Es[0]))
    extr = np.stack([(to4(E) @ first_inv)[:3] for E in Es])
    intr = np.stack(Ks)
    h, w = depths.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).double()
    K = torch.from_numpy(intr)
    R = torch.from_numpy(extr[:, :, :3])
    t = torch.from_numpy(extr[:, :, 3])
    rays = torch.einsum("vij,hwj->vhwi", torch.linalg.inv(K), pix)
    cam = rays * depths.double()[..., None]
    world = torch.einsum("vji,vhwj->vhwi", R, cam - t[:, None, None, :])
    world[depths <= 0] = 0.0
    return {
        "extrinsics": torch.from_numpy(extr).float(),
        "intrinsics": torch.from_numpy(intr).float(),
        "world_points": world.float(),
    }


class FolderDataset(torch.utils.data.Dataset):
    """A bring-your-own folder as a torch Dataset of multi-view samples (validated up front)."""

    def __init__(self, path: str | os.PathLike[str], size: int = 112) -> None:
        check_size(size)
        self.path = Path(path)
        self.size = size
        self.manifest = _read_manifest(self.path)
        self.samples = sorted(p for p in self.path.iterdir() if p.is_dir())
        if not self.samples:
            raise DataError(f"{self.path} holds no sample folders (one sub-folder per sample)")
        self._items = [load_folder_sample(self.path, s, size, self.manifest) for s in self.samples]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._items[index]
