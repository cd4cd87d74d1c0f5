"""``cross_domain``: train and test in-domain on one family of shapes, textures and lights,
test cross-domain on a disjoint family, as THuman -> 2K2K in the paper.

The source family is boxes with sub-boxes and cylinders, checker/stripe albedo and one white
sun; the target family is spheres and height fields, noise/patchwork albedo and 2-3 coloured
lights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from attrsub.errors import ConfigError
from attrsub.scenes.draw import (
    CameraRanges,
    LightingRanges,
    Placer,
    draw_camera,
    draw_lighting,
    draw_material,
    uniform,
)
from attrsub.scenes.spec import (
    TEXTURE_KINDS,
    Box,
    Cylinder,
    Ground,
    HeightField,
    SceneSpec,
    Sphere,
    SubObject,
)
from attrsub.tasks.base import (
    CAMERA_STREAM,
    GEOMETRY_STREAM,
    LIGHTING_STREAM,
    TASK_LIGHTING,
    TASK_TEXTURE,
    TEXTURE_STREAM,
    SceneTask,
    TaskRun,
    TaskSize,
    check_seed,
)

SHAPES = ("box", "cylinder", "sphere", "heightfield")


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
        self, run: TaskRun, stats: dict[str, list[dict[str, float]]], metrics: dict[str, float]
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
        def rng(factor: int) -> np.random.Generator:
            return self.stream(seed, split, i + 1, factor)

        tex = rng(TEXTURE_STREAM)
        ranges = dataclasses.replace(TASK_TEXTURE, kinds=fam.textures)
        # skin_prob 0 still makes the skin draw, as these streams always have: same order.
        mats = iter([draw_material(tex, ranges, skin_prob=0.0) for _ in range(24)])
        ground = Ground(40.0, next(mats))
        geo = rng(GEOMETRY_STREAM)
        spot = Placer(geo, 1.8).spot

        shapes = [str(s) for s in geo.choice(list(fam.shapes), size=int(geo.integers(2, 5)))]
        boxes, cylinders, spheres, fields = [], [], [], []
        for shape in shapes:
            if shape == "heightfield" and not fields:
                half = (uniform(geo, (1.2, 2.0)), uniform(geo, (1.2, 2.0)))
                cx, cy = uniform(geo, (-1.0, 1.0)), uniform(geo, (-1.0, 1.0))
                bumps = tuple(
                    (
                        uniform(geo, (0.3, 0.8)),
                        cx + half[0] * uniform(geo, (-0.5, 0.5)),
                        cy + half[1] * uniform(geo, (-0.5, 0.5)),
                        uniform(geo, (0.3, 0.6)),
                    )
                    for _ in range(int(geo.integers(2, 4)))
                )
                fields.append(HeightField((cx, cy), half, bumps, (0.0, 1.0, 0.0, 0.0), next(mats)))
            elif shape == "box":
                h3 = tuple(uniform(geo, (0.25, 0.6)) for _ in range(3))
                x, y = spot(math.hypot(h3[0], h3[1]))
                subs = tuple(
                    SubObject(
                        "box",
                        int(geo.integers(0, 5)),
                        (uniform(geo, (-0.8, 0.8)), uniform(geo, (-0.8, 0.8))),
                        min(h3) * uniform(geo, (0.3, 0.5)),
                        next(mats),
                    )
                    for _ in range(int(geo.integers(1, 3)))
                )
                boxes.append(Box((x, y, h3[2]), h3, uniform(geo, (0.0, 90.0)), next(mats), subs))  # type: ignore[arg-type]
            elif shape == "cylinder":
                r, hh = uniform(geo, (0.15, 0.4)), uniform(geo, (0.3, 0.8))
                x, y = spot(r)
                cylinders.append(Cylinder((x, y, hh), r, hh, next(mats)))
            else:
                r = uniform(geo, (0.25, 0.6))
                x, y = spot(r)
                spheres.append(Sphere((x, y, r), r, next(mats)))
        return SceneSpec(
            ground=ground,
            boxes=tuple(boxes),
            spheres=tuple(spheres),
            cylinders=tuple(cylinders),
            heightfields=tuple(fields),
            lighting=draw_lighting(rng(LIGHTING_STREAM), fam.lighting),
            camera=draw_camera(rng(CAMERA_STREAM), TASK_CAMERA, views),
        )


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
