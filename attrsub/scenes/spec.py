"""Procedural scene specs: plain, frozen, JSON-serialisable dataclasses.

A spec holds every number the renderer needs (plus seeds for the procedural parts), so a
rendered dataset is reproducible from its ``spec.json`` alone and two specs with the same
``spec_hash()`` render identical tensors. The scene frame is z-up with the ground at z = 0;
the renderer re-expresses everything in the first camera's frame.

Validation happens in ``__post_init__`` so a bad spec fails when it is built, before any
rendering starts. Numbers are coerced to plain floats and sequences to tuples, so specs built
from numpy draws or from parsed JSON compare and hash the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from attrsub.checks import int_in
from attrsub.errors import ConfigError

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]

TEXTURE_KINDS = ("solid", "checker", "stripes", "noise", "patchwork")
SUB_SHAPES = ("box", "sphere")
LIGHT_KINDS = ("directional", "point")
TRAJECTORIES = ("spline", "orbit", "dolly", "micro")
# Faces a sub-object may sit on: +x, -x, +y, -y, +z (never the bottom, which meets the ground).
FACE_NORMALS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1))
MAX_BUMPS = 4


def _num(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return out


def _vec(value: Any, n: int, name: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
        raise ConfigError(f"{name} must be a sequence of {n} numbers, got {value!r}")
    return tuple(_num(v, f"{name}[{i}]") for i, v in enumerate(value))


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(value: Any, valid: tuple[str, ...], name: str) -> None:
    _check(value in valid, f"{name} {value!r} is not valid; choose one of {valid}")


class _Spec:
    """Shared JSON round trip for every spec dataclass (field types drive ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, numbers and strings, ready for ``json.dumps``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Inverse of ``to_dict``; unknown or missing keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        _check(not unknown, f"{cls.__name__}: unknown keys {unknown}; valid keys are {names}")
        kwargs = {k: _build(hints[k], v) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ConfigError(f"{cls.__name__}: {err}") from None


def _build(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, _Spec):
        return hint.from_dict(value)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, _Spec):
            return tuple(inner.from_dict(v) for v in value)
    return value


@dataclass(frozen=True)
class Texture(_Spec):
    """Procedural albedo, evaluated as a solid (3D) texture in the primitive's local frame.

    ``frequency`` is cycles per scene unit; ``palette`` holds 2-4 linear RGB colours in
    [0, 1] (``solid`` uses the first); ``seed`` drives the hashes of noise and patchwork and
    the stripe direction.
    """

    kind: str = "checker"
    frequency: float = 2.0
    palette: tuple[Vec3, ...] = ((0.8, 0.8, 0.8), (0.2, 0.2, 0.2))
    seed: int = 0

    def __post_init__(self) -> None:
        _choice(self.kind, TEXTURE_KINDS, "texture kind")
        _set(self, "frequency", _num(self.frequency, "texture frequency"))
        _check(
            0.01 <= self.frequency <= 100,
            f"texture frequency must be in [0.01, 100], got {self.frequency}",
        )
        pal = self.palette
        _check(
            hasattr(pal, "__len__") and 2 <= len(pal) <= 4,
            f"texture palette must hold 2-4 RGB colours, got {pal!r}",
        )
        pal = tuple(_vec(c, 3, "palette colour") for c in pal)
        _check(
            all(0 <= x <= 1 for c in pal for x in c),
            f"palette colours must lie in [0, 1], got {pal}",
        )
        _set(self, "palette", pal)
        _set(self, "seed", int_in(self.seed, "texture seed", 0, 2**24 - 1))


@dataclass(frozen=True)
class Material(_Spec):
    """Albedo texture plus Blinn-Phong specular weight and exponent."""

    texture: Texture = field(default_factory=Texture)
    specular: float = 0.1
    shininess: float = 32.0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.texture, Texture),
            f"material texture must be a Texture, got {self.texture!r}",
        )
        _set(self, "specular", _num(self.specular, "specular"))
        _set(self, "shininess", _num(self.shininess, "shininess"))
        _check(0 <= self.specular <= 1, f"specular must be in [0, 1], got {self.specular}")
        _check(1 <= self.shininess <= 512, f"shininess must be in [1, 512], got {self.shininess}")


@dataclass(frozen=True)
class SubObject(_Spec):
    """A small box or sphere attached to one face of its parent box.

    ``face`` indexes FACE_NORMALS in the box frame; ``offset`` places it on that face in
    [-1, 1] face coordinates; ``size`` is the half-size (box) or radius (sphere).
    """

    shape: str = "box"
    face: int = 4
    offset: Vec2 = (0.0, 0.0)
    size: float = 0.2
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        _choice(self.shape, SUB_SHAPES, "sub-object shape")
        _set(self, "face", int_in(self.face, "sub-object face", 0, len(FACE_NORMALS) - 1))
        _set(self, "offset", _vec(self.offset, 2, "sub-object offset"))
        _check(
            all(-1 <= x <= 1 for x in self.offset),
            f"sub-object offset must be in [-1, 1], got {self.offset}",
        )
        _set(self, "size", _num(self.size, "sub-object size"))
        _check(0 < self.size <= 10, f"sub-object size must be in (0, 10], got {self.size}")
        _check(isinstance(self.material, Material), "sub-object material must be a Material")


@dataclass(frozen=True)
class Box(_Spec):
    """An oriented box (yaw about z, degrees) with sub-objects on its faces."""

    center: Vec3 = (0.0, 0.0, 0.5)
    half_size: Vec3 = (0.5, 0.5, 0.5)
    yaw_deg: float = 0.0
    material: Material = field(default_factory=Material)
    subs: tuple[SubObject, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "center", _vec(self.center, 3, "box center"))
        _set(self, "half_size", _vec(self.half_size, 3, "box half_size"))
        _check(
            all(0 < h <= 100 for h in self.half_size),
            f"box half_size must be in (0, 100], got {self.half_size}",
        )
        _set(self, "yaw_deg", _num(self.yaw_deg, "box yaw_deg"))
        _check(isinstance(self.material, Material), "box material must be a Material")
        _set(self, "subs", tuple(self.subs))
        _check(len(self.subs) <= 8, f"a box holds at most 8 sub-objects, got {len(self.subs)}")
        _check(all(isinstance(s, SubObject) for s in self.subs), "box subs must be SubObjects")

    def rotation(self) -> np.ndarray:
        """Scene-from-box rotation (columns are the box axes in the scene frame)."""
        a = math.radians(self.yaw_deg)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def attached(
        self,
    ) -> tuple[
        list[tuple[np.ndarray, np.ndarray, Material]], list[tuple[np.ndarray, float, Material]]
    ]:
        """The sub-objects as scene-frame boxes (center, half, material) and spheres."""
        rot = self.rotation()
        half = np.array(self.half_size)
        boxes: list[tuple[np.ndarray, np.ndarray, Material]] = []
        spheres: list[tuple[np.ndarray, float, Material]] = []
        for sub in self.subs:
            n = np.array(FACE_NORMALS[sub.face], dtype=float)
            axis = int(np.argmax(np.abs(n)))
            tangents = [i for i in range(3) if i != axis]
            local = n * half
            for t, o in zip(tangents, sub.offset, strict=True):
                local[t] = o * max(half[t] - sub.size, 0.0)
            # Sink sub-objects 5% into the face so they read as attached, not floating.
            local = local + n * sub.size * 0.95
            center = np.array(self.center) + rot @ local
            if sub.shape == "box":
                boxes.append((center, np.full(3, sub.size), sub.material))
            else:
                spheres.append((center, sub.size, sub.material))
        return boxes, spheres


@dataclass(frozen=True)
class Sphere(_Spec):
    center: Vec3 = (0.0, 0.0, 0.5)
    radius: float = 0.5
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        _set(self, "center", _vec(self.center, 3, "sphere center"))
        _set(self, "radius", _num(self.radius, "sphere radius"))
        _check(0 < self.radius <= 100, f"sphere radius must be in (0, 100], got {self.radius}")
        _check(isinstance(self.material, Material), "sphere material must be a Material")


@dataclass(frozen=True)
class Cylinder(_Spec):
    """A capped cylinder with a vertical axis; ``center`` is the middle of the axis."""

    center: Vec3 = (0.0, 0.0, 0.5)
    radius: float = 0.3
    half_height: float = 0.5
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        _set(self, "center", _vec(self.center, 3, "cylinder center"))
        _set(self, "radius", _num(self.radius, "cylinder radius"))
        _set(self, "half_height", _num(self.half_height, "cylinder half_height"))
        _check(0 < self.radius <= 100, f"cylinder radius must be in (0, 100], got {self.radius}")
        _check(
            0 < self.half_height <= 100,
            f"cylinder half_height must be in (0, 100], got {self.half_height}",
        )
        _check(isinstance(self.material, Material), "cylinder material must be a Material")


@dataclass(frozen=True)
class HeightField(_Spec):
    """Terrain relief on the ground: z = w(x, y) * (sum of Gaussian bumps + a ripple).

    ``w`` is a window that is 1 at the centre and 0 on the rectangle's border, so the patch
    meets the ground without a seam or an open side. ``bumps`` are (amplitude, x, y, sigma)
    in the scene frame; ``ripple`` is (amplitude, kx, ky, phase) of a*sin(kx x + ky y + phase).
    Where the relief dips below z = 0 the ground hides it.
    """

    center: Vec2 = (0.0, 0.0)
    half_extent: Vec2 = (1.5, 1.5)
    bumps: tuple[tuple[float, float, float, float], ...] = ((0.5, 0.0, 0.0, 0.4),)
    ripple: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        _set(self, "center", _vec(self.center, 2, "heightfield center"))
        _set(self, "half_extent", _vec(self.half_extent, 2, "heightfield half_extent"))
        _check(
            all(0 < h <= 100 for h in self.half_extent),
            f"heightfield half_extent must be in (0, 100], got {self.half_extent}",
        )
        _check(
            hasattr(self.bumps, "__len__") and 1 <= len(self.bumps) <= MAX_BUMPS,
            f"heightfield needs 1-{MAX_BUMPS} bumps, got {self.bumps!r}",
        )
        bumps = tuple(_vec(b, 4, "heightfield bump") for b in self.bumps)
        _check(
            all(0.05 <= b[3] <= 50 for b in bumps), "heightfield bump sigma must be in [0.05, 50]"
        )
        _check(
            all(abs(b[0]) <= 10 for b in bumps), "heightfield bump amplitude must be in [-10, 10]"
        )
        _set(self, "bumps", bumps)
        _set(self, "ripple", _vec(self.ripple, 4, "heightfield ripple"))
        _check(
            abs(self.ripple[0]) <= 2,
            f"heightfield ripple amplitude must be in [-2, 2], got {self.ripple[0]}",
        )
        _check(
            math.hypot(self.ripple[1], self.ripple[2]) <= 20,
            f"heightfield ripple wavenumber must be at most 20, got {self.ripple[1:3]}",
        )
        _check(isinstance(self.material, Material), "heightfield material must be a Material")


@dataclass(frozen=True)
class Ground(_Spec):
    """The finite ground square z = 0, large enough that most camera rays hit it."""

    half_extent: float = 40.0
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        _set(self, "half_extent", _num(self.half_extent, "ground half_extent"))
        _check(
            1 <= self.half_extent <= 1e4,
            f"ground half_extent must be in [1, 1e4], got {self.half_extent}",
        )
        _check(isinstance(self.material, Material), "ground material must be a Material")


@dataclass(frozen=True)
class Light(_Spec):
    """A directional light (``vector`` points from the scene towards the light) or a point light
    (``vector`` is its position; intensity is the irradiance at distance 1)."""

    kind: str = "directional"
    vector: Vec3 = (0.3, -0.4, 0.87)
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 1.0

    def __post_init__(self) -> None:
        _choice(self.kind, LIGHT_KINDS, "light kind")
        _set(self, "vector", _vec(self.vector, 3, "light vector"))
        _check(math.hypot(*self.vector) > 1e-6, f"light vector must be non-zero, got {self.vector}")
        _set(self, "color", _vec(self.color, 3, "light color"))
        _check(
            all(0 <= c <= 1 for c in self.color),
            f"light color must lie in [0, 1], got {self.color}",
        )
        _set(self, "intensity", _num(self.intensity, "light intensity"))
        _check(
            0 <= self.intensity <= 1000,
            f"light intensity must be in [0, 1000], got {self.intensity}",
        )


@dataclass(frozen=True)
class Lighting(_Spec):
    """Ambient (environment) level and colour, 1-3 lights, sky colour, exposure."""

    ambient: float = 0.3
    ambient_color: Vec3 = (1.0, 1.0, 1.0)
    lights: tuple[Light, ...] = (Light(),)
    sky: Vec3 = (0.6, 0.7, 0.9)
    exposure: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "ambient", _num(self.ambient, "ambient"))
        _check(0 <= self.ambient <= 2, f"ambient must be in [0, 2], got {self.ambient}")
        _set(self, "ambient_color", _vec(self.ambient_color, 3, "ambient_color"))
        _check(all(0 <= c <= 1 for c in self.ambient_color), "ambient_color must lie in [0, 1]")
        _set(self, "lights", tuple(self.lights))
        _check(1 <= len(self.lights) <= 3, f"lighting needs 1-3 lights, got {len(self.lights)}")
        _check(all(isinstance(x, Light) for x in self.lights), "lights must be Light specs")
        _set(self, "sky", _vec(self.sky, 3, "sky"))
        _check(all(0 <= c <= 1 for c in self.sky), f"sky must lie in [0, 1], got {self.sky}")
        _set(self, "exposure", _num(self.exposure, "exposure"))
        _check(0.05 <= self.exposure <= 20, f"exposure must be in [0.05, 20], got {self.exposure}")


@dataclass(frozen=True)
class Camera(_Spec):
    """A camera trajectory family and its parameters (angles in degrees).

    - ``spline``: Catmull-Rom spline through ``controls`` random points on the sphere of radius
      ``distance`` around ``target`` (elevations within ``elevation_deg`` +- ``span_deg``/4,
      azimuths within ``azimuth_deg`` +- ``span_deg``/2), as the paper's spline paths.
    - ``orbit``: an arc of ``span_deg`` degrees of azimuth at fixed elevation and distance.
    - ``dolly``: moves straight towards the target from ``distance`` to
      ``distance * (1 - dolly_frac)``.
    - ``micro``: rotations of at most ``span_deg`` about the look-at point (a hand-held
      micro-baseline capture, e.g. +-5 degrees for a print attack).

    Every view looks at ``target`` plus a Gaussian jitter of std ``lookat_jitter`` (scene
    units) drawn from ``seed``; the first view is never jittered so framing is stable.
    """

    trajectory: str = "spline"
    views: int = 4
    fov_deg: float = 60.0
    distance: float = 6.0
    elevation_deg: float = 30.0
    azimuth_deg: float = 0.0
    span_deg: float = 90.0
    target: Vec3 = (0.0, 0.0, 0.5)
    lookat_jitter: float = 0.1
    dolly_frac: float = 0.3
    controls: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _choice(self.trajectory, TRAJECTORIES, "camera trajectory")
        _set(self, "views", int_in(self.views, "camera views", 1, 1024))
        for name, lo, hi in (
            ("fov_deg", 10.0, 120.0),
            ("distance", 0.5, 1000.0),
            ("elevation_deg", -80.0, 85.0),
            ("azimuth_deg", -360.0, 360.0),
            ("span_deg", 0.0, 360.0),
            ("lookat_jitter", 0.0, 10.0),
            ("dolly_frac", 0.0, 0.9),
        ):
            value = _num(getattr(self, name), f"camera {name}")
            _check(lo <= value <= hi, f"camera {name} must be in [{lo}, {hi}], got {value}")
            _set(self, name, value)
        _set(self, "target", _vec(self.target, 3, "camera target"))
        _set(self, "controls", int_in(self.controls, "camera controls", 2, 64))
        _set(self, "seed", int_in(self.seed, "camera seed", 0, 2**31 - 1))

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera-from-scene rotations [V,3,3] and camera centres [V,3] (float64, OpenCV)."""
        rng = np.random.default_rng([self.seed, 0xCA4E7A])
        v = self.views
        s = np.linspace(0.0, 1.0, v) if v > 1 else np.zeros(1)
        az0, el0, span = (
            math.radians(self.azimuth_deg),
            math.radians(self.elevation_deg),
            math.radians(self.span_deg),
        )
        if self.trajectory == "spline":
            az = az0 + span * (rng.random(self.controls) - 0.5)
            el = el0 + span / 4 * (rng.random(self.controls) - 0.5)
            ctrl = _on_sphere(az, np.clip(el, math.radians(3), math.radians(85)), self.distance)
            eyes = _catmull_rom(ctrl, s)
        elif self.trajectory == "orbit":
            eyes = _on_sphere(az0 + span * (s - 0.5), np.full(v, el0), self.distance)
        elif self.trajectory == "dolly":
            dist = self.distance * (1.0 - self.dolly_frac * s)
            eyes = _on_sphere(np.full(v, az0), np.full(v, el0), 1.0) * dist[:, None]
        else:
            off = span * (rng.random((v, 2)) * 2 - 1)
            off[0] = 0.0
            eyes = _on_sphere(az0 + off[:, 0], np.clip(el0 + off[:, 1], -1.4, 1.48), self.distance)
        target = np.array(self.target)
        eyes = eyes + target
        looks = (
            target + self.lookat_jitter * rng.standard_normal((v, 3)) * (np.arange(v) > 0)[:, None]
        )
        rots = np.stack([_look_at(e, t) for e, t in zip(eyes, looks, strict=True)])
        return rots, eyes


def _on_sphere(az: np.ndarray, el: np.ndarray, radius: float) -> np.ndarray:
    return radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


def _catmull_rom(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom through ``points`` at parameters s in [0, 1]."""
    p = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    segs = len(points) - 1
    x = np.clip(s, 0, 1) * segs
    i = np.minimum(x.astype(int), segs - 1)
    u = (x - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * (
        2 * p1
        + (p2 - p0) * u
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
        + (3 * p1 - p0 - 3 * p2 + p3) * u**3
    )


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-from-scene rotation (rows: right, down, forward) with z-up scenes."""
    f = target - eye
    f = f / np.linalg.norm(f)
    up = np.array([0.0, 0.0, 1.0]) if abs(f[2]) < 0.999 else np.array([0.0, 1.0, 0.0])
    r = np.cross(f, up)
    r = r / np.linalg.norm(r)
    return np.stack([r, np.cross(f, r), f])


@dataclass(frozen=True)
class SceneSpec(_Spec):
    """One scene: geometry, materials, lighting and the camera trajectory that views it."""

    ground: Ground = field(default_factory=Ground)
    boxes: tuple[Box, ...] = ()
    spheres: tuple[Sphere, ...] = ()
    cylinders: tuple[Cylinder, ...] = ()
    heightfields: tuple[HeightField, ...] = ()
    lighting: Lighting = field(default_factory=Lighting)
    camera: Camera = field(default_factory=Camera)

    MAX_PRIMITIVES: ClassVar[int] = 64

    def __post_init__(self) -> None:
        _check(isinstance(self.ground, Ground), "scene ground must be a Ground")
        for name, kind in (
            ("boxes", Box),
            ("spheres", Sphere),
            ("cylinders", Cylinder),
            ("heightfields", HeightField),
        ):
            items = tuple(getattr(self, name))
            _check(
                all(isinstance(x, kind) for x in items),
                f"scene {name} must hold {kind.__name__} specs",
            )
            _set(self, name, items)
        n = self.primitive_count()
        _check(
            n <= self.MAX_PRIMITIVES,
            f"scene has {n} primitives; at most {self.MAX_PRIMITIVES} are allowed",
        )
        _check(isinstance(self.lighting, Lighting), "scene lighting must be a Lighting")
        _check(isinstance(self.camera, Camera), "scene camera must be a Camera")

    @property
    def views(self) -> int:
        return self.camera.views

    def primitive_count(self) -> int:
        """Primitives besides the ground, sub-objects included."""
        subs = sum(len(b.subs) for b in self.boxes)
        return (
            len(self.boxes)
            + subs
            + len(self.spheres)
            + len(self.cylinders)
            + len(self.heightfields)
        )

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no spaces): equal specs, equal hash."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
