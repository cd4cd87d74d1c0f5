"""Each factor family varies its attribute and holds every other one fixed within a group."""

from __future__ import annotations

import json

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.factors import ALL, BROAD, FACTORS, NARROW, FactorSpec, sample_scenes
from attrsub.render import render
from attrsub.scene import Material, SceneSpec

SIZE = 28
SCENES, VIEWS = 3, 2


@pytest.fixture(scope="module")
def families() -> dict[str, dict[str, torch.Tensor]]:
    return {
        f: render(sample_scenes(FactorSpec(f, scenes=SCENES, views=VIEWS, seed=1)), SIZE)
        for f in FACTORS
    }


def _same(x: torch.Tensor) -> bool:
    """All scenes (axis 0) of a group hold the identical tensor."""
    return all(torch.equal(x[0], x[i]) for i in range(1, x.shape[0]))


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


def test_texture_family(families: dict[str, dict[str, torch.Tensor]]) -> None:
    out = families["texture"]
    for key in ("depths", "world_points", "normals", "valid", "extrinsics", "intrinsics"):
        assert _same(out[key]), key
    assert _all_differ(out["images"]) and _all_differ(out["albedo"])


def test_lighting_family(families: dict[str, dict[str, torch.Tensor]]) -> None:
    out = families["lighting"]
    for key in ("depths", "world_points", "normals", "valid", "extrinsics", "intrinsics", "albedo"):
        assert _same(out[key]), key
    assert _all_differ(out["images"])
    scenes = sample_scenes(FactorSpec("lighting", scenes=SCENES, views=VIEWS, seed=1))
    assert len({s.lighting for s in scenes}) == SCENES


def test_camera_family(families: dict[str, dict[str, torch.Tensor]]) -> None:
    out = families["camera"]
    assert _all_differ(out["extrinsics"][:, 1:])
    scenes = sample_scenes(FactorSpec("camera", scenes=8, views=VIEWS, seed=1))
    assert len({_geometry(s) for s in scenes}) == 1
    assert len({tuple(_materials(s)) for s in scenes}) == 1
    assert len({s.lighting for s in scenes}) == 1
    cams = [s.camera for s in scenes]
    assert len({c.trajectory for c in cams}) > 1
    assert max(c.distance for c in cams) - min(c.distance for c in cams) > 2.0
    assert max(c.lookat_jitter for c in cams) > 0.3


def test_geometry_family(families: dict[str, dict[str, torch.Tensor]]) -> None:
    out = families["geometry"]
    assert _all_differ(out["depths"])
    for key in ("extrinsics", "intrinsics"):
        assert _same(out[key]), key
    scenes = sample_scenes(FactorSpec("geometry", scenes=SCENES, views=VIEWS, seed=1))
    assert len({_geometry(s) for s in scenes}) == SCENES
    assert len({s.lighting for s in scenes}) == 1
    assert len({s.camera for s in scenes}) == 1
    # Material slots are shared, so the i-th primitive of every scene has the same texture.
    mats = [_materials(s) for s in scenes]
    n = min(len(m) for m in mats)
    assert all(m[:n] == mats[0][:n] for m in mats)


def test_narrow_inside_broad() -> None:
    for attr in FACTORS:
        broad, narrow = getattr(BROAD, attr), getattr(NARROW, attr)
        for name, value in vars(narrow).items():
            wide = vars(broad)[name]
            if isinstance(value, tuple) and isinstance(value[0], str):
                assert set(value) <= set(wide), (attr, name)
            elif isinstance(value, tuple):
                assert wide[0] <= value[0] <= value[1] <= wide[1], (attr, name)


def test_groups_and_seeds_change_the_base() -> None:
    g0 = sample_scenes(FactorSpec("texture", group=0, scenes=2, views=2))
    g1 = sample_scenes(FactorSpec("texture", group=1, scenes=2, views=2))
    assert _geometry(g0[0]) != _geometry(g1[0])
    assert g0[0].camera != g1[0].camera


def test_deterministic() -> None:
    for factor in (*FACTORS, ALL):
        spec = FactorSpec(factor, group=2, scenes=3, views=3, seed=7)
        a, b = sample_scenes(spec), sample_scenes(spec)
        assert [s.spec_hash() for s in a] == [s.spec_hash() for s in b]
        assert all(s.views == 3 for s in a)


def test_all_varies_everything() -> None:
    scenes = sample_scenes(FactorSpec(ALL, scenes=4, views=2, seed=0))
    assert len({_geometry(s) for s in scenes}) == 4
    assert len({s.lighting for s in scenes}) == 4
    assert len({s.camera for s in scenes}) == 4
    assert len({tuple(_materials(s)) for s in scenes}) == 4


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
    for name in (*FACTORS, ALL):
        assert name in str(err.value)
