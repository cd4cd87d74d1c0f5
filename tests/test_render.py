"""The renderer's ground truth is exact and self-consistent, and its inputs are checked."""

from __future__ import annotations

import json

import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.scenes.factors import FactorSpec, sample_scenes
from attrsub.scenes.render import OUTPUT_KEYS, render
from attrsub.scenes.spec import (
    Box,
    Camera,
    Cylinder,
    HeightField,
    Light,
    Lighting,
    Material,
    SceneSpec,
    Sphere,
    SubObject,
    Texture,
)

SIZE = 28


def _scene(trajectory: str = "spline", views: int = 3) -> SceneSpec:
    """Every primitive type, every texture kind, a point and a directional light."""
    kinds = ("checker", "stripes", "noise", "patchwork", "solid")
    pal = ((0.9, 0.2, 0.1), (0.1, 0.3, 0.9), (0.9, 0.9, 0.2))
    mat = [
        Material(Texture(kind=k, frequency=3.0, palette=pal, seed=i)) for i, k in enumerate(kinds)
    ]
    return SceneSpec(
        boxes=(
            Box(
                (0.5, 0.3, 0.5),
                (0.5, 0.4, 0.5),
                30.0,
                mat[3],
                (
                    SubObject("sphere", 4, (0.2, 0.1), 0.2, mat[2]),
                    SubObject("box", 0, (0.0, 0.0), 0.15, mat[4]),
                ),
            ),
        ),
        spheres=(Sphere((-1.0, 0.5, 0.4), 0.4, mat[1]),),
        cylinders=(Cylinder((0.3, -1.2, 0.6), 0.3, 0.6, mat[2]),),
        heightfields=(
            HeightField(
                (-0.8, -1.0), (1.2, 1.2), ((0.6, -0.8, -1.0, 0.4),), (0.05, 3.0, 1.0, 0.0), mat[0]
            ),
        ),
        lighting=Lighting(lights=(Light(), Light("point", (2.0, 2.0, 3.0), (1.0, 0.8, 0.6), 8.0))),
        camera=Camera(trajectory=trajectory, views=views, distance=4.5, seed=1, lookat_jitter=0.2),
    )


@pytest.fixture(scope="module")
def rendered() -> tuple[list[SceneSpec], dict[str, torch.Tensor]]:
    specs = [_scene(t) for t in ("spline", "orbit", "dolly", "micro")]
    specs += sample_scenes(FactorSpec("canonical", scenes=2, views=3, seed=5))
    return specs, render(specs, SIZE)


def test_shapes_and_dtypes(rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]]) -> None:
    specs, out = rendered
    b, v = len(specs), 3
    assert set(out) == set(OUTPUT_KEYS)
    assert out["images"].shape == (b, v, 3, SIZE, SIZE)
    assert out["albedo"].shape == (b, v, 3, SIZE, SIZE)
    assert out["depths"].shape == (b, v, SIZE, SIZE)
    assert out["world_points"].shape == (b, v, SIZE, SIZE, 3)
    assert out["normals"].shape == (b, v, SIZE, SIZE, 3)
    assert out["valid"].dtype == torch.bool
    assert out["extrinsics"].shape == (b, v, 3, 4)
    assert out["intrinsics"].shape == (b, v, 3, 3)
    for key in OUTPUT_KEYS:
        if key != "valid":
            assert out[key].dtype == torch.float32, key
            assert torch.isfinite(out[key]).all(), key
    assert out["images"].min() >= 0 and out["images"].max() <= 1
    assert out["valid"].float().mean() > 0.6  # scenes are framed so most rays hit


def test_reprojection_hits_pixel_centres(
    rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]],
) -> None:
    _, out = rendered
    x = out["world_points"].double()
    ext, k = out["extrinsics"].double(), out["intrinsics"].double()
    cam = torch.einsum("bvij,bvhwj->bvhwi", ext[..., :3], x) + ext[..., None, None, :, 3]
    uvw = torch.einsum("bvij,bvhwj->bvhwi", k, cam)
    u, v = uvw[..., 0] / uvw[..., 2], uvw[..., 1] / uvw[..., 2]
    centre = torch.arange(SIZE, dtype=torch.float64) + 0.5
    valid = out["valid"]
    depth = out["depths"].double()
    assert ((u - centre) / centre).abs()[valid].max() < 1e-4
    assert ((v - centre[:, None]) / centre[:, None]).abs()[valid].max() < 1e-4
    assert ((cam[..., 2] - depth) / depth).abs()[valid].max() < 1e-4
    assert (depth[valid] > 0).all()
    assert (depth[~valid] == 0).all() and (out["world_points"][~valid] == 0).all()


def test_intrinsics_are_centred_pinholes(
    rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]],
) -> None:
    specs, out = rendered
    k = out["intrinsics"]
    assert torch.all(k[..., 0, 2] == SIZE / 2) and torch.all(k[..., 1, 2] == SIZE / 2)
    assert torch.equal(k[..., 0, 0], k[..., 1, 1])
    fov = torch.tensor([s.camera.fov_deg for s in specs])
    expect = SIZE / 2 / torch.tan(torch.deg2rad(fov) / 2)
    torch.testing.assert_close(k[:, 0, 0, 0], expect, rtol=1e-5, atol=0)


def test_extrinsics_are_relative_rigid_motions(
    rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]],
) -> None:
    _, out = rendered
    ext = out["extrinsics"].double()
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.equal(
        ext[:, 0], torch.cat([eye, torch.zeros(3, 1, dtype=torch.float64)], 1).expand_as(ext[:, 0])
    )
    rot = ext[..., :3]
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye.expand_as(rot), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.linalg.det(rot), torch.ones(rot.shape[:2], dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_normals_unit_and_facing_the_camera(
    rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]],
) -> None:
    _, out = rendered
    n, valid = out["normals"], out["valid"]
    torch.testing.assert_close(
        n[valid].norm(dim=-1), torch.ones(int(valid.sum())), atol=1e-5, rtol=0
    )
    assert (n[~valid] == 0).all()
    # A visible surface faces the camera that sees it: n . (point - camera centre) <= 0.
    ext = out["extrinsics"]
    rot, t = ext[..., :3], ext[..., 3]
    centre = -(rot.transpose(-1, -2) @ t[..., None])[..., 0]
    view = out["world_points"] - centre[:, :, None, None, :]
    assert ((n * view).sum(-1)[valid] <= 1e-4).all()


def test_albedo_is_zero_off_surface(
    rendered: tuple[list[SceneSpec], dict[str, torch.Tensor]],
) -> None:
    _, out = rendered
    valid = out["valid"][:, :, None].expand_as(out["albedo"])
    assert (out["albedo"][~valid] == 0).all()
    assert out["albedo"].min() >= 0 and out["albedo"].max() <= 1


@pytest.mark.parametrize("size", [SIZE, 112])
def test_heightfield_points_lie_on_the_surface(size: int) -> None:
    """A top-down view of a lone relief: every hit's z equals the analytic height there (to
    float precision: the refinement runs until each ray's Newton step is below it)."""
    field = HeightField(
        (0.0, 0.0),
        (2.0, 2.0),
        ((0.8, 0.2, -0.1, 0.5), (0.4, -0.6, 0.5, 0.3)),
        (0.05, 2.0, 1.0, 0.3),
    )
    cam = Camera(
        trajectory="orbit",
        views=2,
        distance=3.0,
        elevation_deg=60.0,
        fov_deg=50.0,
        span_deg=20.0,
        lookat_jitter=0.0,
    )
    spec = SceneSpec(heightfields=(field,), camera=cam)
    out = render([spec], size)
    rot, eye = cam.poses()
    r0, e0 = torch.tensor(rot[0]), torch.tensor(eye[0])
    pts = out["world_points"][0].double()[out["valid"][0]] @ r0 + e0  # back to the z-up scene frame
    x, y, z = pts.unbind(-1)
    u, v = x / 2.0, y / 2.0
    h = sum(
        a * torch.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
        for a, bx, by, s in field.bumps
    )
    h = ((1 - u * u) * (1 - v * v)) ** 2 * (h + 0.05 * torch.sin(2.0 * x + 1.0 * y + 0.3))
    on_field = (z > 1e-3) & (u.abs() < 1) & (v.abs() < 1)
    assert on_field.sum() > 50
    assert (z - h)[on_field].abs().max() < 1e-5


def test_deterministic_and_batch_independent() -> None:
    specs = sample_scenes(FactorSpec("canonical", scenes=2, views=2, seed=3))
    first = render(specs, SIZE)
    again = render(specs, SIZE, chunk=1000)
    alone = render(specs[1:], SIZE)
    twice = render(specs, SIZE)
    for key in OUTPUT_KEYS:
        assert torch.equal(first[key], twice[key]), key
        # Chunking and batching change only float rounding (matmul blocking), not hits.
        assert torch.equal(first["valid"], again["valid"])
        torch.testing.assert_close(first[key], again[key], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(first[key][1:], alone[key], atol=1e-4, rtol=1e-4)


def test_spec_json_round_trip() -> None:
    spec = _scene()
    data = json.loads(json.dumps(spec.to_dict()))
    back = SceneSpec.from_dict(data)
    assert back == spec
    assert back.spec_hash() == spec.spec_hash()
    assert _scene("orbit").spec_hash() != spec.spec_hash()
    with pytest.raises(ConfigError, match="unknown keys"):
        SceneSpec.from_dict({**data, "colour": 1})


@pytest.mark.parametrize("size", [0, -14, 20, 27, 14.0, True])
def test_bad_size_rejected(size: object) -> None:
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        render([_scene()], size)  # type: ignore[arg-type]


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        render([], SIZE)
    with pytest.raises(ConfigError, match="same number of views"):
        render([_scene(views=2), _scene(views=3)], SIZE)
    with pytest.raises(ConfigError, match="SceneSpec"):
        render([{"boxes": []}], SIZE)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="chunk"):
        render([_scene()], SIZE, chunk=0)
    with pytest.raises(ConfigError, match="compiled"):
        render([_scene()], SIZE, compiled="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Camera(trajectory="helix"), "trajectory"),
        (lambda: Camera(views=0), "views"),
        (lambda: Camera(fov_deg=170.0), "fov_deg"),
        (lambda: Texture(kind="plaid"), "texture kind"),
        (lambda: Texture(palette=((1.0, 0.0, 0.0),)), "2-4 RGB"),
        (lambda: Texture(palette=((2.0, 0.0, 0.0), (0.0, 0.0, 0.0))), r"\[0, 1\]"),
        (lambda: Lighting(lights=()), "1-3 lights"),
        (lambda: Light(kind="spot"), "light kind"),
        (lambda: Sphere(radius=-1.0), "radius"),
        (lambda: Box(half_size=(1.0, 0.0, 1.0)), "half_size"),
        (lambda: SubObject(face=5), "face"),
        (lambda: HeightField(bumps=()), "bumps"),
    ],
)
def test_bad_specs_rejected(build: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()  # type: ignore[operator]


def test_culling_matches_brute_force() -> None:
    """Per-tile culling only skips primitives a ray cannot hit: same hits as every ray vs
    every primitive, images equal to float rounding."""
    from attrsub.scenes import render as R
    specs = [_scene("orbit", views=2)]
    for family in ("geometry", "lighting", "texture", "camera", "canonical"):
        specs += sample_scenes(FactorSpec(family, scenes=2, views=2, seed=11))
    with torch.no_grad():
        sc = R._pack(specs, torch.device("cpu"))
        culled = R._render(sc, SIZE, 131072)
        brute = R._render(sc, SIZE, 131072, cull=False)
        # Narrow ray groups aimed at random spots near the objects: closest hit and type/index.
        gen = torch.Generator().manual_seed(0)
        group, n_g = R.TILE * R.TILE, 24
        target = torch.rand(len(specs), n_g, 1, 3, generator=gen) * torch.tensor([3.0, 3.0, 1.2])
        target = target - torch.tensor([1.5, 1.5, 0.0])
        target = target + 0.05 * torch.randn(len(specs), n_g, group, 3, generator=gen)
        o = sc.eye[:, :1, None].expand(-1, n_g, group, -1).reshape(len(specs), -1, 3)
        d = torch.nn.functional.normalize(target.reshape(len(specs), -1, 3) - o, dim=-1)
        hits = R._trace(sc, o, d)
        hits_brute = R._trace(sc, o, d, cull=False)
    assert torch.equal(culled["valid"], brute["valid"])
    for got, want in zip(hits, hits_brute, strict=True):
        assert torch.equal(got, want)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(culled[key], brute[key], atol=1e-5, rtol=0)


def test_relief_bound_keeps_every_crossing() -> None:
    """Height-field marching starts and stops where a per-ray bound on the relief says the ray
    is above it: densely sampled, the exact surface is below the ray everywhere cut off."""
    from attrsub.scenes import render as R
    gen = torch.Generator().manual_seed(3)
    k = 4000
    field = HeightField(
        (0.2, -0.1),
        (1.5, 1.2),
        ((0.9, 0.3, -0.2, 0.35), (-0.4, -0.5, 0.4, 0.5), (0.5, 0.8, 0.6, 0.2)),
        (0.08, 4.0, -3.0, 0.7),
    )
    row = torch.tensor(R._hf_params(field), dtype=torch.float32)
    params = torch.cat([row[: 4 + 4 * 3], row[4 + 4 * R.MAX_BUMPS :]])[None].expand(k, -1)
    o = torch.rand(k, 3, generator=gen) * torch.tensor([4.0, 4.0, 1.5]) - torch.tensor(
        [2.0, 2.0, 0.0]
    )
    d = torch.nn.functional.normalize(torch.randn(k, 3, generator=gen), dim=-1)
    t0 = torch.zeros(k)
    t1 = torch.full((k,), 4.0)
    # The kernels take component-first rays [3,K] and parameter columns [W,K].
    c0, c1 = R._clip_to_relief(o.T, d.T, params.T, t0, t1)
    ts = torch.linspace(0, 4.0, 2001)[None].expand(k, -1)
    x, y, z = (o[:, i, None] + ts * d[:, i, None] for i in range(3))
    g = z - R._height(params.T[..., None], x, y)[0]
    outside = (ts < c0[:, None]) | (ts > c1[:, None]) | (c0 >= c1)[:, None]
    assert outside.float().mean() > 0.3  # the bound does cut
    assert (g[outside] > 0).all()


def test_value_noise_matches_the_int64_lattice_hash() -> None:
    """The int32 noise kernel (wrapping multiplies, masked shifts) gives the values of the
    int64 reference hash: top 24 bits per lattice corner, trilinear with a smoothstep fade."""
    from attrsub.scenes import render as R
    gen = torch.Generator().manual_seed(7)
    k = 5000
    x = (torch.rand(3, k, generator=gen) - 0.5) * 400
    seed = torch.randint(0, 2**40, (k,), generator=gen)
    got = R._value_noise(x, seed).double()
    cell = torch.floor(x).long()
    f = x.double() - cell
    f = f * f * (3 - 2 * f)
    want = torch.zeros(k, dtype=torch.float64)
    for corner in range(8):
        off = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
        c = [cell[i] + off[i] for i in range(3)]
        value = ((R._hash(*c, seed) >> 8) & 0xFFFFFF).double() / 2**24
        weight = torch.ones(k, dtype=torch.float64)
        for i in range(3):
            weight = weight * (f[i] if off[i] else 1 - f[i])
        want += weight * value
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_ground_hits_lie_exactly_on_the_plane() -> None:
    """Ground hits get z = 0 exactly (their checker cell cannot flip on z rounding)."""
    from attrsub.scenes import render as R
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sc = R._pack([_scene()], torch.device("cpu"))
        n = R.TILE * R.TILE * 8
        o = torch.tensor([0.3, -0.2, 2.5]).expand(1, n, 3)
        d = torch.nn.functional.normalize(
            torch.randn(1, n, 3, generator=gen) * 0.6 + torch.tensor([0.0, 0.0, -1.0]), dim=-1
        )
        t, kind, idx = R._trace(sc, o, d)
        hit = torch.isfinite(t)
        _, p, _, _, _ = R._surface(
            sc, o.permute(2, 0, 1), d.permute(2, 0, 1), torch.where(hit, t, 0.0), kind, idx
        )
    ground = hit & (kind == R.GROUND)
    assert ground.sum() > 50
    assert (p[2][ground] == 0).all()


@pytest.mark.slow
def test_compiled_render_matches_eager() -> None:
    """``compiled=True`` (torch.compile of the kernels, the fast path bench/render.py times)
    hits the same surfaces and shades them alike, up to float rounding."""
    specs = [_scene(), *sample_scenes(FactorSpec("lighting", scenes=2, views=3, seed=0))]
    eager = render(specs, SIZE)
    fused = render(specs, SIZE, compiled=True)
    mismatch = (eager["valid"] != fused["valid"]).float().mean()
    assert mismatch < 1e-3  # a grazing ray may flip; no surface may move
    both = eager["valid"] & fused["valid"]
    torch.testing.assert_close(fused["depths"][both], eager["depths"][both], rtol=1e-5, atol=0)
    close = (fused["images"] - eager["images"]).abs().amax(2) < 1e-3
    assert close.float().mean() > 0.999  # a shadow edge pixel may flip
    for key in ("extrinsics", "intrinsics"):
        torch.testing.assert_close(fused[key], eager[key])
