"""Downstream tasks built from the scene generator: the paper's fine-tuning benchmarks.

A ``Task`` names its data (a training set and named evaluation splits), its metrics and the
one main metric a sweep ranks by. ``Task`` itself only fixes that interface and the
evaluation loop; ``SceneTask`` gets its data by rendering procedural scenes through the
dataset cache, and a real-data task (the paper's face or clothed-human sets) plugs in by
overriding ``train_data`` / ``eval_data`` with datasets from another source.

Two synthetic stand-ins for the paper's tasks:

- ``print_attack``: micro-baseline face anti-spoofing. Half of the samples are "prints" (one
  flat textured card filling the whole view), half are "live" (relief, spheres and boxes on
  the ground), all seen by a hand-held ``micro`` camera (every view within 5 degrees of the
  first). Besides the reconstruction metrics, a print is detected from the predicted depth
  alone by a planarity test (see ``planarity``) whose threshold is chosen on the training
  split.
- ``cross_domain``: train and test in-domain on one family of shapes, textures and lights
  (boxes with sub-boxes and cylinders, checker/stripe albedo, one white sun), test
  cross-domain on a disjoint family (spheres and height fields, noise/patchwork albedo,
  2-3 coloured lights), as THuman -> 2K2K.

And one real-data task, ``real`` (``RealTask``): fine-tune on real RGB-D frames, test on
held-out frames and on two stereo sources (``attrsub.data.captures``).

Every scene draw uses its own numpy stream keyed by (seed, task, split, scene, attribute), so
splits are deterministic from the seed and never share scenes.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from attrsub.data.capture_sources import require_real_data
from attrsub.data.captures import (
    CASTEL_FRAMES,
    CHESS_PAIRS,
    CaptureDataset,
    aloe_captures,
    castel_captures,
    castel_windows,
    chessboard_captures,
)
from attrsub.data.datasets import SceneDataset, build_dataset, collate
from attrsub.errors import ConfigError
from attrsub.eval.align import DEPTH_ALIGN_MODES
from attrsub.eval.metrics import POINT_SOURCES, evaluate_batch
from attrsub.scenes.attributes import CameraRanges, LightingRanges, draw_camera, draw_lighting
from attrsub.scenes.spec import (
    TEXTURE_KINDS,
    Box,
    Camera,
    Cylinder,
    Ground,
    HeightField,
    Material,
    SceneSpec,
    Sphere,
    SubObject,
    Texture,
)
from attrsub.size import check_size

PathLike = str | os.PathLike[str]
# Attribute streams of one scene draw.
_LABEL, _TEXTURE, _GEOMETRY, _CAMERA, _LIGHTING = range(5)
MAX_SEED = 2**31 - 1
# Scenes per evaluation forward: one batched forward instead of one per scene; metrics are
# still computed per scene, so every number is a per-scene mean as before.
EVAL_BATCH = 8
MAX_VIEWS = 64
SHAPES = ("box", "cylinder", "sphere", "heightfield")
# A print is a card this large, so it fills every micro-baseline view (see PrintAttackTask).
CARD_HALF = 12.0
CARD_THICKNESS = 0.01
# Micro-baseline offsets are drawn per axis (azimuth, elevation) within +-span, so a span of
# 3.5 degrees keeps the total rotation from the first view within 5 degrees.
MICRO_SPAN_DEG = (1.5, 3.5)
MAX_MICRO_DEG = 5.0
# One white sun and a moderate sky: the lighting of print_attack and the cross_domain source.
TASK_LIGHTING = LightingRanges(
    ambient=(0.25, 0.35),
    lights=(1, 1),
    saturation=(0.0, 0.1),
    intensity=(1.2, 1.6),
    elevation_deg=(45.0, 60.0),
    point_prob=0.0,
    exposure=(0.9, 1.1),
)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not (lo <= int(value) <= hi)
    ):
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """The seed as an int, or ConfigError before any work."""
    return _int(seed, "seed", 0, MAX_SEED)


@dataclass(frozen=True)
class TaskSize:
    """How much data a task run uses: scenes per split, views per scene, image size (px)."""

    train_scenes: int = 16
    eval_scenes: int = 16
    views: int = 4
    size: int = 112

    def __post_init__(self) -> None:
        _int(self.train_scenes, "train_scenes", 1, 100_000)
        _int(self.eval_scenes, "eval_scenes", 1, 100_000)
        _int(self.views, "views", 2, MAX_VIEWS)
        check_size(self.size, "task image size")


def _check_size_arg(size: Any) -> TaskSize:
    if not isinstance(size, TaskSize):
        raise ConfigError(f"size must be a TaskSize, got {type(size).__name__}")
    return size


@dataclass(frozen=True)
class Task:
    """A downstream benchmark: data sources, metrics, and the main metric to rank runs by.

    ``main_metric`` is a key of ``evaluate``'s output ("<split>/<metric>" or a task metric);
    subclasses provide ``train_data`` and ``eval_data`` from wherever their data live.
    """

    name: str
    description: str
    main_metric: str
    lower_is_better: bool = True
    # How predicted depth is aligned to ground truth before AbsRel/delta1 (attrsub.eval.align).
    depth_align: str = "median"
    # Where the point clouds of pc_acc/pc_comp/pc_nc come from: the depth head unprojected
    # with the predicted cameras, as VGGT evaluates, so fine-tuning the depth and camera
    # heads (what the downstream loss trains) moves them; "world_points" reads the point
    # head, which downstream fine-tuning does not train.
    points_from: str = "depth"

    def __post_init__(self) -> None:
        if self.depth_align not in DEPTH_ALIGN_MODES:
            raise ConfigError(
                f"task {self.name!r}: depth_align must be one of {DEPTH_ALIGN_MODES}, got "
                f"{self.depth_align!r}"
            )
        if self.points_from not in POINT_SOURCES:
            raise ConfigError(
                f"task {self.name!r}: points_from must be one of {POINT_SOURCES}, got "
                f"{self.points_from!r}"
            )

    def check(self, size: TaskSize) -> TaskSize:
        """Reject sizes this task cannot use (before rendering or loading anything)."""
        return _check_size_arg(size)

    def require_data(self, cache: PathLike | None) -> None:
        """DataError, before any trial, when data this task cannot make itself are absent
        (none by default: scene tasks render theirs)."""

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> torch.utils.data.Dataset:
        """The fine-tuning dataset (items as ``SceneDataset``'s)."""
        raise NotImplementedError

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        """The named evaluation splits."""
        raise NotImplementedError

    def sample_stats(
        self, pred: dict[str, Any], batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Per-sample numbers a task metric needs later (none by default)."""
        return {}

    def task_metrics(
        self,
        model: nn.Module,
        cache: PathLike | None,
        size: TaskSize,
        seed: int,
        device: torch.device,
        stats: dict[str, list[dict[str, float]]],
        metrics: dict[str, float],
    ) -> dict[str, float]:
        """Task-specific metrics from the per-split ``sample_stats`` and the flattened split
        ``metrics`` (none by default)."""
        return {}

    def evaluate(
        self,
        model: nn.Module,
        cache: PathLike | None,
        size: TaskSize,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> dict[str, float]:
        """Mean metrics per split as "<split>/<metric>" (plus "<split>/samples"), task metrics,
        and ``main``. A metric the model cannot produce (no camera head, say) is NaN."""
        size, seed, dev = self._check_run(model, size, seed, device)
        out: dict[str, float] = {}
        stats: dict[str, list[dict[str, float]]] = {}
        for split, dataset in self.eval_data(cache, size, seed, device=str(dev)).items():
            means, stats[split] = run_split(
                model, dataset, dev, self.sample_stats, depth_align=self.depth_align,
                points_from=self.points_from,
            )
            out.update({f"{split}/{k}": v for k, v in means.items()})
            out[f"{split}/samples"] = float(len(stats[split]))
        out.update(self.task_metrics(model, cache, size, seed, dev, stats, dict(out)))
        if self.main_metric not in out:
            raise ConfigError(
                f"task {self.name!r}: main metric {self.main_metric!r} is not among its "
                f"outputs {sorted(out)}"
            )
        out["main"] = out[self.main_metric]
        return out

    def _check_run(
        self, model: Any, size: Any, seed: Any, device: Any
    ) -> tuple[TaskSize, int, torch.device]:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
        size = self.check(size)
        seed = check_seed(seed)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"bad device {device!r}: {err}") from None
        return size, seed, dev


StatsFn = Callable[[dict[str, Any], dict[str, torch.Tensor]], dict[str, float]]


def _same_shapes(items: list[dict[str, torch.Tensor]]) -> list[list[dict[str, torch.Tensor]]]:
    """Consecutive runs of samples whose images share a shape (one forward each)."""
    groups: list[list[dict[str, torch.Tensor]]] = []
    for item in items:
        if groups and groups[-1][0]["images"].shape == item["images"].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _sample(out: dict[str, Any], j: int) -> dict[str, Any]:
    """Sample j of a batched prediction or batch, keeping a batch axis of 1."""
    return {k: [t[j : j + 1] for t in v] if isinstance(v, list) else v[j : j + 1]
            for k, v in out.items()}


@torch.no_grad()
def run_split(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    stats_fn: StatsFn | None = None,
    *,
    depth_align: str = "median",
    points_from: str = "depth",
    metrics: bool = True,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean ``evaluate_batch`` metrics over a dataset (non-finite values skipped, as in
    ``attrsub.eval.evaluate``) plus each sample's ``stats_fn(pred, batch)``; with ``metrics``
    False only the latter (a pass that needs per-sample statistics alone). Scenes are run
    EVAL_BATCH at a time."""
    was_training = model.training
    model.eval().to(device)
    # The point head only feeds point metrics read from it; unprojected depth needs the rest.
    heads = ("camera", "depth") if points_from == "depth" else None
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    keys: set[str] = set()
    per_sample: list[dict[str, float]] = []
    try:
        for start in range(0, len(dataset), EVAL_BATCH):
            items = [dataset[i] for i in range(start, min(start + EVAL_BATCH, len(dataset)))]
            for group in _same_shapes(items):
                batch = {k: v.to(device) for k, v in collate(group).items()}
                pred = model(batch["images"], heads=heads)
                for j in range(len(group)):
                    p, b = _sample(pred, j), _sample(batch, j)
                    scores = evaluate_batch(p, b, depth_align=depth_align,
                                            points_from=points_from) if metrics else {}
                    for key, value in scores.items():
                        keys.add(key)
                        if math.isfinite(value):
                            sums[key] += value
                            counts[key] += 1
                    per_sample.append(stats_fn(p, b) if stats_fn is not None else {})
    finally:
        model.train(was_training)
    means = {k: sums[k] / counts[k] if counts[k] else math.nan for k in sorted(keys)}
    return means, per_sample


@dataclass(frozen=True)
class SceneTask(Task):
    """A task whose data are rendered procedural scenes (cached by ``build_dataset``)."""

    def train_scenes(self, seed: int = 0, size: TaskSize | None = None) -> list[SceneSpec]:
        """The training scenes, deterministic from ``seed``."""
        raise NotImplementedError

    def eval_sets(self, seed: int = 0, size: TaskSize | None = None) -> dict[str, list[SceneSpec]]:
        """The evaluation splits' scenes, deterministic from ``seed``."""
        raise NotImplementedError

    def _build(
        self,
        scenes: list[SceneSpec],
        split: str,
        cache: PathLike | None,
        size: TaskSize,
        seed: int,
        device: str,
    ) -> SceneDataset:
        meta = {"kind": "task", "task": self.name, "split": split, "seed": seed}
        path = build_dataset(
            scenes, size.size, cache, label=f"task-{self.name}-{split}", meta=meta, device=device
        )
        return SceneDataset(path)

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> SceneDataset:
        size, seed = self.check(size), check_seed(seed)
        return self._build(self.train_scenes(seed, size), "train", cache, size, seed, device)

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        size, seed = self.check(size), check_seed(seed)
        return {
            split: self._build(scenes, split, cache, size, seed, device)
            for split, scenes in self.eval_sets(seed, size).items()
        }


def _rng(seed: int, task: str, split: str, index: int, stream: int) -> np.random.Generator:
    """One attribute's stream of one scene: draws never shift across attributes or splits."""
    tag = hashlib.sha256(f"{task}/{split}".encode()).digest()[:8]
    words = [int.from_bytes(tag[:4], "little"), int.from_bytes(tag[4:], "little")]
    return np.random.default_rng([seed, *words, index, stream])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _material(rng: np.random.Generator, kinds: Sequence[str], skin_prob: float = 0.0) -> Material:
    """A procedural albedo of one of ``kinds``; with ``skin_prob`` a skin-tone palette (the
    closest the renderer gets to a face-like albedo: blotchy warm patches)."""
    skin = rng.random() < skin_prob
    palette = []
    for _ in range(int(rng.integers(2, 5))):
        if skin:
            hsv = (_u(rng, 0.02, 0.09), _u(rng, 0.2, 0.6), _u(rng, 0.35, 0.95))
        else:
            hsv = (rng.random(), _u(rng, 0.2, 0.8), _u(rng, 0.25, 0.95))
        palette.append(tuple(float(c) for c in colorsys.hsv_to_rgb(*hsv)))
    tex = Texture(
        kind=str(rng.choice(list(kinds))),
        frequency=math.exp(_u(rng, math.log(0.8), math.log(4.0))),
        palette=tuple(palette),  # type: ignore[arg-type]
        seed=int(rng.integers(0, 2**24)),
    )
    return Material(tex, specular=_u(rng, 0.02, 0.2), shininess=_u(rng, 8.0, 64.0))


# --------------------------------------------------------------------------- print attack


def is_print(scene: SceneSpec) -> bool:
    """Whether a print_attack scene is a print (a lone card) rather than a live 3D object."""
    return (
        len(scene.boxes) == 1
        and not (scene.spheres or scene.cylinders or scene.heightfields)
        and scene.boxes[0].half_size[2] <= CARD_THICKNESS
    )


def planarity(depth: torch.Tensor, valid: torch.Tensor) -> float:
    """Relative RMS residual of a plane fit to depth maps [..., H, W] (mean over views).

    A plane seen by a pinhole camera has inverse depth affine in the pixel coordinates
    (n.X = d with X = z K^-1 (u, v, 1) gives 1/z = a u + b v + c), so the fit needs neither
    intrinsics nor the depth scale: least squares of 1/z on (u, v, 1) over the valid pixels,
    RMS residual divided by the mean inverse depth. ~1e-7 for an exact plane; a view with
    fewer than 3 usable pixels is skipped, and with none left the result is inf (not planar).
    """
    if depth.shape != valid.shape or depth.ndim < 2:
        raise ConfigError(
            f"depth {tuple(depth.shape)} and valid {tuple(valid.shape)} must be equal [..., H, W]"
        )
    h, w = depth.shape[-2:]
    d = depth.detach().double().reshape(-1, h, w).cpu()
    m = valid.bool().reshape(-1, h, w).cpu() & torch.isfinite(d) & (d > 0)
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    scores = []
    for view in range(d.shape[0]):
        mask = m[view]
        if int(mask.sum()) < 3:
            continue
        inv = 1.0 / d[view][mask]
        a = torch.stack([u[mask] / w, v[mask] / h, torch.ones_like(inv)], -1)
        coef = torch.linalg.lstsq(a, inv[:, None]).solution
        resid = inv - (a @ coef)[:, 0]
        scores.append(float(resid.square().mean().sqrt() / inv.mean()))
    return sum(scores) / len(scores) if scores else math.inf


def plane_fit_residual(points: torch.Tensor) -> float:
    """RMS distance of points [N, 3] to their best plane, relative to the RMS spread about
    their centroid (scale-free: 0 for a plane, ~0.3-0.6 for a blob)."""
    p = points.detach().double().reshape(-1, 3)
    p = p[torch.isfinite(p).all(-1)]
    if len(p) < 3:
        raise ConfigError(f"a plane fit needs at least 3 finite points, got {len(p)}")
    c = p - p.mean(0)
    s = torch.linalg.svdvals(c)
    spread = c.square().sum(-1).mean().sqrt()
    return float((s[-1] / math.sqrt(len(p))) / spread)


def select_threshold(scores: Sequence[float], prints: Sequence[bool]) -> float:
    """The planarity threshold with the best accuracy of "print iff score < threshold".

    Candidates are the geometric midpoints between consecutive distinct scores plus one below
    and one above all of them (scores span decades); ties go to the smallest candidate.
    """
    s, y = _scores(scores, prints)
    logs = np.unique(np.log(s))
    cands = np.concatenate([[logs[0] - 1.0], (logs[1:] + logs[:-1]) / 2, [logs[-1] + 1.0]])
    best = max(range(len(cands)), key=lambda i: (_accuracy(s, y, math.exp(cands[i])), -i))
    return float(math.exp(cands[best]))


def spoof_accuracy(scores: Sequence[float], prints: Sequence[bool], threshold: float) -> float:
    """Fraction of samples classified right by "print iff planarity score < threshold"."""
    s, y = _scores(scores, prints)
    return _accuracy(s, y, float(threshold))


def _scores(scores: Sequence[float], prints: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(prints), dtype=bool)
    if s.ndim != 1 or len(s) == 0 or s.shape != y.shape:
        raise ConfigError(f"need equally many scores and labels (>0), got {len(s)} and {len(y)}")
    # NaN means no usable fit: treat it as not planar. Clamp so logs stay finite.
    s = np.where(np.isnan(s), np.inf, s)
    return np.clip(s, 1e-300, 1e300), y


def _accuracy(s: np.ndarray, y: np.ndarray, threshold: float) -> float:
    return float(((s < threshold) == y).mean())


@dataclass(frozen=True)
class PrintAttackTask(SceneTask):
    """Micro-baseline anti-spoofing: flat prints versus live 3D objects.

    Prints and live samples share one camera distribution (a ``micro`` trajectory looking
    down at 65-78 degrees from 3-4.5 units, every view within ``MAX_MICRO_DEG`` of the first,
    no look-at jitter) and one albedo distribution (checker/noise/patchwork, half of them
    skin-toned), so only the geometry tells them apart. A print is a card of half-size
    ``CARD_HALF`` lying on the ground, large enough to fill every view, so every valid pixel
    lies on one plane. A live sample is a height field with 2-4 bumps, a sphere and sometimes
    a box with sub-boxes on a textured ground.

    Spoof detection: score each sample by ``planarity`` of its predicted depth over the
    ground-truth valid pixels; "print" iff score < threshold; the threshold maximises
    accuracy on the training split (``select_threshold``) and is reported with the eval
    accuracy.
    """

    split: str = "test"
    texture_kinds: tuple[str, ...] = ("checker", "noise", "patchwork")
    skin_prob: float = 0.5

    def check(self, size: TaskSize) -> TaskSize:
        size = _check_size_arg(size)
        if size.train_scenes < 2 or size.eval_scenes < 2:
            raise ConfigError(
                f"task {self.name!r} needs at least 2 train and 2 eval scenes (one print, one "
                f"live), got {size.train_scenes} and {size.eval_scenes}"
            )
        return size

    def train_scenes(self, seed: int = 0, size: TaskSize | None = None) -> list[SceneSpec]:
        size = self.check(size if size is not None else TaskSize())
        return self._scenes(check_seed(seed), "train", size.train_scenes, size.views)

    def eval_sets(self, seed: int = 0, size: TaskSize | None = None) -> dict[str, list[SceneSpec]]:
        size = self.check(size if size is not None else TaskSize())
        scenes = self._scenes(check_seed(seed), self.split, size.eval_scenes, size.views)
        return {self.split: scenes}

    def _scenes(self, seed: int, split: str, n: int, views: int) -> list[SceneSpec]:
        order = _rng(seed, self.name, split, 0, _LABEL).permutation(n)
        prints = order < n // 2
        return [self._scene(seed, split, i, bool(prints[i]), views) for i in range(n)]

    def _scene(self, seed: int, split: str, i: int, printed: bool, views: int) -> SceneSpec:
        def rng(stream: int) -> np.random.Generator:
            return _rng(seed, self.name, split, i + 1, stream)

        tex = rng(_TEXTURE)
        mats = [_material(tex, self.texture_kinds, self.skin_prob) for _ in range(6)]
        cam = rng(_CAMERA)
        camera = Camera(
            trajectory="micro",
            views=views,
            fov_deg=_u(cam, 35.0, 45.0),
            distance=_u(cam, 3.0, 4.5),
            elevation_deg=_u(cam, 65.0, 78.0),
            azimuth_deg=_u(cam, -180.0, 180.0),
            span_deg=_u(cam, *MICRO_SPAN_DEG),
            target=(0.0, 0.0, 0.25),
            lookat_jitter=0.0,
            seed=int(cam.integers(0, MAX_SEED)),
        )
        lighting = draw_lighting(rng(_LIGHTING), TASK_LIGHTING)
        geo = rng(_GEOMETRY)
        if printed:
            card = Box(
                center=(0.0, 0.0, CARD_THICKNESS),
                half_size=(CARD_HALF, CARD_HALF, CARD_THICKNESS),
                yaw_deg=_u(geo, 0.0, 90.0),
                material=mats[0],
            )
            return SceneSpec(
                ground=Ground(40.0, mats[1]), boxes=(card,), lighting=lighting, camera=camera
            )
        half = (_u(geo, 2.5, 3.5), _u(geo, 2.5, 3.5))
        bumps = tuple(
            (_u(geo, 0.3, 0.9), _u(geo, -1.5, 1.5), _u(geo, -1.5, 1.5), _u(geo, 0.3, 0.7))
            for _ in range(int(geo.integers(2, 5)))
        )
        k, phi = _u(geo, 1.0, 5.0), _u(geo, 0.0, 2 * math.pi)
        ripple = (_u(geo, 0.0, 0.05), k * math.cos(phi), k * math.sin(phi), _u(geo, 0.0, 6.28))
        relief = HeightField((0.0, 0.0), half, bumps, ripple, mats[0])
        r = _u(geo, 0.35, 0.7)
        a = _u(geo, 0.0, 2 * math.pi)
        head = Sphere((0.6 * math.cos(a), 0.6 * math.sin(a), r), r, mats[2])
        boxes: tuple[Box, ...] = ()
        if geo.random() < 0.5:
            h = _u(geo, 0.2, 0.4)
            subs = tuple(
                SubObject(
                    "box",
                    int(geo.integers(0, 5)),
                    (_u(geo, -0.7, 0.7), 0.0),
                    h * _u(geo, 0.3, 0.5),
                    mats[4 + j],
                )
                for j in range(int(geo.integers(1, 3)))
            )
            boxes = (
                Box(
                    (-0.6 * math.cos(a), -0.6 * math.sin(a), h),
                    (h, h, h),
                    _u(geo, 0.0, 90.0),
                    mats[3],
                    subs,
                ),
            )
        return SceneSpec(
            ground=Ground(40.0, mats[1]),
            boxes=boxes,
            spheres=(head,),
            heightfields=(relief,),
            lighting=lighting,
            camera=camera,
        )

    def labels(self, seed: int, split: str, size: TaskSize) -> list[bool]:
        """Print (True) or live per sample of a split ("train" or the eval split)."""
        if split not in ("train", self.split):
            raise ConfigError(f"split {split!r} is not valid; choose 'train' or {self.split!r}")
        scenes = (
            self.train_scenes(seed, size) if split == "train" else self.eval_sets(seed, size)[split]
        )
        return [is_print(s) for s in scenes]

    def sample_stats(
        self, pred: dict[str, Any], batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        if "depth" not in pred:
            return {"planarity": math.nan}
        depth = pred["depth"]
        depth = depth[..., 0] if depth.ndim == 5 else depth
        return {"planarity": planarity(depth[0], batch["valid"][0])}

    def task_metrics(
        self,
        model: nn.Module,
        cache: PathLike | None,
        size: TaskSize,
        seed: int,
        device: torch.device,
        stats: dict[str, list[dict[str, float]]],
        metrics: dict[str, float],
    ) -> dict[str, float]:
        train = self.train_data(cache, size, seed, device=str(device))
        _, train_stats = run_split(model, train, device, self.sample_stats, metrics=False)
        train_scores = [s["planarity"] for s in train_stats]
        train_labels = self.labels(seed, "train", size)
        threshold = select_threshold(train_scores, train_labels)
        test_scores = [s["planarity"] for s in stats[self.split]]
        test_labels = self.labels(seed, self.split, size)
        return {
            "spoof_threshold": threshold,
            "train/spoof_acc": spoof_accuracy(train_scores, train_labels, threshold),
            f"{self.split}/spoof_acc": spoof_accuracy(test_scores, test_labels, threshold),
        }


# --------------------------------------------------------------------------- cross domain


@dataclass(frozen=True)
class Family:
    """A domain: which primitive shapes, which albedo kinds, and which lighting ranges."""

    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    lighting: LightingRanges = TASK_LIGHTING

    def __post_init__(self) -> None:
        for name, values, valid in (
            ("shapes", self.shapes, SHAPES),
            ("textures", self.textures, TEXTURE_KINDS),
        ):
            bad = [v for v in values if v not in valid]
            if not values or bad:
                raise ConfigError(f"family {name} {values!r} must be non-empty, from {valid}")


# Several coloured suns and a dim environment: the paper's lighting sets.
COLOURED_LIGHTS = LightingRanges(
    ambient=(0.05, 0.2),
    lights=(2, 3),
    saturation=(0.3, 0.8),
    intensity=(0.6, 1.4),
    elevation_deg=(20.0, 70.0),
    point_prob=0.2,
    exposure=(0.8, 1.2),
)


SOURCE_FAMILY = Family(("box", "cylinder"), ("checker", "stripes"))
TARGET_FAMILY = Family(("sphere", "heightfield"), ("noise", "patchwork"), COLOURED_LIGHTS)
# Spline paths around 4-5 units, so the objects fill more of the small images.
TASK_CAMERA = CameraRanges(
    trajectories=("spline",),
    fov_deg=(50.0, 60.0),
    distance=(4.0, 5.0),
    elevation_deg=(25.0, 35.0),
    span_deg=(40.0, 60.0),
    micro_span_deg=(3.0, 5.0),
    lookat_jitter=(0.0, 0.05),
    dolly_frac=(0.2, 0.3),
)


@dataclass(frozen=True)
class CrossDomainTask(SceneTask):
    """Fine-tune on ``source`` scenes; evaluate on ``source`` (in_domain) and on the disjoint
    ``target`` family (cross_domain). Cameras (``TASK_CAMERA`` spline paths) are shared, so the gap
    measures shape / texture / lighting transfer only."""

    source: Family = SOURCE_FAMILY
    target: Family = TARGET_FAMILY

    def train_scenes(self, seed: int = 0, size: TaskSize | None = None) -> list[SceneSpec]:
        size = self.check(size if size is not None else TaskSize())
        return self._scenes(check_seed(seed), "train", self.source, size.train_scenes, size.views)

    def eval_sets(self, seed: int = 0, size: TaskSize | None = None) -> dict[str, list[SceneSpec]]:
        size = self.check(size if size is not None else TaskSize())
        seed = check_seed(seed)
        return {
            "in_domain": self._scenes(seed, "in_domain", self.source, size.eval_scenes, size.views),
            "cross_domain": self._scenes(
                seed, "cross_domain", self.target, size.eval_scenes, size.views
            ),
        }

    def task_metrics(
        self,
        model: nn.Module,
        cache: PathLike | None,
        size: TaskSize,
        seed: int,
        device: torch.device,
        stats: dict[str, list[dict[str, float]]],
        metrics: dict[str, float],
    ) -> dict[str, float]:
        """Domain gap: cross_domain minus in_domain, per metric both splits report."""
        out = {}
        for key, value in metrics.items():
            if key.startswith("in_domain/") and not key.endswith("/samples"):
                metric = key.split("/", 1)[1]
                other = metrics.get(f"cross_domain/{metric}")
                if other is not None:
                    out[f"gap/{metric}"] = other - value
        return out

    def _scenes(self, seed: int, split: str, family: Family, n: int, views: int) -> list[SceneSpec]:
        return [self._scene(seed, split, family, i, views) for i in range(n)]

    def _scene(self, seed: int, split: str, fam: Family, i: int, views: int) -> SceneSpec:
        def rng(stream: int) -> np.random.Generator:
            return _rng(seed, self.name, split, i + 1, stream)

        tex = rng(_TEXTURE)
        mats = iter([_material(tex, fam.textures) for _ in range(24)])
        ground = Ground(40.0, next(mats))
        geo = rng(_GEOMETRY)
        placed: list[tuple[float, float, float]] = []

        def spot(radius: float) -> tuple[float, float]:
            """A ground position clear of what is already placed (20 tries, then overlap)."""
            for _ in range(20):
                r, a = 1.8 * math.sqrt(geo.random()), 2 * math.pi * geo.random()
                x, y = r * math.cos(a), r * math.sin(a)
                if all(math.hypot(x - px, y - py) > radius + pr for px, py, pr in placed):
                    break
            placed.append((x, y, radius))
            return x, y

        shapes = [str(s) for s in geo.choice(list(fam.shapes), size=int(geo.integers(2, 5)))]
        boxes, cylinders, spheres, fields = [], [], [], []
        for shape in shapes:
            if shape == "heightfield" and not fields:
                half = (_u(geo, 1.2, 2.0), _u(geo, 1.2, 2.0))
                cx, cy = _u(geo, -1.0, 1.0), _u(geo, -1.0, 1.0)
                bumps = tuple(
                    (
                        _u(geo, 0.3, 0.8),
                        cx + half[0] * _u(geo, -0.5, 0.5),
                        cy + half[1] * _u(geo, -0.5, 0.5),
                        _u(geo, 0.3, 0.6),
                    )
                    for _ in range(int(geo.integers(2, 4)))
                )
                fields.append(HeightField((cx, cy), half, bumps, (0.0, 1.0, 0.0, 0.0), next(mats)))
            elif shape == "box":
                h3 = tuple(_u(geo, 0.25, 0.6) for _ in range(3))
                x, y = spot(math.hypot(h3[0], h3[1]))
                subs = tuple(
                    SubObject(
                        "box",
                        int(geo.integers(0, 5)),
                        (_u(geo, -0.8, 0.8), _u(geo, -0.8, 0.8)),
                        min(h3) * _u(geo, 0.3, 0.5),
                        next(mats),
                    )
                    for _ in range(int(geo.integers(1, 3)))
                )
                boxes.append(Box((x, y, h3[2]), h3, _u(geo, 0.0, 90.0), next(mats), subs))  # type: ignore[arg-type]
            elif shape == "cylinder":
                r, hh = _u(geo, 0.15, 0.4), _u(geo, 0.3, 0.8)
                x, y = spot(r)
                cylinders.append(Cylinder((x, y, hh), r, hh, next(mats)))
            else:
                r = _u(geo, 0.25, 0.6)
                x, y = spot(r)
                spheres.append(Sphere((x, y, r), r, next(mats)))
        return SceneSpec(
            ground=ground,
            boxes=tuple(boxes),
            spheres=tuple(spheres),
            cylinders=tuple(cylinders),
            heightfields=tuple(fields),
            lighting=draw_lighting(rng(_LIGHTING), fam.lighting),
            camera=draw_camera(rng(_CAMERA), TASK_CAMERA, views),
        )


# --------------------------------------------------------------------------- real captures


@dataclass(frozen=True)
class RealTask(Task):
    """Synthetic-to-real: few-shot fine-tuning of the synthetic-pretrained model on captured
    frames (``attrsub.data.captures``; fetch them with ``attrsub fetch-real``).

    - ``train``: castel windows of ``views`` consecutive RGB-D frames (30 frames cut into
      30 // views non-overlapping windows; the remainder is dropped).
    - ``test``: held-out castel windows, disjoint from the training ones (the main metric).
      Adjacent windows of one slow sequence are alike, so this measures adapting to one
      real scene and sensor, not generalising to new scenes.
    - ``chessboard``: stereo pairs (two views each; depth only on the board) and ``aloe``:
      the Middlebury stereo pair (two views, dense depth), both never trained on.

    TaskSize maps as: ``views`` -> window length, capped at 15 so two windows exist;
    ``eval_scenes`` -> test windows (at most half of them) and chessboard pairs (at most
    13); ``train_scenes`` -> training windows (at most the rest); ``size`` -> image size.
    Splits come from a permutation of the windows (and of the pairs) seeded by ``seed``.
    Depth is scored after per-image scale-and-shift alignment (the Aloe scale rests on an
    approximate calibration, and VGGT-style models predict depth up to scale); castel poses
    are estimated (see ``attrsub.data.captures``), so its camera metrics are only indicative.
    """

    depth_align: str = "scale_shift"

    def views(self, size: TaskSize) -> int:
        return min(_check_size_arg(size).views, CASTEL_FRAMES // 2)

    def windows(self, seed: int, size: TaskSize) -> dict[str, list[tuple[int, ...]]]:
        """The castel frame windows of the train and test splits, deterministic from ``seed``."""
        size, seed = self.check(size), check_seed(seed)
        wins = castel_windows(self.views(size))
        order = _rng(seed, self.name, "windows", 0, _LABEL).permutation(len(wins))
        n_test = min(size.eval_scenes, len(wins) // 2)
        n_train = min(size.train_scenes, len(wins) - n_test)
        return {
            "train": [wins[i] for i in sorted(order[n_test : n_test + n_train])],
            "test": [wins[i] for i in sorted(order[:n_test])],
        }

    def chessboard_pairs(self, seed: int, size: TaskSize) -> list[int]:
        """Indices into ``CHESS_PAIRS`` of the chessboard split."""
        size, seed = self.check(size), check_seed(seed)
        order = _rng(seed, self.name, "chessboard", 0, _LABEL).permutation(len(CHESS_PAIRS))
        return sorted(int(i) for i in order[: min(size.eval_scenes, len(CHESS_PAIRS))])

    def require_data(self, cache: PathLike | None) -> None:
        require_real_data(cache)

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> CaptureDataset:
        size = self.check(size)
        root = require_real_data(cache)
        return CaptureDataset(castel_captures(root, self.windows(seed, size)["train"]), size.size)

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        size = self.check(size)
        root = require_real_data(cache)
        return {
            "test": CaptureDataset(
                castel_captures(root, self.windows(seed, size)["test"]), size.size
            ),
            "chessboard": CaptureDataset(
                chessboard_captures(root, self.chessboard_pairs(seed, size)), size.size
            ),
            "aloe": CaptureDataset(aloe_captures(root), size.size),
        }


def scene_shapes(scene: SceneSpec) -> set[str]:
    """The primitive kinds a scene holds (sub-objects count as their shape)."""
    out = {
        name
        for name, items in (
            ("box", scene.boxes),
            ("sphere", scene.spheres),
            ("cylinder", scene.cylinders),
            ("heightfield", scene.heightfields),
        )
        if items
    }
    out.update(s.shape for b in scene.boxes for s in b.subs)
    return out


def scene_textures(scene: SceneSpec) -> set[str]:
    """The albedo kinds of every material in a scene, the ground's included."""
    mats = [scene.ground.material]
    for b in scene.boxes:
        mats += [b.material, *(s.material for s in b.subs)]
    mats += [x.material for x in (*scene.spheres, *scene.cylinders, *scene.heightfields)]
    return {m.texture.kind for m in mats}


TASKS: dict[str, Task] = {
    "print_attack": PrintAttackTask(
        name="print_attack",
        description="micro-baseline anti-spoofing: flat prints vs live 3D objects, +-5 deg",
        main_metric="test/depth_absrel",
    ),
    "cross_domain": CrossDomainTask(
        name="cross_domain",
        description="train on boxes+cylinders/checker+stripes, test on spheres+height "
        "fields/noise+patchwork under coloured lights (THuman -> 2K2K)",
        main_metric="cross_domain/depth_absrel",
    ),
    "real": RealTask(
        name="real",
        description="synthetic-to-real: fine-tune on real RGB-D frames (ViSP castel), test on "
        "held-out frames, chessboard stereo pairs and Middlebury Aloe",
        main_metric="test/depth_absrel",
    ),
}


def get_task(name: str) -> Task:
    """The registered task called ``name``; ConfigError lists the valid names otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks are {', '.join(sorted(TASKS))}")
    return TASKS[name]
