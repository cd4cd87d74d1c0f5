"""Factor families: scene distributions that vary exactly one attribute.

The paper pushes the target attribute to its extremes while every other attribute stays in a
very small range. Here each attribute (texture, geometry, camera, lighting) is drawn from its
BROAD ranges per scene when it is the target, and otherwise from its NARROW ranges once per
(factor, group, seed) and then held fixed across the group's scenes, so the non-target
attributes are identical inside a dataset (depth is pixel-identical across a texture group,
albedo across a lighting group, and so on). Different groups draw different bases, so several
adapters per attribute train on different datasets. ``all`` draws everything broad per scene
(the pretraining distribution).

Every draw uses its own numpy stream keyed by (seed, factor, group, scene-or-base,
attribute), so one attribute's draw never shifts another's.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from attrsub.errors import ConfigError
from attrsub.scene import (
    TEXTURE_KINDS,
    TRAJECTORIES,
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
ALL = "all"
# Material slots drawn per texture draw: the ground plus the most primitives BROAD can place.
MATERIAL_SLOTS = 32
Range = tuple[float, float]
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


# The target attribute's range: pushed towards its extremes.
BROAD = Ranges(
    texture=TextureRanges(
        kinds=TEXTURE_KINDS,
        frequency=(0.3, 12.0),
        colours=(2, 4),
        saturation=(0.0, 1.0),
        value=(0.03, 1.0),
        specular=(0.0, 0.8),
        shininess=(4.0, 256.0),
    ),
    geometry=GeometryRanges(
        boxes=(0, 5),
        subs_per_box=(0, 3),
        spheres=(0, 4),
        cylinders=(0, 3),
        heightfields=(0, 1),
        box_half=(0.08, 1.0),
        sphere_radius=(0.08, 0.9),
        cylinder_radius=(0.08, 0.6),
        cylinder_half_height=(0.1, 1.2),
        spread=(0.3, 3.0),
        bump_amplitude=(0.05, 1.2),
        bump_sigma=(0.25, 0.9),
        bumps=(1, 4),
        ripple=(0.0, 0.15),
    ),
    camera=CameraRanges(
        trajectories=TRAJECTORIES,
        fov_deg=(25.0, 95.0),
        distance=(3.5, 12.0),
        elevation_deg=(8.0, 75.0),
        span_deg=(20.0, 180.0),
        micro_span_deg=(1.0, 5.0),
        lookat_jitter=(0.0, 1.0),
        dolly_frac=(0.1, 0.6),
    ),
    lighting=LightingRanges(
        ambient=(0.0, 0.6),
        lights=(1, 3),
        saturation=(0.0, 0.9),
        intensity=(0.2, 2.5),
        elevation_deg=(8.0, 88.0),
        point_prob=0.3,
        exposure=(0.6, 1.5),
    ),
)

# Every other attribute's range: small, drawn once per group and then held fixed.
NARROW = Ranges(
    texture=TextureRanges(
        kinds=("checker", "noise", "patchwork"),
        frequency=(1.5, 3.0),
        colours=(3, 4),
        saturation=(0.3, 0.6),
        value=(0.4, 0.85),
        specular=(0.05, 0.15),
        shininess=(16.0, 48.0),
    ),
    geometry=GeometryRanges(
        boxes=(2, 3),
        subs_per_box=(0, 1),
        spheres=(1, 2),
        cylinders=(1, 1),
        heightfields=(1, 1),
        box_half=(0.3, 0.5),
        sphere_radius=(0.3, 0.45),
        cylinder_radius=(0.2, 0.3),
        cylinder_half_height=(0.4, 0.6),
        spread=(1.5, 2.0),
        bump_amplitude=(0.3, 0.5),
        bump_sigma=(0.35, 0.5),
        bumps=(2, 3),
        ripple=(0.0, 0.03),
    ),
    camera=CameraRanges(
        trajectories=("spline",),
        fov_deg=(50.0, 60.0),
        distance=(5.5, 6.5),
        elevation_deg=(25.0, 35.0),
        span_deg=(40.0, 60.0),
        micro_span_deg=(3.0, 5.0),
        lookat_jitter=(0.0, 0.05),
        dolly_frac=(0.2, 0.3),
    ),
    lighting=LightingRanges(
        ambient=(0.25, 0.35),
        lights=(1, 1),
        saturation=(0.0, 0.1),
        intensity=(1.2, 1.6),
        elevation_deg=(45.0, 60.0),
        point_prob=0.0,
        exposure=(0.9, 1.1),
    ),
)


@dataclass(frozen=True)
class FactorSpec:
    """Which attribute varies (or ``all``), which group's base, how many scenes and views."""

    factor: str
    group: int = 0
    scenes: int = 8
    views: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        valid = (*FACTORS, ALL)
        if self.factor not in valid:
            raise ConfigError(f"unknown factor {self.factor!r}; valid factors are {valid}")
        for name, lo in (("group", 0), ("scenes", 1), ("views", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.views > 1024:
            raise ConfigError(f"views must be at most 1024, got {self.views}")


def sample_scenes(spec: FactorSpec) -> list[SceneSpec]:
    """The factor dataset's scene specs, deterministic from ``spec``."""
    if not isinstance(spec, FactorSpec):
        raise ConfigError(f"sample_scenes needs a FactorSpec, got {type(spec).__name__}")
    fid = (*FACTORS, ALL).index(spec.factor)
    scenes = []
    for i in range(spec.scenes):
        parts = {}
        for aid, attr in enumerate(FACTORS):
            broad = spec.factor in (attr, ALL)
            rng = np.random.default_rng([spec.seed, fid, spec.group, i + 1 if broad else 0, aid])
            parts[attr] = (rng, getattr(BROAD if broad else NARROW, attr))
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


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


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
            frequency=math.exp(_u(rng, (math.log(t.frequency[0]), math.log(t.frequency[1])))),
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
