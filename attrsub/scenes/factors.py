"""Factor families: the base model's world, and one family per factor that leaves it.

The base model has a world: ``CANONICAL``, the distribution it was pretrained on, in which
every factor (texture, geometry, camera, lighting) stays in a moderate range. A factor
family pushes exactly one factor to ``EXTREMES`` outside that world (the tails on both
sides where a factor has two, new pattern kinds, trajectories and light types), while
the other three are drawn per scene from the canonical range. Then the one thing an
adapter trained on a family can learn, beyond the scenes it happens to see, is its
factor's extremes; what it does not learn is a fixed value of the other factors,
because they are not fixed. ``canonical`` draws every factor canonically: the
pretraining distribution (``attrsub pretrain``).

Groups: several datasets (one adapter each) of one family differ only in their draws, so
adapters of one factor are independent samples of the same family.

Ranges and the draws from them live in ``attrsub.scenes.draw``, which the tasks share. Every
draw uses its own numpy stream keyed by (seed, family, group, scene, drawn factor), so one
factor's draw never shifts another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attrsub.errors import ConfigError
from attrsub.scenes.draw import (
    CameraRanges,
    GeometryRanges,
    LightingRanges,
    Placer,
    TextureRanges,
    draw_camera,
    draw_lighting,
    draw_material,
    integer,
    uniform,
)
from attrsub.scenes.spec import (
    Box,
    Cylinder,
    Ground,
    HeightField,
    Material,
    SceneSpec,
    Sphere,
    SubObject,
)

FACTORS = ("texture", "geometry", "camera", "lighting")
CANONICAL = "canonical"
# Material slots drawn per texture draw: the ground plus the most primitives EXTREMES place.
MATERIAL_SLOTS = 32


@dataclass(frozen=True)
class Ranges:
    texture: TextureRanges
    geometry: GeometryRanges
    camera: CameraRanges
    lighting: LightingRanges


# The base model's world: what `attrsub pretrain` draws every factor from, and what the
# factor families draw their non-target factors from.
CANONICAL_RANGES = Ranges(
    texture=TextureRanges(
        kinds=("checker", "noise", "patchwork"),
        frequency=(1.0, 4.0),
        colours=(2, 4),
        saturation=(0.1, 0.6),
        value=(0.3, 0.9),
        specular=(0.0, 0.2),
        shininess=(8.0, 64.0),
    ),
    geometry=GeometryRanges(
        boxes=(1, 3),
        subs_per_box=(0, 2),
        spheres=(0, 2),
        cylinders=(0, 2),
        heightfields=(0, 1),
        box_half=(0.25, 0.6),
        sphere_radius=(0.25, 0.55),
        cylinder_radius=(0.15, 0.35),
        cylinder_half_height=(0.3, 0.8),
        spread=(1.0, 2.0),
        bump_amplitude=(0.2, 0.6),
        bump_sigma=(0.3, 0.6),
        bumps=(1, 3),
        ripple=(0.0, 0.05),
    ),
    camera=CameraRanges(
        trajectories=("spline", "orbit"),
        fov_deg=(45.0, 65.0),
        distance=(5.0, 8.0),
        elevation_deg=(20.0, 45.0),
        span_deg=(30.0, 90.0),
        micro_span_deg=(1.0, 5.0),
        lookat_jitter=(0.0, 0.15),
        dolly_frac=(0.2, 0.4),
    ),
    lighting=LightingRanges(
        ambient=(0.2, 0.45),
        lights=(1, 1),
        saturation=(0.0, 0.25),
        intensity=(0.9, 1.6),
        elevation_deg=(30.0, 75.0),
        point_prob=0.0,
        exposure=(0.85, 1.15),
    ),
)

# Each factor's extremes, outside CANONICAL_RANGES: both tails of a numeric range where
# it has two, pattern kinds, trajectories and light types the base never saw. Fields equal
# to the canonical ones (texture colours, camera micro span and dolly fraction, which only
# the unseen trajectories use) are not an extreme of their own.
EXTREMES = Ranges(
    texture=TextureRanges(
        kinds=("solid", "stripes"),
        frequency=((0.12, 0.4), (9.0, 24.0)),
        colours=(2, 4),
        saturation=(0.85, 1.0),
        value=((0.03, 0.15), (0.95, 1.0)),
        specular=(0.5, 0.95),
        shininess=(150.0, 500.0),
    ),
    geometry=GeometryRanges(
        boxes=(3, 5),
        subs_per_box=(2, 3),
        spheres=(2, 4),
        cylinders=(2, 3),
        heightfields=(0, 1),
        box_half=((0.06, 0.15), (0.9, 1.4)),
        sphere_radius=((0.06, 0.15), (0.8, 1.2)),
        cylinder_radius=((0.04, 0.1), (0.5, 0.8)),
        cylinder_half_height=((0.05, 0.15), (1.1, 1.8)),
        spread=((0.2, 0.6), (2.6, 3.6)),
        bump_amplitude=(0.9, 1.6),
        bump_sigma=(0.12, 0.25),
        bumps=(4, 4),
        ripple=(0.1, 0.25),
    ),
    camera=CameraRanges(
        trajectories=("spline", "orbit", "dolly", "micro"),
        fov_deg=((20.0, 32.0), (78.0, 100.0)),
        distance=((3.0, 4.0), (10.5, 15.0)),
        elevation_deg=((3.0, 10.0), (58.0, 80.0)),
        span_deg=(140.0, 240.0),
        micro_span_deg=(1.0, 5.0),
        lookat_jitter=(0.5, 1.2),
        dolly_frac=(0.2, 0.4),
    ),
    lighting=LightingRanges(
        ambient=(0.0, 0.06),
        lights=(2, 3),
        saturation=(0.6, 1.0),
        intensity=((0.25, 0.6), (2.2, 3.5)),
        elevation_deg=(4.0, 15.0),
        point_prob=0.5,
        exposure=((0.45, 0.65), (1.5, 2.2)),
    ),
)


@dataclass(frozen=True)
class FactorSpec:
    """Which factor goes to its extremes (or ``canonical``), which group, scenes, views.

    Its checks are the only ones of these fields: ``DatasetSpec`` runs them too."""

    factor: str
    group: int = 0
    scenes: int = 8
    views: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        valid = (*FACTORS, CANONICAL)
        if self.factor not in valid:
            raise ConfigError(f"unknown factor {self.factor!r}; valid: {', '.join(valid)}")
        for name, lo in (("group", 0), ("scenes", 1), ("views", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                kind = "positive" if lo else "non-negative"
                raise ConfigError(f"{name} must be a {kind} integer, got {value!r}")
        if self.views > 1024:
            raise ConfigError(f"views must be at most 1024, got {self.views}")


def ranges_for(family: str, factor: str) -> object:
    """The ranges ``factor`` is drawn from in ``family``'s family (a factor or ``canonical``)."""
    return getattr(EXTREMES if family == factor else CANONICAL_RANGES, factor)


def sample_scenes(spec: FactorSpec) -> list[SceneSpec]:
    """The factor dataset's scene specs, deterministic from ``spec``.

    Every factor is drawn per scene: the target from its extremes, the rest canonically.
    """
    if not isinstance(spec, FactorSpec):
        raise ConfigError(f"sample_scenes needs a FactorSpec, got {type(spec).__name__}")
    fid = (*FACTORS, CANONICAL).index(spec.factor)
    scenes = []
    for i in range(spec.scenes):
        parts = {
            factor: (
                np.random.default_rng([spec.seed, fid, spec.group, i + 1, k]),
                ranges_for(spec.factor, factor),
            )
            for k, factor in enumerate(FACTORS)
        }
        materials = _materials(*parts["texture"])
        ground, boxes, spheres, cylinders, fields = _geometry(*parts["geometry"], materials)
        scenes.append(
            SceneSpec(
                ground=ground,
                boxes=boxes,
                spheres=spheres,
                cylinders=cylinders,
                heightfields=fields,
                lighting=draw_lighting(*parts["lighting"]),
                camera=draw_camera(*parts["camera"], spec.views),
            )
        )
    return scenes


def _materials(rng: np.random.Generator, t: TextureRanges) -> tuple[Material, ...]:
    return tuple(draw_material(rng, t) for _ in range(MATERIAL_SLOTS))


def _geometry(
    rng: np.random.Generator, g: GeometryRanges, mats: tuple[Material, ...]
) -> tuple[
    Ground, tuple[Box, ...], tuple[Sphere, ...], tuple[Cylinder, ...], tuple[HeightField, ...]
]:
    """Place primitives on the ground around the origin; materials are taken in slot order."""
    slot = iter(mats[1:])
    spread = uniform(rng, g.spread)
    spot = Placer(rng, spread).spot

    fields = []
    for _ in range(integer(rng, g.heightfields)):
        half = (uniform(rng, (1.0, 2.0)), uniform(rng, (1.0, 2.0)))
        cx, cy = (uniform(rng, (-spread, spread)) for _ in range(2))
        bumps = tuple(
            (
                uniform(rng, g.bump_amplitude),
                cx + half[0] * uniform(rng, (-0.6, 0.6)),
                cy + half[1] * uniform(rng, (-0.6, 0.6)),
                uniform(rng, g.bump_sigma),
            )
            for _ in range(integer(rng, g.bumps))
        )
        k, phi = uniform(rng, (1.0, 6.0)), 2 * math.pi * rng.random()
        ripple = (
            uniform(rng, g.ripple),
            k * math.cos(phi),
            k * math.sin(phi),
            2 * math.pi * rng.random(),
        )
        fields.append(HeightField((cx, cy), half, bumps, ripple, next(slot)))
    boxes = []
    for _ in range(integer(rng, g.boxes)):
        half3 = tuple(uniform(rng, g.box_half) for _ in range(3))
        x, y = spot(math.hypot(half3[0], half3[1]))
        mat = next(slot)
        subs = tuple(
            SubObject(
                shape=str(rng.choice(("box", "sphere"))),
                face=int(rng.integers(0, 5)),
                offset=(uniform(rng, (-0.8, 0.8)), uniform(rng, (-0.8, 0.8))),
                size=min(half3) * uniform(rng, (0.3, 0.6)),
                material=next(slot),
            )
            for _ in range(integer(rng, g.subs_per_box))
        )
        boxes.append(Box((x, y, half3[2]), half3, uniform(rng, (0.0, 90.0)), mat, subs))  # type: ignore[arg-type]
    spheres = []
    for _ in range(integer(rng, g.spheres)):
        r = uniform(rng, g.sphere_radius)
        x, y = spot(r)
        spheres.append(Sphere((x, y, r), r, next(slot)))
    cylinders = []
    for _ in range(integer(rng, g.cylinders)):
        r, hh = uniform(rng, g.cylinder_radius), uniform(rng, g.cylinder_half_height)
        x, y = spot(r)
        cylinders.append(Cylinder((x, y, hh), r, hh, next(slot)))
    return Ground(40.0, mats[0]), tuple(boxes), tuple(spheres), tuple(cylinders), tuple(fields)
