"""Factor ranges and the draws from them: the one sampler set every scene generator uses.

The factor families (``attrsub.scenes.factors``) and the downstream tasks
(``attrsub.tasks``) both build scenes from these draws, so a texture, a light or a camera
path means the same thing in either. A range is one interval ``(lo, hi)`` or several
(``((lo, hi), (lo2, hi2))``, the two tails of an extreme); a draw picks one interval
uniformly (no generator call when there is only one), then a value uniformly inside it.
Every helper takes the generator it draws from and calls it in a fixed order, so a stream
keyed by a scene and a factor reproduces its scene bit for bit.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from attrsub.scenes.spec import Camera, Light, Lighting, Material, Texture

Interval = tuple[float, float]
Range = Interval | tuple[Interval, ...]
IntRange = tuple[int, int]
# Hue, saturation and value of a skin-tone palette colour: the closest the renderer gets to a
# face-like albedo (blotchy warm patches).
SKIN_HSV: tuple[Interval, Interval, Interval] = ((0.02, 0.09), (0.2, 0.6), (0.35, 0.95))


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


def keyed_stream(seed: int, key: str, index: int, stream: int) -> np.random.Generator:
    """One factor's stream of one scene, keyed by a name (a task's "<task>/<split>"): draws
    never shift across factors, scenes or names."""
    tag = hashlib.sha256(key.encode()).digest()[:8]
    words = [int.from_bytes(tag[:4], "little"), int.from_bytes(tag[4:], "little")]
    return np.random.default_rng([seed, *words, index, stream])


def intervals(r: Range) -> tuple[Interval, ...]:
    """The intervals of a range: one, or the tails of an extreme."""
    return tuple(r) if isinstance(r[0], tuple) else (r,)  # type: ignore[return-value]


def _interval(rng: np.random.Generator, r: Range) -> Interval:
    parts = intervals(r)
    return parts[int(rng.integers(len(parts)))] if len(parts) > 1 else parts[0]


def uniform(rng: np.random.Generator, r: Range) -> float:
    """A value uniform in one of ``r``'s intervals."""
    lo, hi = _interval(rng, r)
    return float(rng.uniform(lo, hi))


def log_uniform(rng: np.random.Generator, r: Range) -> float:
    """A value log-uniform in one of ``r``'s intervals (frequencies span decades)."""
    lo, hi = _interval(rng, r)
    return math.exp(float(rng.uniform(math.log(lo), math.log(hi))))


def integer(rng: np.random.Generator, r: IntRange) -> int:
    """An integer in ``[lo, hi]``, both ends included."""
    return int(rng.integers(r[0], r[1] + 1))


def draw_material(
    rng: np.random.Generator, t: TextureRanges, skin_prob: float | None = None
) -> Material:
    """One procedural material from ``t``. With ``skin_prob`` (0 included) the first draw
    decides whether its palette is skin-toned (``SKIN_HSV``); None makes no such draw, so a
    stream that never had one keeps its order."""
    skin = skin_prob is not None and rng.random() < skin_prob
    palette = tuple(_colour(rng, t, skin) for _ in range(integer(rng, t.colours)))
    tex = Texture(
        kind=str(rng.choice(t.kinds)),
        frequency=log_uniform(rng, t.frequency),
        palette=palette,  # type: ignore[arg-type]
        seed=int(rng.integers(0, 2**24)),
    )
    return Material(tex, specular=uniform(rng, t.specular), shininess=uniform(rng, t.shininess))


def _colour(rng: np.random.Generator, t: TextureRanges, skin: bool) -> tuple[float, ...]:
    if skin:
        hsv = tuple(uniform(rng, r) for r in SKIN_HSV)
    else:
        hsv = (rng.random(), uniform(rng, t.saturation), uniform(rng, t.value))
    return tuple(float(c) for c in colorsys.hsv_to_rgb(*hsv))


def draw_lighting(rng: np.random.Generator, lr: LightingRanges) -> Lighting:
    """One lighting setup from ``lr``."""
    lights = []
    for _ in range(integer(rng, lr.lights)):
        color = tuple(
            float(c) for c in colorsys.hsv_to_rgb(rng.random(), uniform(rng, lr.saturation), 1.0)
        )
        az, el = 2 * math.pi * rng.random(), math.radians(uniform(rng, lr.elevation_deg))
        direction = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        intensity = uniform(rng, lr.intensity)
        if rng.random() < lr.point_prob:
            dist = uniform(rng, (2.5, 6.0))
            pos = tuple(dist * c for c in direction)
            lights.append(Light("point", pos, color, intensity * dist * dist))  # type: ignore[arg-type]
        else:
            lights.append(Light("directional", direction, color, intensity))  # type: ignore[arg-type]
    sky = tuple(
        float(c)
        for c in colorsys.hsv_to_rgb(
            uniform(rng, (0.55, 0.65)), uniform(rng, (0.1, 0.5)), uniform(rng, (0.5, 0.95))
        )
    )
    return Lighting(
        ambient=uniform(rng, lr.ambient),
        ambient_color=sky,  # type: ignore[arg-type]
        lights=tuple(lights),
        sky=sky,  # type: ignore[arg-type]
        exposure=uniform(rng, lr.exposure),
    )


def draw_camera(rng: np.random.Generator, c: CameraRanges, views: int) -> Camera:
    """One camera path of ``views`` frames from ``c``."""
    trajectory = str(rng.choice(c.trajectories))
    span = uniform(rng, c.micro_span_deg if trajectory == "micro" else c.span_deg)
    return Camera(
        trajectory=trajectory,
        views=views,
        fov_deg=uniform(rng, c.fov_deg),
        distance=uniform(rng, c.distance),
        elevation_deg=uniform(rng, c.elevation_deg),
        azimuth_deg=uniform(rng, (-180.0, 180.0)),
        span_deg=span,
        target=(0.0, 0.0, 0.5),
        lookat_jitter=uniform(rng, c.lookat_jitter),
        dolly_frac=uniform(rng, c.dolly_frac),
        controls=5,
        seed=int(rng.integers(0, 2**31)),
    )


class Placer:
    """Ground positions within ``spread`` of the origin that keep clear of what is already
    placed: 20 rejection-sampled tries, then the last try even if it overlaps."""

    def __init__(self, rng: np.random.Generator, spread: float) -> None:
        self.rng, self.spread = rng, spread
        self.placed: list[tuple[float, float, float]] = []

    def spot(self, radius: float) -> tuple[float, float]:
        """A position for a footprint of ``radius``."""
        for _ in range(20):
            r = self.spread * math.sqrt(self.rng.random())
            a = 2 * math.pi * self.rng.random()
            x, y = r * math.cos(a), r * math.sin(a)
            if all(math.hypot(x - px, y - py) > radius + pr for px, py, pr in self.placed):
                break
        self.placed.append((x, y, radius))
        return x, y
