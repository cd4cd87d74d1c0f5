"""Factor families: the base model's world, and one family per attribute that leaves it.

The base model has a world: ``CANONICAL``, the distribution it was pretrained on, in which
every attribute (texture, geometry, camera, lighting) stays in a moderate range. A factor
family pushes exactly one attribute to ``EXTREMES`` outside that world (the tails on both
sides where an attribute has two, new pattern kinds, trajectories and light types), while
the other three are drawn per scene from the canonical range. Then the one thing an
adapter trained on a family can learn, beyond the scenes it happens to see, is its
attribute's extremes; what it does not learn is a fixed value of the other attributes,
because they are not fixed. ``canonical`` draws every attribute canonically: the
pretraining distribution (``attrsub pretrain``).

Groups: several datasets (one adapter each) of one family differ only in their draws, so
adapters of one attribute are independent samples of the same family.

A range is one interval ``(lo, hi)`` or several (``((lo, hi), (lo2, hi2))``, the two tails
of an extreme); a draw picks one interval uniformly, then a value uniformly inside it.
Every draw uses its own numpy stream keyed by (seed, factor, group, scene, attribute), so
one attribute's draw never shifts another's.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from attrsub.errors import ConfigError
from attrsub.scenes.spec import (
    Box,
    Camera,
    Cylinder,
    Ground,
    HeightField,
    Light,
    Lighting,
    Material,
    SceneSpec,
    Sphere,
    SubObject,
    Texture,
)

FACTORS = ("texture", "geometry", "camera", "lighting")
CANONICAL = "canonical"
# Material slots drawn per texture draw: the ground plus the most primitives EXTREMES place.
MATERIAL_SLOTS = 32
Interval = tuple[float, float]
Range = Interval | tuple[Interval, ...]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class TextureRanges:
    """Albedo: pattern kinds, frequency (cycles per unit), palette HSV, specular."""

    kinds: tuple[str, ...]
    frequency: Range
    colours: IntRange
    saturation: Range
    value: Range
    specular: Range
    shininess: Range


@dataclass(frozen=True)
class GeometryRanges:
    """Primitive counts, sizes (half-sizes / radii, scene units) and placement spread."""

    boxes: IntRange
    subs_per_box: IntRange
    spheres: IntRange
    cylinders: IntRange
    heightfields: IntRange
    box_half: Range
    sphere_radius: Range
    cylinder_radius: Range
    cylinder_half_height: Range
    spread: Range
    bump_amplitude: Range
    bump_sigma: Range
    bumps: IntRange
    ripple: Range


@dataclass(frozen=True)
class CameraRanges:
    """Trajectory family, field of view, distance to target, elevation, path span, jitter."""

    trajectories: tuple[str, ...]
    fov_deg: Range
    distance: Range
    elevation_deg: Range
    span_deg: Range
    micro_span_deg: Range
    lookat_jitter: Range
    dolly_frac: Range


@dataclass(frozen=True)
class LightingRanges:
    """Ambient level, light count/colour/intensity/elevation, point-light odds, exposure."""

    ambient: Range
    lights: IntRange
    saturation: Range
    intensity: Range
    elevation_deg: Range
    point_prob: float
    exposure: Range


@dataclass(frozen=True)
class Ranges:
    texture: TextureRanges
    geometry: GeometryRanges
    camera: CameraRanges
    lighting: LightingRanges


# The base model's world: what `attrsub pretrain` draws every attribute from, and what the
# factor families draw their non-target attributes from.
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

# Each attribute's extremes, outside CANONICAL_RANGES: both tails of a numeric range where
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
    """Which attribute goes to its extremes (or ``canonical``), which group, scenes, views."""

    factor: str
    group: int = 0
    scenes: int = 8
    views: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        valid = (*FACTORS, CANONICAL)
        if self.factor not in valid:
            raise ConfigError(f"unknown factor {self.factor!r}; valid factors are {valid}")
        for name, lo in (("group", 0), ("scenes", 1), ("views", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.views > 1024:
            raise ConfigError(f"views must be at most 1024, got {self.views}")


def ranges_for(factor: str, attribute: str) -> object:
    """The ranges ``attribute`` is drawn from in ``factor``'s family."""
    return getattr(EXTREMES if factor == attribute else CANONICAL_RANGES, attribute)


def sample_scenes(spec: FactorSpec) -> list[SceneSpec]:
    """The factor dataset's scene specs, deterministic from ``spec``.

    Every attribute is drawn per scene: the target from its extremes, the rest canonically.
    """
    if not isinstance(spec, FactorSpec):
        raise ConfigError(f"sample_scenes needs a FactorSpec, got {type(spec).__name__}")
    fid = (*FACTORS, CANONICAL).index(spec.factor)
    scenes = []
    for i in range(spec.scenes):
        parts = {
            attr: (
                np.random.default_rng([spec.seed, fid, spec.group, i + 1, aid]),
                ranges_for(spec.factor, attr),
            )
            for aid, attr in enumerate(FACTORS)
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


def intervals(r: Range) -> tuple[Interval, ...]:
    """The intervals of a range: one, or the tails of an extreme."""
    return tuple(r) if isinstance(r[0], tuple) else (r,)  # type: ignore[return-value]


def _interval(rng: np.random.Generator, r: Range) -> Interval:
    parts = intervals(r)
    return parts[int(rng.integers(len(parts)))] if len(parts) > 1 else parts[0]


def _u(rng: np.random.Generator, r: Range) -> float:
    lo, hi = _interval(rng, r)
    return float(rng.uniform(lo, hi))


def _log_u(rng: np.random.Generator, r: Range) -> float:
    lo, hi = _interval(rng, r)
    return math.exp(float(rng.uniform(math.log(lo), math.log(hi))))


def _i(rng: np.random.Generator, r: IntRange) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _materials(rng: np.random.Generator, t: TextureRanges) -> tuple[Material, ...]:
    out = []
    for _ in range(MATERIAL_SLOTS):
        palette = tuple(
            tuple(
                float(c)
                for c in colorsys.hsv_to_rgb(rng.random(), _u(rng, t.saturation), _u(rng, t.value))
            )
            for _ in range(_i(rng, t.colours))
        )
        tex = Texture(
            kind=str(rng.choice(t.kinds)),
            frequency=_log_u(rng, t.frequency),
            palette=palette,  # type: ignore[arg-type]
            seed=int(rng.integers(0, 2**24)),
        )
        out.append(Material(tex, specular=_u(rng, t.specular), shininess=_u(rng, t.shininess)))
    return tuple(out)


def _geometry(
    rng: np.random.Generator, g: GeometryRanges, mats: tuple[Material, ...]
) -> tuple[
    Ground, tuple[Box, ...], tuple[Sphere, ...], tuple[Cylinder, ...], tuple[HeightField, ...]
]:
    """Place primitives on the ground around the origin; materials are taken in slot order."""
    slot = iter(mats[1:])
    spread = _u(rng, g.spread)
    placed: list[tuple[float, float, float]] = []

    def spot(radius: float) -> tuple[float, float]:
        """Rejection-sample a ground position that keeps clear of what is already placed."""
        for _ in range(20):
            r, a = spread * math.sqrt(rng.random()), 2 * math.pi * rng.random()
            x, y = r * math.cos(a), r * math.sin(a)
            if all(math.hypot(x - px, y - py) > radius + pr for px, py, pr in placed):
                break
        placed.append((x, y, radius))
        return x, y

    fields = []
    for _ in range(_i(rng, g.heightfields)):
        half = (_u(rng, (1.0, 2.0)), _u(rng, (1.0, 2.0)))
        cx, cy = (_u(rng, (-spread, spread)) for _ in range(2))
        bumps = tuple(
            (
                _u(rng, g.bump_amplitude),
                cx + half[0] * _u(rng, (-0.6, 0.6)),
                cy + half[1] * _u(rng, (-0.6, 0.6)),
                _u(rng, g.bump_sigma),
            )
            for _ in range(_i(rng, g.bumps))
        )
        k, phi = _u(rng, (1.0, 6.0)), 2 * math.pi * rng.random()
        ripple = (
            _u(rng, g.ripple),
            k * math.cos(phi),
            k * math.sin(phi),
            2 * math.pi * rng.random(),
        )
        fields.append(HeightField((cx, cy), half, bumps, ripple, next(slot)))
    boxes = []
    for _ in range(_i(rng, g.boxes)):
        half3 = tuple(_u(rng, g.box_half) for _ in range(3))
        x, y = spot(math.hypot(half3[0], half3[1]))
        mat = next(slot)
        subs = tuple(
            SubObject(
                shape=str(rng.choice(("box", "sphere"))),
                face=int(rng.integers(0, 5)),
                offset=(_u(rng, (-0.8, 0.8)), _u(rng, (-0.8, 0.8))),
                size=min(half3) * _u(rng, (0.3, 0.6)),
                material=next(slot),
            )
            for _ in range(_i(rng, g.subs_per_box))
        )
        boxes.append(Box((x, y, half3[2]), half3, _u(rng, (0.0, 90.0)), mat, subs))  # type: ignore[arg-type]
    spheres = []
    for _ in range(_i(rng, g.spheres)):
        r = _u(rng, g.sphere_radius)
        x, y = spot(r)
        spheres.append(Sphere((x, y, r), r, next(slot)))
    cylinders = []
    for _ in range(_i(rng, g.cylinders)):
        r, hh = _u(rng, g.cylinder_radius), _u(rng, g.cylinder_half_height)
        x, y = spot(r)
        cylinders.append(Cylinder((x, y, hh), r, hh, next(slot)))
    return Ground(40.0, mats[0]), tuple(boxes), tuple(spheres), tuple(cylinders), tuple(fields)


def draw_lighting(rng: np.random.Generator, lr: LightingRanges) -> Lighting:
    """One lighting setup from ``lr``; public so task samplers reuse the families' draws."""
    lights = []
    for _ in range(_i(rng, lr.lights)):
        color = tuple(
            float(c) for c in colorsys.hsv_to_rgb(rng.random(), _u(rng, lr.saturation), 1.0)
        )
        az, el = 2 * math.pi * rng.random(), math.radians(_u(rng, lr.elevation_deg))
        direction = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        intensity = _u(rng, lr.intensity)
        if rng.random() < lr.point_prob:
            dist = _u(rng, (2.5, 6.0))
            pos = tuple(dist * c for c in direction)
            lights.append(Light("point", pos, color, intensity * dist * dist))  # type: ignore[arg-type]
        else:
            lights.append(Light("directional", direction, color, intensity))  # type: ignore[arg-type]
    sky = tuple(
        float(c)
        for c in colorsys.hsv_to_rgb(
            _u(rng, (0.55, 0.65)), _u(rng, (0.1, 0.5)), _u(rng, (0.5, 0.95))
        )
    )
    return Lighting(
        ambient=_u(rng, lr.ambient),
        ambient_color=sky,  # type: ignore[arg-type]
        lights=tuple(lights),
        sky=sky,  # type: ignore[arg-type]
        exposure=_u(rng, lr.exposure),
    )


def draw_camera(rng: np.random.Generator, c: CameraRanges, views: int) -> Camera:
    """One camera path of ``views`` frames from ``c``; public for the task samplers."""
    trajectory = str(rng.choice(c.trajectories))
    span = _u(rng, c.micro_span_deg if trajectory == "micro" else c.span_deg)
    return Camera(
        trajectory=trajectory,
        views=views,
        fov_deg=_u(rng, c.fov_deg),
        distance=_u(rng, c.distance),
        elevation_deg=_u(rng, c.elevation_deg),
        azimuth_deg=_u(rng, (-180.0, 180.0)),
        span_deg=span,
        target=(0.0, 0.0, 0.5),
        lookat_jitter=_u(rng, c.lookat_jitter),
        dolly_frac=_u(rng, c.dolly_frac),
        controls=5,
        seed=int(rng.integers(0, 2**31)),
    )
