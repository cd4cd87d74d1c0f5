"""Rendered multi-view datasets: content-addressed on-disk cache and a torch Dataset.

On-disk format (one folder per dataset, named ``<label>-<key16>``, where ``key`` is the
sha256 of the scene specs, the image size and the format version):

- ``spec.json``: what produced it (the dataset spec, every scene spec, attrsub version,
  format version) plus ``shards``, the number of scenes in each shard.
- ``shard-00000.safetensors`` ...: the scenes' tensors stacked on a leading axis:
  ``images`` and ``albedo`` uint8 [n,V,3,H,W]; ``depths`` float32 [n,V,H,W] (z-depth,
  0 = invalid); ``world_points`` float32 [n,V,H,W,3] (world = first camera);
  ``normals`` float16 [n,V,H,W,3]; ``valid`` bool [n,V,H,W]; ``extrinsics`` float32
  [n,V,3,4] (OpenCV camera-from-world); ``intrinsics`` float32 [n,V,3,3].

The folder appears by one atomic rename once complete, so a reader never sees a partial
dataset and two processes rendering the same spec at once cannot corrupt it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attrsub import __version__
from attrsub.checks import check_render_fits
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_creatable, publish_dir, write_json

# CANONICAL and FACTORS stay importable from here for attrsub.cli, which reads them here.
from attrsub.scenes.factors import FactorSpec, sample_scenes
from attrsub.scenes.render import OUTPUT_KEYS, RENDER_VERSION, render
from attrsub.scenes.spec import SceneSpec
from attrsub.size import check_size

FORMAT_VERSION = 1
SHARD_SCENES = 64
SAMPLE_KEYS = OUTPUT_KEYS  # a stored sample is exactly one render's outputs
_STORE_DTYPES = {"images": torch.uint8, "albedo": torch.uint8, "normals": torch.float16}


def default_cache_root() -> Path:
    """Where rendered datasets live unless told otherwise (``$ATTRSUB_CACHE`` wins)."""
    env = os.environ.get("ATTRSUB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attrsub" / "datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """One factor dataset: which factor goes to its extremes, which group, how many
    scenes and views.

    ``group`` keys the draws, so several groups of one factor give several independent
    datasets (one adapter each) of the same family.
    """

    factor: str
    group: int = 0
    scenes: int = 32
    views: int = 4
    size: int = 112
    seed: int = 0

    def __post_init__(self) -> None:
        self.factor_spec()  # the scene fields' checks, before any rendering
        check_size(self.size)

    def factor_spec(self) -> FactorSpec:
        """The scene draw this dataset renders."""
        return FactorSpec(
            factor=self.factor,
            group=self.group,
            scenes=self.scenes,
            views=self.views,
            seed=self.seed,
        )

    @property
    def label(self) -> str:
        return f"{self.factor}-g{self.group}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dataset_key(scenes: Sequence[SceneSpec], size: int) -> str:
    """Content hash of what a dataset holds: its scene specs, size, format and renderer."""
    payload = json.dumps(
        {"scenes": [s.spec_hash() for s in scenes], "size": size, "format": FORMAT_VERSION,
         "renderer": RENDER_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_dataset(
    scenes: Sequence[SceneSpec],
    size: int,
    root: str | os.PathLike[str] | None = None,
    *,
    label: str = "scenes",
    meta: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    batch: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render ``scenes`` at ``size`` px into the cache (once) and return the folder.

    A dataset already in the cache is returned without rendering.
    """
    check_size(size)
    if not scenes:
        raise ConfigError("a dataset needs at least one scene, got 0")
    root = check_creatable(root if root is not None else default_cache_root(), "dataset root")
    dest = root / f"{label}-{dataset_key(scenes, size)[:16]}"
    if (dest / "spec.json").is_file():
        return dest
    check_render_fits(len(scenes), scenes[0].views, size, root)

    def fill(tmp: Path) -> None:
        shard_sizes: list[int] = []
        for start in range(0, len(scenes), SHARD_SCENES):
            chunk = scenes[start : start + SHARD_SCENES]
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in SAMPLE_KEYS}
            for b in range(0, len(chunk), batch):
                out = render(chunk[b : b + batch], size, device=device)
                for key in SAMPLE_KEYS:
                    parts[key].append(_to_store(key, out[key]))
                if progress is not None:
                    progress(start + min(b + batch, len(chunk)), len(scenes))
            tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
            save_file(tensors, str(tmp / f"shard-{len(shard_sizes):05d}.safetensors"))
            shard_sizes.append(len(chunk))
        write_json(
            tmp / "spec.json",
            {
                "label": label,
                "meta": meta or {},
                "size": size,
                "views": scenes[0].views,
                "format": FORMAT_VERSION,
                "attrsub_version": __version__,
                "shards": shard_sizes,
                "scenes": [s.to_dict() for s in scenes],
            },
        )

    return publish_dir(dest, fill)


def render_factor_dataset(
    spec: DatasetSpec,
    root: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render (or find in the cache) the factor dataset ``spec`` describes.

    Sizes that cannot fit in memory or on the cache's disk are refused before any scene is
    drawn, unless the dataset is already cached.
    """
    cache = Path(root) if root is not None else default_cache_root()
    if not _is_cached(spec, cache):
        check_render_fits(spec.scenes, spec.views, spec.size, cache)
    scenes = sample_scenes(spec.factor_spec())
    return build_dataset(
        scenes,
        spec.size,
        root,
        label=spec.label,
        meta={"kind": "factor", "spec": spec.to_dict()},
        device=device,
        progress=progress,
    )


def _is_cached(spec: DatasetSpec, root: Path) -> bool:
    """Whether a dataset of ``spec`` is in the cache at ``root`` (read from its spec.json)."""
    want = spec.to_dict()
    for folder in root.glob(f"{spec.label}-*"):
        try:
            info = json.loads((folder / "spec.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("meta", {}).get("spec") == want:
            return True
    return False


def _to_store(key: str, value: torch.Tensor) -> torch.Tensor:
    value = value.detach().cpu()
    dtype = _STORE_DTYPES.get(key)
    if dtype is torch.uint8:
        return (value.clamp(0, 1) * 255).round().to(torch.uint8)
    return value.to(dtype) if dtype is not None else value


def find_datasets(path: str | os.PathLike[str]) -> list[Path]:
    """Dataset folders at ``path``: the folder itself, or its immediate sub-folders."""
    p = Path(path)
    if (p / "spec.json").is_file():
        return [p]
    if p.is_dir():
        found = sorted(c for c in p.iterdir() if (c / "spec.json").is_file())
        if found:
            return found
    elif not p.exists():
        raise DataError(f"dataset folder {str(p)!r} does not exist")
    raise DataError(
        f"no rendered dataset at {str(p)!r} (expected a folder with spec.json, or a folder "
        f"of such folders); create one with `attrsub render --factor texture --out {p}`"
    )


class SceneDataset(torch.utils.data.Dataset):
    """A rendered dataset as a torch Dataset: item i is one multi-view scene.

    Items are dicts of float tensors (images in [0,1]) with the keys of ``SAMPLE_KEYS``;
    shards are read on first use and kept, since training revisits every scene.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        spec_file = self.path / "spec.json"
        if not spec_file.is_file():
            raise DataError(f"{str(self.path)!r} is not a rendered dataset (no spec.json)")
        try:
            self.info: dict[str, Any] = json.loads(spec_file.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"corrupt {spec_file}: {exc}") from exc
        if self.info.get("format") != FORMAT_VERSION:
            raise DataError(
                f"{spec_file} has format {self.info.get('format')!r}; this attrsub reads "
                f"format {FORMAT_VERSION}: render it again"
            )
        self._offsets: list[int] = []
        total = 0
        for n in self.info["shards"]:
            self._offsets.append(total)
            total += n
        self._len = total
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def size(self) -> int:
        return int(self.info["size"])

    @property
    def views(self) -> int:
        return int(self.info["views"])

    def scene_spec(self, index: int) -> dict[str, Any]:
        return self.info["scenes"][index]

    def __len__(self) -> int:
        return self._len

    def _shard(self, k: int) -> dict[str, torch.Tensor]:
        if k not in self._shards:
            f = self.path / f"shard-{k:05d}.safetensors"
            try:
                self._shards[k] = load_file(str(f))
            except (FileNotFoundError, SafetensorError, OSError) as exc:
                raise DataError(f"cannot read dataset shard {f}: {exc}") from exc
        return self._shards[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self._len <= index < self._len:
            raise IndexError(f"scene {index} out of range for {self._len} scenes")
        index %= self._len
        k = max(i for i, off in enumerate(self._offsets) if off <= index)
        shard = self._shard(k)
        j = index - self._offsets[k]
        item = {key: shard[key][j] for key in SAMPLE_KEYS}
        for key in ("images", "albedo"):
            item[key] = item[key].float() / 255.0
        item["normals"] = item["normals"].float()
        return item


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack scenes into a batch [B, V, ...], the layout the model and losses take."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
