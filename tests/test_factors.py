"""Each factor family pushes its factor to extremes outside the canonical world and draws
every other factor per scene from the canonical ranges."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.scenes.draw import intervals
from attrsub.scenes.factors import (
    CANONICAL,
    CANONICAL_RANGES,
    EXTREMES,
    FACTORS,
    FactorSpec,
    sample_scenes,
)
from attrsub.scenes.render import render
from attrsub.scenes.spec import Material, SceneSpec

SIZE = 28
SCENES, VIEWS = 3, 2


@pytest.fixture(scope="module")
def families() -> dict[str, dict[str, torch.Tensor]]:
    return {
        f: render(sample_scenes(FactorSpec(f, scenes=SCENES, views=VIEWS, seed=1)), SIZE)
        for f in FACTORS
    }


def _all_differ(x: torch.Tensor) -> bool:
    return all(not torch.equal(x[i], x[j]) for i in range(x.shape[0]) for j in range(i))


def _geometry(scene: object) -> str:
    """The geometric layout of a scene, materials stripped, as canonical JSON."""

    def shape(p: object) -> dict:
        d = p.to_dict()  # type: ignore[attr-defined]
        d.pop("material")
        for s in d.get("subs", []):
            s.pop("material")
        return d

    kinds = ("boxes", "spheres", "cylinders", "heightfields")
    return json.dumps([shape(p) for kind in kinds for p in getattr(scene, kind)], sort_keys=True)


def _materials(scene: SceneSpec) -> list[Material]:
    """Materials in the order the sampler fills its slots."""
    out = [scene.ground.material] + [h.material for h in scene.heightfields]
    for box in scene.boxes:
        out += [box.material] + [s.material for s in box.subs]
    return out + [p.material for p in (*scene.spheres, *scene.cylinders)]


def _inside(value: float, r: object, tol: float = 1e-9) -> bool:
    return any(lo - tol <= value <= hi + tol for lo, hi in intervals(r))  # type: ignore[arg-type]


def _draws(scene: SceneSpec) -> dict[str, dict[str, list[float]]]:
    """The drawn values of each factor's numeric parameters in one scene."""
    mats = _materials(scene)
    cam, lit = scene.camera, scene.lighting
    return {
        "texture": {
            "frequency": [m.texture.frequency for m in mats if m.texture.kind != "solid"],
            "specular": [m.specular for m in mats],
            "shininess": [m.shininess for m in mats],
        },
        "geometry": {
            "sphere_radius": [s.radius for s in scene.spheres],
            "cylinder_radius": [c.radius for c in scene.cylinders],
            "cylinder_half_height": [c.half_height for c in scene.cylinders],
        },
        "camera": {
            "fov_deg": [cam.fov_deg],
            "distance": [cam.distance],
            "elevation_deg": [cam.elevation_deg],
            "lookat_jitter": [cam.lookat_jitter],
        },
        "lighting": {
            "ambient": [lit.ambient],
            "exposure": [lit.exposure],
            "intensity": [x.intensity for x in lit.lights if x.kind == "directional"],
        },
    }


@pytest.mark.parametrize("factor", FACTORS)
def test_family_draws_target_extreme_and_the_rest_canonical(factor: str) -> None:
    scenes = sample_scenes(FactorSpec(factor, scenes=12, views=2, seed=3))
    for scene in scenes:
        for axis, params in _draws(scene).items():
            ranges = EXTREMES if axis == factor else CANONICAL_RANGES
            for name, values in params.items():
                for v in values:
                    assert _inside(v, getattr(getattr(ranges, axis), name)), (factor, axis, name, v)
    kinds = {m.texture.kind for s in scenes for m in _materials(s)}
    want = EXTREMES if factor == "texture" else CANONICAL_RANGES
    assert kinds <= set(want.texture.kinds)
    trajectories = {s.camera.trajectory for s in scenes}
    want = EXTREMES if factor == "camera" else CANONICAL_RANGES
    assert trajectories <= set(want.camera.trajectories)


@pytest.mark.parametrize("factor", FACTORS)
def test_non_target_factors_vary_per_scene(factor: str) -> None:
    """Nothing is held fixed: an adapter cannot learn a group's fixed values of the others."""
    scenes = sample_scenes(FactorSpec(factor, scenes=6, views=2, seed=1))
    assert len({_geometry(s) for s in scenes}) == 6
    assert len({s.lighting for s in scenes}) == 6
    assert len({s.camera for s in scenes}) == 6
    assert len({tuple(_materials(s)) for s in scenes}) == 6


def test_extremes_lie_outside_the_canonical_world() -> None:
    """Every numeric extreme that differs from canonical lies outside it (each tail's middle
    beyond the canonical interval), and each family's kinds include ones the base never saw."""
    differing = 0
    for axis in FACTORS:
        ext, can = getattr(EXTREMES, axis), getattr(CANONICAL_RANGES, axis)
        for f in fields(ext):
            e, c = getattr(ext, f.name), getattr(can, f.name)
            if e == c:
                continue
            differing += 1
            if isinstance(e, tuple) and isinstance(e[0], str):
                assert set(e) - set(c), (axis, f.name)
            elif isinstance(e, float):
                assert e > c, (axis, f.name)
            else:
                (lo, hi), = intervals(c)
                for a, b in intervals(e):
                    mid = (a + b) / 2
                    assert not lo < mid < hi, (axis, f.name, (a, b), (lo, hi))
    assert differing >= 20


def test_families_render_their_extremes(families: dict[str, dict[str, torch.Tensor]]) -> None:
    """Lighting extremes darken or blow out the image more than canonical lighting does."""
    canonical = render(sample_scenes(FactorSpec(CANONICAL, scenes=8, views=2, seed=1)), SIZE)
    lit = render(sample_scenes(FactorSpec("lighting", scenes=8, views=2, seed=1)), SIZE)
    spread = lambda x: float(x["images"].mean(dim=(1, 2, 3, 4)).std())  # noqa: E731
    assert spread(lit) > spread(canonical)
    for f, out in families.items():
        assert torch.isfinite(out["depths"]).all(), f
        assert _all_differ(out["images"]), f
        assert math.isfinite(float(out["images"].mean()))


def test_groups_and_seeds_change_the_base() -> None:
    g0 = sample_scenes(FactorSpec("texture", group=0, scenes=2, views=2))
    g1 = sample_scenes(FactorSpec("texture", group=1, scenes=2, views=2))
    assert _geometry(g0[0]) != _geometry(g1[0])
    assert g0[0].camera != g1[0].camera
    s1 = sample_scenes(FactorSpec("texture", group=0, seed=1, scenes=2, views=2))
    assert s1[0].spec_hash() != g0[0].spec_hash()


def test_deterministic() -> None:
    for factor in (*FACTORS, CANONICAL):
        spec = FactorSpec(factor, group=2, scenes=3, views=3, seed=7)
        a, b = sample_scenes(spec), sample_scenes(spec)
        assert [s.spec_hash() for s in a] == [s.spec_hash() for s in b]
        assert all(s.views == 3 for s in a)


def test_canonical_draws_everything_canonically() -> None:
    scenes = sample_scenes(FactorSpec(CANONICAL, scenes=6, views=2, seed=0))
    for scene in scenes:
        for axis, params in _draws(scene).items():
            for name, values in params.items():
                ranges = getattr(CANONICAL_RANGES, axis)
                assert all(_inside(v, getattr(ranges, name)) for v in values), (axis, name)
    assert len({_geometry(s) for s in scenes}) == 6
    assert len({s.lighting for s in scenes}) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factor": "colour"}, "unknown factor 'colour'"),
        ({"factor": "texture", "scenes": 0}, "scenes"),
        ({"factor": "texture", "views": 0}, "views"),
        ({"factor": "texture", "group": -1}, "group"),
        ({"factor": "texture", "seed": 1.5}, "seed"),
    ],
)
def test_bad_factor_spec(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FactorSpec(**kwargs)


def test_unknown_factor_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        FactorSpec("shape")
    for name in (*FACTORS, CANONICAL):
        assert name in str(err.value)
