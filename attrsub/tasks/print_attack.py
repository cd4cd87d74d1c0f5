"""``print_attack``: micro-baseline face anti-spoofing, a synthetic stand-in for the paper's task.

Half of the samples are "prints" (one flat textured card filling the whole view), half are
"live" (relief, spheres and boxes on the ground), all seen by a hand-held ``micro`` camera
(every view within 5 degrees of the first). Besides the reconstruction metrics, a print is
detected from the predicted depth alone by a planarity test (see ``planarity``) whose
threshold is chosen on the training split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attrsub.errors import ConfigError
from attrsub.eval.evaluate import run_split
from attrsub.scenes.draw import draw_lighting, draw_material, uniform
from attrsub.scenes.spec import Box, Camera, Ground, HeightField, SceneSpec, Sphere, SubObject
from attrsub.tasks.base import (
    CAMERA_STREAM,
    GEOMETRY_STREAM,
    LABEL_STREAM,
    LIGHTING_STREAM,
    MAX_SEED,
    TASK_LIGHTING,
    TASK_TEXTURE,
    TEXTURE_STREAM,
    SceneTask,
    TaskRun,
    TaskSize,
    check_seed,
    check_task_size,
)

# A print is a card this large, so it fills every micro-baseline view (see PrintAttackTask).
CARD_HALF = 12.0
CARD_THICKNESS = 0.01
# Micro-baseline offsets are drawn per axis (azimuth, elevation) within +-span, so a span of
# 3.5 degrees keeps the total rotation from the first view within 5 degrees.
MICRO_SPAN_DEG = (1.5, 3.5)
MAX_MICRO_DEG = 5.0


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
        size = check_task_size(size)
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
        order = self.stream(seed, split, 0, LABEL_STREAM).permutation(n)
        prints = order < n // 2
        return [self._scene(seed, split, i, bool(prints[i]), views) for i in range(n)]

    def _scene(self, seed: int, split: str, i: int, printed: bool, views: int) -> SceneSpec:
        def rng(factor: int) -> np.random.Generator:
            return self.stream(seed, split, i + 1, factor)

        tex = rng(TEXTURE_STREAM)
        ranges = dataclasses.replace(TASK_TEXTURE, kinds=self.texture_kinds)
        mats = [draw_material(tex, ranges, self.skin_prob) for _ in range(6)]
        cam = rng(CAMERA_STREAM)
        camera = Camera(
            trajectory="micro",
            views=views,
            fov_deg=uniform(cam, (35.0, 45.0)),
            distance=uniform(cam, (3.0, 4.5)),
            elevation_deg=uniform(cam, (65.0, 78.0)),
            azimuth_deg=uniform(cam, (-180.0, 180.0)),
            span_deg=uniform(cam, MICRO_SPAN_DEG),
            target=(0.0, 0.0, 0.25),
            lookat_jitter=0.0,
            seed=int(cam.integers(0, MAX_SEED)),
        )
        lighting = draw_lighting(rng(LIGHTING_STREAM), TASK_LIGHTING)
        geo = rng(GEOMETRY_STREAM)
        if printed:
            card = Box(
                center=(0.0, 0.0, CARD_THICKNESS),
                half_size=(CARD_HALF, CARD_HALF, CARD_THICKNESS),
                yaw_deg=uniform(geo, (0.0, 90.0)),
                material=mats[0],
            )
            return SceneSpec(
                ground=Ground(40.0, mats[1]), boxes=(card,), lighting=lighting, camera=camera
            )
        half = (uniform(geo, (2.5, 3.5)), uniform(geo, (2.5, 3.5)))
        bumps = tuple(
            (
                uniform(geo, (0.3, 0.9)),
                uniform(geo, (-1.5, 1.5)),
                uniform(geo, (-1.5, 1.5)),
                uniform(geo, (0.3, 0.7)),
            )
            for _ in range(int(geo.integers(2, 5)))
        )
        k, phi = uniform(geo, (1.0, 5.0)), uniform(geo, (0.0, 2 * math.pi))
        ripple = (
            uniform(geo, (0.0, 0.05)),
            k * math.cos(phi),
            k * math.sin(phi),
            uniform(geo, (0.0, 6.28)),
        )
        relief = HeightField((0.0, 0.0), half, bumps, ripple, mats[0])
        r = uniform(geo, (0.35, 0.7))
        a = uniform(geo, (0.0, 2 * math.pi))
        head = Sphere((0.6 * math.cos(a), 0.6 * math.sin(a), r), r, mats[2])
        boxes: tuple[Box, ...] = ()
        if geo.random() < 0.5:
            h = uniform(geo, (0.2, 0.4))
            subs = tuple(
                SubObject(
                    "box",
                    int(geo.integers(0, 5)),
                    (uniform(geo, (-0.7, 0.7)), 0.0),
                    h * uniform(geo, (0.3, 0.5)),
                    mats[4 + j],
                )
                for j in range(int(geo.integers(1, 3)))
            )
            boxes = (
                Box(
                    (-0.6 * math.cos(a), -0.6 * math.sin(a), h),
                    (h, h, h),
                    uniform(geo, (0.0, 90.0)),
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
        self, run: TaskRun, stats: dict[str, list[dict[str, float]]], metrics: dict[str, float]
    ) -> dict[str, float]:
        train = self.train_data(run.cache, run.size, run.seed, device=str(run.device))
        _, train_stats = run_split(run.model, train, run.device, self.sample_stats, metrics=False)
        train_scores = [s["planarity"] for s in train_stats]
        train_labels = self.labels(run.seed, "train", run.size)
        threshold = select_threshold(train_scores, train_labels)
        test_scores = [s["planarity"] for s in stats[self.split]]
        test_labels = self.labels(run.seed, self.split, run.size)
        return {
            "spoof_threshold": threshold,
            "train/spoof_acc": spoof_accuracy(train_scores, train_labels, threshold),
            f"{self.split}/spoof_acc": spoof_accuracy(test_scores, test_labels, threshold),
        }
