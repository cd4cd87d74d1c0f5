"""Batched analytic ray caster for ``SceneSpec``s, in plain torch (same code on CPU and CUDA).

Every pixel of every view of every scene is one ray; the work is vectorized over scenes, rays
and primitives, with Python loops only over primitive types and ray chunks (runs of whole
tile rows). Vectors are component-first ([3, ...] planes, dot products written out): on CPU a
reduction over a trailing size-3 dim costs several times the arithmetic. Rays are traced in
groups of TILE x TILE pixels: each group's rays are bounded by a cone, and only the (group,
primitive) pairs whose bounding sphere meets that cone run the exact intersectors (for
primary and shadow rays alike), so each ray is tested against the few primitives it can hit;
the culling is conservative, so hits equal brute force. The closest hit per ray is one
scatter-amin over int64 keys (t's float bits above the primitive's column), any-hit
occlusion a count. Ground truth is exact by construction: depth, world points and normals
come from the very hit that was shaded. Spheres, boxes, cylinders and the ground plane are
intersected in closed form; height fields by ray marching to bracket the first crossing
(only over the stretch of each ray below a per-ray bound on the relief), then safeguarded
Newton steps (secant / bisection fallback) until each ray's step is below float resolution,
so their points lie on the analytic surface. All lights' shadow rays are traced as one
batch, of only the (tile, light) groups with a lit ray. ``render(..., compiled=True)`` fuses
the elementwise kernels with ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attrsub.errors import ConfigError
from attrsub.scenes.spec import MAX_BUMPS, TEXTURE_KINDS, Material, SceneSpec
from attrsub.size import check_size

# Bumped whenever rendered pixels change; part of a cached dataset's key, so a cache made by
# an older renderer is never mistaken for a fresh render. 3: ground hits exactly on z = 0
# (its checker no longer flips on z rounding), value noise from an int32 hash (top 24 bits),
# height-field hits refined to float resolution, lighting summed in a different order.
RENDER_VERSION = 3
OUTPUT_KEYS = (
    "images",
    "albedo",
    "depths",
    "world_points",
    "normals",
    "valid",
    "extrinsics",
    "intrinsics",
)
GROUND, SPHERE, BOX, CYLINDER, HEIGHTFIELD = range(5)
_NOISE = TEXTURE_KINDS.index("noise")
_KIND = {k: i for i, k in enumerate(TEXTURE_KINDS)}
# Ray-march samples across the part of a height field's box below the ray's relief bound
# (see _clip_to_relief), then refinement steps.
MARCH_STEPS = 12
# Shadow rays only gate shading, never ground truth, so they march more coarsely.
SHADOW_MARCH_STEPS = 6
# At most this many refinement steps; a ray stops once its Newton step is below NEWTON_TOL t
# (a few float32 ulps) or its point is within NEWTON_TOL_G (scene units) of the surface.
NEWTON_STEPS = 12
NEWTON_TOL = 4e-7
NEWTON_TOL_G = 1e-6
# Shadow rays start this far (scene units) off the surface to avoid self-hits.
SHADOW_EPS = 1e-3
# Rays are culled in groups of TILE x TILE pixels (sizes are multiples of the patch size 14).
TILE = 7
INF = float("inf")
# Gaussian exponents are clamped here: exp(-80) is still a normal float32 (denormal
# results are many times slower on CPU) and far below float resolution of any height.
_EXP_MIN = -80.0


@dataclass
class _Batch:
    """A batch of scenes as padded device tensors (types absent from every scene are None)."""

    eye: Tensor  # [B,V,3] camera centres, scene frame
    rot: Tensor  # [B,V,3,3] camera-from-scene
    focal: Tensor  # [B]
    ground: Tensor  # [B] half extent
    sph: tuple[Tensor, ...] | None  # centre [B,S,3], radius [B,S], material [B,S], ok [B,S]
    box: (
        tuple[Tensor, ...] | None
    )  # centre [B,N,3], scene-from-box [B,N,3,3], half [B,N,3], mat, ok
    cyl: tuple[Tensor, ...] | None  # centre [B,C,3], radius [B,C], half height [B,C], mat, ok
    hf: tuple[Tensor, ...] | None  # params [B,H,P] (see _hf_params), top [B,H], mat, ok
    mat: tuple[
        Tensor, ...
    ]  # kind, freq, palette [B,M,4,3], n colours, seed, stripe dir, ks, shininess
    light_point: Tensor  # [B,L] bool
    light_vec: Tensor  # [B,L,3] unit direction to light, or position
    light_rgb: Tensor  # [B,L,3] colour * intensity (0 for padding)
    ambient: Tensor  # [B,3]
    sky: Tensor  # [B,3]
    exposure: Tensor  # [B]
    kernels: _Kernels
    prims: list[tuple[int, Tensor, Tensor, Tensor, tuple[Tensor, ...]]] = dataclasses.field(
        default_factory=list
    )  # see _primitives
    bounds: tuple[Tensor, ...] = ()  # every type's centre [B,M,3], radius, ok [B,M], type-major


def render(
    specs: Sequence[SceneSpec],
    size: int,
    device: str | torch.device = "cpu",
    chunk: int = 131072,
    compiled: bool = False,
) -> dict[str, Tensor]:
    """Render every view of every scene at ``size`` x ``size``; see OUTPUT_KEYS for the dict.

    ``chunk`` is the number of rays traced at once over the whole batch, in whole tile rows
    of a view (a speed knob only: it may change float rounding in the matmuls, never which
    primitive a ray hits). ``compiled=True`` runs the elementwise kernels (intersectors,
    culling, height-field marching and refinement, value noise, lighting) through
    ``torch.compile``: tens of seconds to a few minutes once per process (less with a warm
    inductor cache), then about 1.3-1.5x faster on CPU; results match eager to float rounding.
    """
    check_size(size)
    specs = list(specs)
    if not specs:
        raise ConfigError("render needs at least one SceneSpec, got an empty sequence")
    bad = [type(s).__name__ for s in specs if not isinstance(s, SceneSpec)]
    if bad:
        raise ConfigError(f"render takes SceneSpec objects, got {bad[0]}")
    views = {s.views for s in specs}
    if len(views) != 1:
        raise ConfigError(
            f"all scenes in one render call need the same number of views, got {sorted(views)}"
        )
    if not isinstance(compiled, bool):
        raise ConfigError(f"compiled must be True or False, got {compiled!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    device = torch.device(device)
    with torch.no_grad():
        return _render(_pack(specs, device, compiled), size, chunk)


def _pack(specs: list[SceneSpec], device: torch.device, compiled: bool = False) -> _Batch:
    """Flatten each spec into primitive arrays (float64 on the host), pad, and ship to device."""
    b_n = len(specs)
    per: dict[str, list[list[np.ndarray]]] = {
        k: [] for k in ("sph", "box", "cyl", "hf", "mat", "light")
    }
    eyes, rots, focal, ground, ambient, sky, exposure = [], [], [], [], [], [], []
    for spec in specs:
        mats: list[Material] = [spec.ground.material]
        sph, box, cyl, hf = [], [], [], []
        for b in spec.boxes:
            box.append(np.concatenate([b.center, b.rotation().ravel(), b.half_size, [len(mats)]]))
            mats.append(b.material)
            sub_boxes, sub_spheres = b.attached()
            for c, h, m in sub_boxes:
                box.append(np.concatenate([c, b.rotation().ravel(), h, [len(mats)]]))
                mats.append(m)
            for c, r, m in sub_spheres:
                sph.append(np.concatenate([c, [r, len(mats)]]))
                mats.append(m)
        for s in spec.spheres:
            sph.append(np.concatenate([s.center, [s.radius, len(mats)]]))
            mats.append(s.material)
        for c in spec.cylinders:
            cyl.append(np.concatenate([c.center, [c.radius, c.half_height, len(mats)]]))
            mats.append(c.material)
        for h in spec.heightfields:
            hf.append(np.concatenate([_hf_params(h), [len(mats)]]))
            mats.append(h.material)
        per["sph"].append(sph)
        per["box"].append(box)
        per["cyl"].append(cyl)
        per["hf"].append(hf)
        per["mat"].append([_mat_row(m) for m in mats])
        lights = []
        for light in spec.lighting.lights:
            vec = np.array(light.vector)
            if light.kind == "directional":
                vec = vec / np.linalg.norm(vec)
            rgb = np.array(light.color) * light.intensity
            lights.append(np.concatenate([[light.kind == "point"], vec, rgb]))
        per["light"].append(lights)
        rot, eye = spec.camera.poses()
        rots.append(rot)
        eyes.append(eye)
        focal.append(0.5 / math.tan(math.radians(spec.camera.fov_deg) / 2))
        ground.append(spec.ground.half_extent)
        lit = spec.lighting
        ambient.append(np.array(lit.ambient_color) * lit.ambient)
        sky.append(lit.sky)
        exposure.append(lit.exposure)

    def pad(rows: list[list[np.ndarray]], width: int) -> tuple[Tensor, Tensor] | None:
        n = max(len(r) for r in rows)
        if n == 0:
            return None
        out = np.zeros((b_n, n, width))
        ok = np.zeros((b_n, n), dtype=bool)
        for i, r in enumerate(rows):
            if r:
                out[i, : len(r)] = np.stack(r)
                ok[i, : len(r)] = True
        return torch.tensor(out, dtype=torch.float32, device=device), torch.tensor(
            ok, device=device
        )

    def f32(x: object) -> Tensor:
        return torch.tensor(np.asarray(x), dtype=torch.float32, device=device)

    sph = box = cyl = hf = None
    if (p := pad(per["sph"], 5)) is not None:
        a, ok = p
        sph = (a[..., :3], a[..., 3], a[..., 4].long(), ok)
    if (p := pad(per["box"], 16)) is not None:
        a, ok = p
        box = (
            a[..., :3],
            a[..., 3:12].reshape(b_n, -1, 3, 3),
            a[..., 12:15],
            a[..., 15].long(),
            ok,
        )
    if (p := pad(per["cyl"], 6)) is not None:
        a, ok = p
        cyl = (a[..., :3], a[..., 3], a[..., 4], a[..., 5].long(), ok)
    if (p := pad(per["hf"], _HF_WIDTH + 1)) is not None:
        a, ok = p
        # Drop bump slots no field of the batch uses (zero bumps add nothing but work).
        nb = max(len(h.bumps) for hs in specs for h in hs.heightfields)
        rows = torch.cat([a[..., : 4 + 4 * nb], a[..., 4 + 4 * MAX_BUMPS : _HF_WIDTH]], -1)
        hf = (rows, a[..., _HF_WIDTH - 1], a[..., _HF_WIDTH].long(), ok)
    m_t, _ = pad(per["mat"], 22)  # type: ignore[misc]
    mat = (
        m_t[..., 0].long(),
        m_t[..., 1],
        m_t[..., 2:14].reshape(b_n, -1, 4, 3),
        m_t[..., 14].long(),
        m_t[..., 15].long(),
        m_t[..., 16:19],
        m_t[..., 19],
        m_t[..., 20],
    )
    l_t, l_ok = pad(per["light"], 7)  # type: ignore[misc]
    sc = _Batch(
        kernels=_kernels(compiled),
        eye=f32(np.stack(eyes)),
        rot=f32(np.stack(rots)),
        focal=f32(focal),
        ground=f32(ground),
        sph=sph,
        box=box,
        cyl=cyl,
        hf=hf,
        mat=mat,
        light_point=(l_t[..., 0] > 0.5) & l_ok,
        light_vec=torch.where(
            l_ok[..., None], l_t[..., 1:4], torch.tensor([0.0, 0.0, 1.0], device=device)
        ),
        light_rgb=l_t[..., 4:7] * l_ok[..., None],
        ambient=f32(np.stack(ambient)),
        sky=f32(np.stack(sky)),
        exposure=f32(exposure),
    )
    sc.prims = _primitives(sc)
    if sc.prims:
        sc.bounds = tuple(torch.cat([p[i] for p in sc.prims], 1) for i in (1, 2, 3))
    return sc


# Height-field parameter row: centre xy, half extent xy, MAX_BUMPS x (a, x, y, 1/(2 sigma^2)),
# ripple (a, kx, ky, phase), then the top of its bounding box.
_HF_WIDTH = 4 + 4 * MAX_BUMPS + 4 + 1


def _hf_params(h: object) -> np.ndarray:
    bumps = np.zeros((MAX_BUMPS, 4))
    for i, (a, x, y, s) in enumerate(h.bumps):  # type: ignore[attr-defined]
        bumps[i] = (a, x, y, 1.0 / (2 * s * s))
    rip = np.array(h.ripple)  # type: ignore[attr-defined]
    top = max(np.abs(bumps[:, 0]).sum() + abs(rip[0]), 1e-3) * 1.01
    return np.concatenate([h.center, h.half_extent, bumps.ravel(), rip, [top]])  # type: ignore[attr-defined]


def _mat_row(m: Material) -> np.ndarray:
    tex = m.texture
    pal = np.zeros((4, 3))
    pal[: len(tex.palette)] = tex.palette
    direction = np.random.default_rng([tex.seed, 0x57]).standard_normal(3)
    direction /= np.linalg.norm(direction)
    return np.concatenate(
        [
            [_KIND[tex.kind], tex.frequency],
            pal.ravel(),
            [len(tex.palette), tex.seed],
            direction,
            [m.specular, m.shininess, 0.0],
        ]
    )


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot product of component-first vectors [3,...] (explicit planes: a reduction over a
    size-3 dim is several times slower)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _any(x: Tensor) -> Tensor:
    """``x.any(-1)`` for bool x, as a byte sum (several times faster on CPU)."""
    return x.view(torch.uint8).sum(-1, dtype=torch.int32) > 0


def _render(sc: _Batch, size: int, chunk: int, cull: bool = True) -> dict[str, Tensor]:
    """Trace in tile-major ray order (every TILE x TILE pixel block of a view is one
    contiguous ray group for culling), writing each chunk's blocks into the row-major
    outputs. ``cull=False`` is the brute-force reference: every group is tested against every
    primitive."""
    dev = sc.eye.device
    b_n, v_n = sc.eye.shape[:2]
    tiles = size // TILE
    group = TILE * TILE
    p_n = size * size
    n_rays = v_n * p_n
    g_n = v_n * tiles * tiles  # ray groups per scene
    # Camera-frame pixel rays (z = 1) in tile-major order, shared by all views of a scene.
    pix = ((torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size - 0.5).view(
        tiles, TILE
    )
    grid = (b_n, tiles, tiles, TILE, TILE)
    focal = sc.focal[:, None, None, None, None]
    cx = (pix[None, None, :, None, :] / focal).expand(grid).reshape(b_n, 1, p_n)
    cy = (pix[None, :, None, :, None] / focal).expand(grid).reshape(b_n, 1, p_n)
    inv_len = (cx * cx + cy * cy + 1).sqrt().reciprocal()  # z of the unit ray: z-depth per t
    cam = (cx * inv_len, cy * inv_len, inv_len)
    rot = sc.rot[..., None]  # [B,V,3,3,1]: d = cam @ rot
    d_all = torch.stack(
        [
            cam[0] * rot[:, :, 0, j] + cam[1] * rot[:, :, 1, j] + cam[2] * rot[:, :, 2, j]
            for j in range(3)
        ]
    ).reshape(3, b_n, n_rays)
    # Every ray of a group starts at its view's camera centre: one origin per group.
    o_all = sc.eye.permute(2, 0, 1)[..., None].expand(3, b_n, v_n, g_n // v_n)
    o_all = o_all.reshape(3, b_n, g_n)

    zscale = inv_len.expand(b_n, v_n, p_n).reshape(b_n, n_rays)
    r0 = sc.rot[:, 0]  # camera-from-scene of the first view
    e0 = sc.eye[:, 0].T[..., None]
    out = {
        "images": torch.empty(b_n, v_n, 3, size, size, device=dev),
        "albedo": torch.empty(b_n, v_n, 3, size, size, device=dev),
        "depths": torch.empty(b_n, v_n, size, size, device=dev),
        "world_points": torch.empty(b_n, v_n, size, size, 3, device=dev),
        "normals": torch.empty(b_n, v_n, size, size, 3, device=dev),
        "valid": torch.empty(b_n, v_n, size, size, dtype=torch.bool, device=dev),
    }
    # Chunks are equal runs of whole tile rows of views (of at most ``chunk`` rays: a short
    # last chunk would cost as many op launches as a full one), so each lands in the outputs
    # as blocks of image rows: (tile row, tile column, y, x) -> (row, column).
    row = tiles * group  # rays per tile row
    n_chunks = -(-v_n * tiles // max(1, chunk // (b_n * row)))
    units = -(-v_n * tiles // n_chunks)
    for u0 in range(0, v_n * tiles, units):
        u1 = min(u0 + units, v_n * tiles)
        rs = slice(u0 * row, u1 * row)
        rgb, alb, p, n, t = _shade(sc, o_all[:, :, u0 * tiles : u1 * tiles], d_all[:, :, rs], cull)
        valid = torch.isfinite(t)
        parts = {
            "images": rgb.transpose(0, 1),
            "albedo": alb.transpose(0, 1),
            "depths": torch.where(valid, t * zscale[:, rs], 0.0),
            "world_points": torch.where(
                valid[:, None], torch.bmm(r0, (p - e0).transpose(0, 1)), 0.0
            ),
            "normals": torch.where(valid[:, None], torch.bmm(r0, n.transpose(0, 1)), 0.0),
            "valid": valid,
        }
        for v in range(u0 // tiles, (u1 - 1) // tiles + 1):
            a, b = max(u0, v * tiles), min(u1, (v + 1) * tiles)  # units of view v
            lines = slice((a - v * tiles) * TILE, (b - v * tiles) * TILE)
            sl = slice((a - u0) * row, (b - u0) * row)
            for key, x in parts.items():
                # [B,(3,)n] tile-major -> the [B,(3,)rows,W] (or [B,rows,W,3]) block, viewed
                # as (tile row, y, tile column, x): one strided copy.
                x = x[..., sl].unflatten(-1, (b - a, tiles, TILE, TILE)).transpose(-3, -2)
                if key in ("images", "albedo"):
                    dest = out[key][:, v, :, lines]
                elif key in ("world_points", "normals"):
                    dest = out[key][:, v, lines].permute(0, 3, 1, 2)
                else:
                    dest = out[key][:, v, lines]
                dest.unflatten(-1, (tiles, TILE)).unflatten(-3, (b - a, TILE)).copy_(x)
    ext, intr = _cameras(sc, size)
    return {**out, "extrinsics": ext, "intrinsics": intr}


def _cameras(sc: _Batch, size: int) -> tuple[Tensor, Tensor]:
    """Extrinsics relative to the first camera (computed in float64) and pinhole intrinsics."""
    rot = sc.rot.double()
    eye = sc.eye.double()
    r0 = rot[:, :1]
    r_rel = rot @ r0.transpose(-1, -2)
    t_rel = (rot @ (eye[:, :1] - eye)[..., None])[..., 0]
    r_rel[:, 0] = torch.eye(3, dtype=torch.float64, device=rot.device)
    t_rel[:, 0] = 0.0
    ext = torch.cat([r_rel, t_rel[..., None]], -1).float()
    b_n, v_n = rot.shape[:2]
    k = torch.zeros(b_n, v_n, 3, 3, device=rot.device)
    k[..., 0, 0] = (sc.focal * size)[:, None]
    k[..., 1, 1] = (sc.focal * size)[:, None]
    k[..., 0, 2] = size / 2
    k[..., 1, 2] = size / 2
    k[..., 2, 2] = 1.0
    return ext, k


def _shade(
    sc: _Batch, o: Tensor, d: Tensor, cull: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Trace, then Lambert + Blinn-Phong with shadow rays per light, then tonemap.

    ``o`` [3,B,G] is each ray group's origin (its camera centre), ``d`` [3,B,G*T] the unit
    rays. Returns colour, albedo (0 off-surface), hit point, unit normal ([3,B,N] each) and
    t [B,N] (INF on a miss).
    """
    _, b_n, n_r = d.shape
    g_n = o.shape[2]
    group = n_r // g_n
    sid = torch.arange(b_n, device=d.device).repeat_interleave(g_n)
    hit = _trace_groups(sc, sid, o.reshape(3, -1, 1), d.reshape(3, -1, group), cull=cull)
    t, kind, idx = (x.reshape(b_n, n_r) for x in hit)
    valid = torch.isfinite(t)
    o_ray = o[..., None].expand(3, b_n, g_n, group).reshape(3, b_n, n_r)
    t_safe, p, n, q, m = _surface(sc, o_ray, d, torch.where(valid, t, 0.0), kind, idx)
    t = torch.where(valid, t_safe, INF)
    albedo = _albedo(sc, q, m, valid)
    ks, shin = sc.mat[6].gather(1, m), sc.mat[7].gather(1, m)
    point = sc.light_point[:, :, None]
    on = (sc.light_rgb.amax(-1) > 0)[..., None]
    *to_light, rdist, ndl, lit, tmax = sc.kernels.light(p, n, valid, point, sc.light_vec, on)
    blocked = _shadows(sc, p + SHADOW_EPS * n, to_light, rdist, tmax, lit, cull)
    rgb = sc.kernels.mix(
        albedo,
        n,
        d,
        *to_light,
        rdist,
        ndl,
        lit & ~blocked,
        point,
        ks,
        shin,
        sc.light_rgb,
        sc.ambient,
        sc.exposure,
        sc.sky,
        valid,
    )
    return rgb, albedo, p, n, t


def _light(
    p: Tensor, n: Tensor, valid: Tensor, point: Tensor, vec: Tensor, on: Tensor
) -> tuple[Tensor, ...]:
    """All lights at once ([B,L,N]) for hit points p and normals n [3,B,N]: the offset to
    the light (three component planes), 1 / its length, n.l, lit (valid, facing the light,
    light present), and the shadow ray's tmax. A directional light's vector is its unit
    direction, so vec - w * p is it unchanged for w = 0 and the offset to a point light for
    w = 1."""
    to_light = tuple(
        torch.addcmul(vec[:, :, i, None], point.to(p.dtype), p[i, :, None], value=-1)
        for i in range(3)
    )
    dist2 = _dot(to_light, to_light)
    rdist = dist2.rsqrt()
    ndl = _dot(to_light, n[:, :, None]) * rdist
    lit = valid[:, None] & (ndl > 0) & on
    tmax = torch.where(point, dist2 * rdist - SHADOW_EPS, INF)
    return (*to_light, rdist, ndl, lit, tmax)


def _mix(
    albedo: Tensor,
    n: Tensor,
    d: Tensor,
    lx: Tensor,
    ly: Tensor,
    lz: Tensor,
    rdist: Tensor,
    ndl: Tensor,
    vis: Tensor,
    point: Tensor,
    ks: Tensor,
    shin: Tensor,
    light_rgb: Tensor,
    ambient: Tensor,
    exposure: Tensor,
    sky: Tensor,
    valid: Tensor,
) -> Tensor:
    """Colour [3,B,N]: ambient + Lambert + Blinn-Phong of the visible lights, tonemapped
    (exposure, gamma 2.2); the sky gradient where no surface was hit."""
    weight = torch.where(vis, torch.where(point, rdist * rdist, 1.0), 0.0)
    # n.h with h = (l - d) / |l - d|, and |l - d|^2 = 2 - 2 l.d (unit l, d).
    ldv = _dot((lx, ly, lz), d[:, :, None]) * rdist
    ndh = (ndl - _dot(n, d)[:, None]) * (2 - 2 * ldv).clamp_min(1e-24).rsqrt()
    spec = ks[:, None] * ndh.clamp_min(0).pow(shin[:, None])
    # Sum over lights of weight * (albedo * n.l + spec) * colour: [3,L] x [L,N] per scene.
    rgb_l = light_rgb.transpose(1, 2)
    diffuse = torch.bmm(rgb_l, weight * ndl).transpose(0, 1)
    specular = torch.bmm(rgb_l, weight * spec).transpose(0, 1)
    color = albedo * (ambient.T[..., None] + diffuse) + specular
    rgb = (1 - torch.exp(-color * exposure[:, None])).pow(1 / 2.2)
    sky = sky.T[..., None] * (0.8 + 0.2 * d[2].clamp(0, 1))
    return torch.where(valid, rgb, sky).clamp(0, 1)


def _shadows(
    sc: _Batch,
    origin: Tensor,
    to_light: Sequence[Tensor],
    rdist: Tensor,
    tmax: Tensor,
    lit: Tensor,
    cull: bool,
) -> Tensor:
    """Occlusion [B,L,N] of the shadow rays from ``origin`` [3,B,N] along ``to_light``
    (component planes [B,L,N], times 1 / its length ``rdist``) up to ``tmax`` [B,L,N], for
    the ``lit`` ones. Only ray groups (one screen tile, one light) with a lit ray are traced:
    padded lights and unlit tiles cost nothing."""
    b_n, l_n, n_r = lit.shape
    group = TILE * TILE
    g_n = n_r // group
    live = _any(lit.view(-1, group)).nonzero()[:, 0]  # flat (scene, light, group)
    blocked = torch.zeros((b_n * l_n * g_n, group), dtype=torch.bool, device=lit.device)
    if live.numel():
        scene = torch.div(live, l_n * g_n, rounding_mode="floor")
        blocked.index_copy_(
            0,
            live,
            _trace_groups(  # type: ignore[arg-type]
                sc,
                scene,
                origin.reshape(3, b_n * g_n, group).index_select(1, scene * g_n + live % g_n),
                torch.stack([x.view(-1, group).index_select(0, live) for x in to_light])
                * rdist.view(-1, group).index_select(0, live),
                tmax.reshape(-1, group).index_select(0, live),
                lit.reshape(-1, group).index_select(0, live),
                cull,
            ),
        )
    return blocked.view(b_n, l_n, n_r)


def _trace(
    sc: _Batch,
    o: Tensor,
    d: Tensor,
    tmax: Tensor | None = None,
    active: Tensor | None = None,
    cull: bool = True,
) -> tuple[Tensor, Tensor, Tensor] | Tensor:
    """``_trace_groups`` for rays o, d [B,N,3] (N a multiple of TILE x TILE, grouped in
    order); results [B,N]."""
    b_n, n_r = d.shape[:2]
    group = TILE * TILE
    sid = torch.arange(b_n, device=d.device).repeat_interleave(n_r // group)

    def planes(x: Tensor) -> Tensor:
        return x.permute(2, 0, 1).reshape(3, -1, group)

    out = _trace_groups(
        sc,
        sid,
        planes(o),
        planes(d),
        None if tmax is None else tmax.reshape(-1, group),
        None if active is None else active.reshape(-1, group),
        cull,
    )
    if isinstance(out, Tensor):
        return out.reshape(b_n, n_r)
    return tuple(x.reshape(b_n, n_r) for x in out)  # type: ignore[return-value]


def _trace_groups(
    sc: _Batch,
    sid: Tensor,
    o: Tensor,
    d: Tensor,
    tmax: Tensor | None = None,
    active: Tensor | None = None,
    cull: bool = True,
) -> tuple[Tensor, Tensor, Tensor] | Tensor:
    """Closest hit (t, primitive type, index) or, with ``tmax``, any-hit occlusion [G,T].

    Rays come in groups [G,T] (one screen tile of one view, or of one light's shadow rays)
    of scene ``sid`` [G]: ``d`` is [3,G,T], and ``o`` [3,G,T] or [3,G,1] when a group
    shares its origin. Each group is bounded by a cone (apex ball + axis + half-angle) and
    tested against each primitive's bounding sphere; the closed-form kernels then run only
    on the (group, primitive) pairs that pass, with batch := pairs, and their hits are
    min-reduced (or counted, for occlusion) back per ray. The test is conservative, so the
    hits equal brute force (``cull=False``: every pair) exactly.
    """
    t_ground = sc.kernels.ground(o, d, sc.ground.index_select(0, sid)[:, None], 0.0)
    g_n, group = t_ground.shape
    cone = sc.kernels.cone(o, d, active) if cull else None
    tmin = 0.0
    prims = sc.prims
    if tmax is None:
        # Closest hit as one int64 key per ray: t's float bits (t > 0, so they order like t)
        # above the column (type-major: the lowest (type, index) wins ties). One scatter-amin
        # per type merges any number of pairs per group.
        key = torch.full((g_n * group,), _key(INF, 0xFFFF), dtype=torch.long, device=d.device)
    else:
        count = torch.zeros((g_n, group), dtype=torch.int32, device=d.device)  # occluders
    lane = torch.arange(group, device=d.device)
    if prims:
        # Every type's bounding spheres at once [G,M] (columns type-major, as ``col``).
        centre, radius, ok = sc.bounds
        cand_all = ok.index_select(0, sid)
        if cone is not None:
            cand_all &= sc.kernels.cone_hits(
                *cone, centre.index_select(0, sid).permute(2, 0, 1), radius.index_select(0, sid)
            )
    col = 0
    for kind, centre, _, _, params in prims:
        m_n = centre.shape[1]
        gi, mi = cand_all[:, col : col + m_n].nonzero(as_tuple=True)
        if gi.numel():
            pair = sid.index_select(0, gi) * m_n + mi
            po, pd = o.index_select(1, gi), d.index_select(1, gi)
            pp = [x.index_select(0, pair) for x in params]
            if kind == SPHERE:
                h = sc.kernels.spheres(po, pd, *pp, tmin)
            elif kind == BOX:
                h = sc.kernels.boxes(po, pd, *pp, tmin)
            elif kind == CYLINDER:
                h = sc.kernels.cylinders(po, pd, *pp, tmin)
            else:
                # Last type: skip rays something nearer (closest hit) or anything (any-hit) has.
                if tmax is None:
                    cut = torch.minimum(_key_t(key).view(g_n, group), t_ground).index_select(0, gi)
                    act, tm = None, None
                else:
                    free = (count == 0) & (t_ground >= tmax)
                    act = (free if active is None else free & active).index_select(0, gi)
                    cut, tm = None, tmax.index_select(0, gi)
                h = _heightfields(sc.kernels, po, pd, *pp, tmin, tm, act, cut)
            if tmax is None:
                flat = (gi[:, None] * group + lane).view(-1)
                key.scatter_reduce_(0, flat, _key(h, (col + mi)[:, None]).view(-1), "amin")
            else:
                count.index_add_(0, gi, (h < tmax.index_select(0, gi)).int())
        col += m_n
    if tmax is not None:
        blocked = (count > 0) | (t_ground < tmax)
        return blocked if active is None else blocked & active
    t_obj = _key_t(key).view(g_n, group)
    column = (key & 0xFFFF).clamp_max(max(col - 1, 0)).view(g_n, group)
    kinds = torch.tensor(
        [p[0] for p in prims for _ in range(p[1].shape[1])] or [0], device=d.device
    )
    index = torch.tensor([i for p in prims for i in range(p[1].shape[1])] or [0], device=d.device)
    ground_wins = t_ground <= t_obj
    return (
        torch.where(ground_wins, t_ground, t_obj),
        torch.where(ground_wins, GROUND, kinds[column]),
        torch.where(ground_wins, 0, index[column]),
    )


def _key(t: Tensor | float, col: Tensor | int) -> Tensor | int:
    """Sortable int64 key of a hit distance t >= 0 (float32, or INF) and a 16-bit column: the
    bits of a non-negative float order like its value (abs: a NaN never sorts first)."""
    if isinstance(t, float):
        return (int(np.float32(t).view(np.int32)) << 16) | int(col)  # type: ignore[arg-type]
    return (t.abs().view(torch.int32).long() << 16) | col


def _key_t(key: Tensor) -> Tensor:
    """The hit distance of keys made by ``_key``."""
    return (key >> 16).int().view(torch.float32)


def _primitives(sc: _Batch) -> list[tuple[int, Tensor, Tensor, Tensor, tuple[Tensor, ...]]]:
    """Per primitive type: kind, bounding spheres (centre [B,M,3], radius [B,M]), ok [B,M],
    and the kernel's parameter tensors, flat over (scene, index): [B*M,...]."""
    out = []
    if sc.sph is not None:
        c, r, _, ok = sc.sph
        out.append((SPHERE, c, r, ok, (c, r)))
    if sc.box is not None:
        c, rot, half, _, ok = sc.box
        out.append((BOX, c, half.norm(dim=-1), ok, (c, rot, half)))
    if sc.cyl is not None:
        c, r, hh, _, ok = sc.cyl
        out.append((CYLINDER, c, torch.hypot(r, hh), ok, (c, r, hh)))
    if sc.hf is not None:
        params, top, _, ok = sc.hf
        cx, cy, hx, hy = params[..., :4].unbind(-1)
        c = torch.stack([cx, cy, top / 2], -1)
        rad = torch.stack([hx, hy, top / 2], -1).norm(dim=-1)
        out.append((HEIGHTFIELD, c, rad, ok, (params, top)))
    return [
        (
            kind,
            c.contiguous(),
            r.contiguous(),
            ok.contiguous(),
            tuple(x.reshape(-1, *x.shape[2:]).contiguous() for x in params),
        )
        for kind, c, r, ok, params in out
    ]


def _cone(o: Tensor, d: Tensor, active: Tensor | None) -> tuple[Tensor, ...]:
    """Bound each group's (active) rays [3,G,T]: apex centre, apex radius, unit axis,
    half-angle, and whether any ray is active. Every ray starts within the apex ball, heading
    within the half-angle of the axis. A shared origin [3,G,1] is the apex (radius 0)."""
    if active is None:
        live = torch.ones(d.shape[1], dtype=torch.bool, device=d.device)
        axis = d.sum(2)
    else:
        live = _any(active)
        axis = torch.where(active, d, 0.0).sum(2)
    if o.shape[2] == 1:
        apex, rho = o[..., 0], torch.zeros_like(o[0, :, 0])
    else:
        if active is None:
            apex = o.mean(2)
        else:
            apex = torch.where(active, o, 0.0).sum(2) / active.sum(1).clamp_min(1)
        off = o - apex[..., None]
        rho = _dot(off, off)
        rho = (rho if active is None else torch.where(active, rho, 0.0)).amax(1).sqrt()
    axis = axis * _dot(axis, axis).clamp_min(1e-30).rsqrt()
    cos = _dot(d, axis[..., None])
    if active is not None:
        cos = torch.where(active, cos, 1.0)
    theta = torch.acos(cos.amin(1).clamp(-1.0, 1.0))  # coarse near 0: _cone_hits adds margin
    return apex, rho, axis, theta, live


def _cone_hits(
    apex: Tensor, rho: Tensor, axis: Tensor, theta: Tensor, live: Tensor, c: Tensor, r: Tensor
) -> Tensor:
    """Conservative: can any ray of the group [G] pass through the sphere (c [3,G,M], r [G,M])?

    A ray from o (|o - apex| <= rho) along d hits the sphere only if the ray from the apex
    along d passes within r + rho of c, i.e. angle(c - apex, d) <= asin((r + rho) / |c - apex|),
    so angle(c - apex, axis) <= theta + that. Margins cover float rounding of both tests.
    """
    rr = (r + rho[:, None]) * 1.001 + 1e-4
    w = c - apex[..., None]
    dist = _dot(w, w).sqrt()
    a = axis[..., None]
    cross = torch.stack(
        [w[1] * a[2] - w[2] * a[1], w[2] * a[0] - w[0] * a[2], w[0] * a[1] - w[1] * a[0]]
    )
    ang = torch.atan2(_dot(cross, cross).sqrt(), _dot(w, a))  # accurate near 0 and pi
    lim = theta[:, None] + torch.asin((rr / dist.clamp_min(1e-20)).clamp(max=1.0)) + 1e-3
    return live[:, None] & ((dist <= rr) | (ang <= lim))


def _ground(o: Tensor, d: Tensor, lim: Tensor, tmin: float) -> Tensor:
    """The ground square |x|, |y| <= ``lim`` (broadcast over rays) at z = 0."""
    t = -o[2] / d[2]
    hit = (d[2] < 0) & (t > tmin)
    hit &= (o[0] + t * d[0]).abs() <= lim
    hit &= (o[1] + t * d[1]).abs() <= lim
    return torch.where(hit, t, INF)


def _spheres(o: Tensor, d: Tensor, c: Tensor, r: Tensor, tmin: float) -> Tensor:
    """Nearest hit t > tmin [P,T] of rays o, d [3,P,T] (o may be [3,P,1]) with one sphere
    per pair (centre c [P,3], radius r [P]); INF on a miss."""
    oc = o - c.T[..., None]
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - (r * r)[:, None])
    t = -b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (t > tmin), t, INF)


def _boxes(o: Tensor, d: Tensor, c: Tensor, rot: Tensor, half: Tensor, tmin: float) -> Tensor:
    """Slab test against one oriented box per pair (centre [P,3], scene-from-box [P,3,3],
    half size [P,3])."""
    oc = o - c.T[..., None]
    r = rot[..., None]  # [P,3,3,1]: box-local component j = sum_k v_k rot[k, j]
    tn = tf = None
    for j in range(3):
        dl = d[0] * r[:, 0, j] + d[1] * r[:, 1, j] + d[2] * r[:, 2, j]
        ol = oc[0] * r[:, 0, j] + oc[1] * r[:, 1, j] + oc[2] * r[:, 2, j]
        inv = torch.where(dl == 0, 1e20, dl.reciprocal())  # axis-parallel rays: no inf - inf
        tc = -ol * inv
        hw = (half[:, j, None] * inv).abs()
        lo, hi = tc - hw, tc + hw
        tn = lo if tn is None else torch.maximum(tn, lo)
        tf = hi if tf is None else torch.minimum(tf, hi)
    return torch.where((tn <= tf) & (tn > tmin), tn, INF)  # type: ignore[operator]


def _cylinders(o: Tensor, d: Tensor, c: Tensor, r: Tensor, hh: Tensor, tmin: float) -> Tensor:
    """Side and caps of one z-aligned capped cylinder per pair (centre [P,3], radius [P],
    half height [P])."""
    ox, oy, oz = (o[i] - c[:, i, None] for i in range(3))
    dx, dy, dz = d
    r2 = (r * r)[:, None]
    h = hh[:, None]
    a = dx * dx + dy * dy
    bq = ox * dx + oy * dy
    disc = bq * bq - a * (ox * ox + oy * oy - r2)
    ts = (-bq - disc.clamp_min(0).sqrt()) / a
    side = (disc > 0) & (ts > tmin) & ((oz + ts * dz).abs() <= h)
    tcap = (torch.where(dz < 0, h, -h) - oz) / dz
    xc, yc = ox + tcap * dx, oy + tcap * dy
    cap = (xc * xc + yc * yc <= r2) & (tcap > tmin)
    return torch.minimum(torch.where(side, ts, INF), torch.where(cap, tcap, INF))


def _height(
    pr: Tensor, x: Tensor, y: Tensor, grad: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Height (and gradient) at points x, y of height fields with parameter columns ``pr``
    [W,...] (see _hf_params; each column broadcasts against x)."""
    cx, cy, hx, hy = pr[0], pr[1], pr[2], pr[3]
    nb = (pr.shape[0] - 9) // 4
    ra, kx, ky, ph = pr[4 + 4 * nb : 8 + 4 * nb]
    u = ((x - cx) / hx).clamp(-1, 1)
    v = ((y - cy) / hy).clamp(-1, 1)
    wu, wv = 1 - u * u, 1 - v * v
    w = (wu * wv).square()
    phase = kx * x + ky * y + ph
    hgt = ra * torch.sin(phase)
    if grad:
        cos = ra * torch.cos(phase)
        gx, gy = cos * kx, cos * ky
    # All bumps at once: [nb,...] terms, summed over the leading dim.
    a, bx, by, s = pr[4 : 4 + 4 * nb].reshape(nb, 4, *pr.shape[1:]).unbind(1)
    ex, ey = x - bx, y - by
    g = a * torch.exp((-(ex * ex + ey * ey) * s).clamp_min(_EXP_MIN))
    hgt = hgt + g.sum(0)
    if grad:
        gk = -2 * g * s
        gx, gy = gx + (gk * ex).sum(0), gy + (gk * ey).sum(0)
    if not grad:
        return w * hgt, None, None
    wx = -4 * u * wu * wv * wv / hx
    wy = -4 * v * wv * wu * wu / hy
    return w * hgt, wx * hgt + w * gx, wy * hgt + w * gy


def _heightfields(
    kernels: _Kernels,
    o: Tensor,
    d: Tensor,
    params: Tensor,
    top: Tensor,
    tmin: float,
    tmax: Tensor | None,
    active: Tensor | None,
    tcut: Tensor | None = None,
) -> Tensor:
    """March each ray [3,P,T] through its pair's field's bounding box (params [P,W], top
    [P]); refine the first downward crossing. With ``tmax`` [P,T]: any crossing before it.

    Rays whose box entry is at or beyond ``tcut`` [P,T] are skipped: a hit already found
    there is at least as near and wins ties, so marching them cannot change the result.
    """
    cx, cy, hx, hy = (params[:, i, None] for i in range(4))
    lo = (cx - hx, cy - hy, 0.0)
    hi = (cx + hx, cy + hy, top[:, None])
    tn = tf = None
    for j in range(3):
        inv = torch.where(d[j] == 0, 1e20, d[j].reciprocal())
        t1, t2 = (lo[j] - o[j]) * inv, (hi[j] - o[j]) * inv
        near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tn = near if tn is None else torch.maximum(tn, near)
        tf = far if tf is None else torch.minimum(tf, far)
    tn = tn.clamp_min(tmin)  # type: ignore[union-attr]
    if tmax is not None:
        tf = torch.minimum(tf, tmax)  # type: ignore[arg-type]
    cand = tn < tf
    if active is not None:
        cand &= active
    if tcut is not None:
        cand &= tn < tcut  # type: ignore[operator]
    p_n, group = cand.shape
    out = torch.full((p_n * group,), INF, device=d.device)
    f = cand.view(-1).nonzero()[:, 0]  # flat (pair, ray) of the candidates
    if f.numel() == 0:
        return out.view(p_n, group)
    pt = params.T.contiguous()  # [W,P]
    o_flat = o.reshape(3, -1)
    ro, rd = o_flat.index_select(1, f // group if o.shape[2] == 1 else f), d.reshape(3, -1)
    rd = rd.index_select(1, f)
    t0, t1_ = kernels.clip(
        ro,
        rd,
        pt.index_select(1, f // group),
        tn.reshape(-1).index_select(0, f),  # type: ignore[union-attr]
        tf.reshape(-1).index_select(0, f),  # type: ignore[union-attr]
    )
    keep = (t0 < t1_).nonzero()[:, 0]
    f, t0, t1_ = (x.index_select(0, keep) for x in (f, t0, t1_))
    ro, rd, pr = ro.index_select(1, keep), rd.index_select(1, keep), pt.index_select(1, f // group)
    n_steps = MARCH_STEPS if tmax is None else SHADOW_MARCH_STEPS
    steps = torch.linspace(0, 1, n_steps + 1, device=d.device)[:, None]
    ts = steps * (t1_ - t0)  # [S,K]
    gs = kernels.march(ro, rd, pr, t0, ts)
    cross = (gs[:-1] > 0) & (gs[1:] <= 0)
    has = (cross.view(torch.uint8).sum(0, dtype=torch.int32) > 0).nonzero()[:, 0]
    if tmax is not None:
        return out.index_fill_(0, f[has], 0.0).view(p_n, group)  # any crossing occludes
    # Only rays that cross need refining (the rest keep INF), from the first crossing's
    # bracket (found last to first: a reduction over the sample dim is slow on CPU).
    f, ro, rd, pr = (
        f[has],
        ro.index_select(1, has),
        rd.index_select(1, has),
        pr.index_select(1, has),
    )
    ts, gs, cross = ts.index_select(1, has) + t0[has], gs.index_select(1, has), cross[:, has]
    k = torch.zeros_like(f)
    for i in range(n_steps - 1, -1, -1):
        k = torch.where(cross[i], i, k)
    k = k[None]
    a, b = ts.gather(0, k)[0], ts.gather(0, k + 1)[0]
    ga, gb = gs.gather(0, k)[0], gs.gather(0, k + 1)[0]
    t = a + (b - a) * ga / (ga - gb).clamp_min(1e-30)
    # Safeguarded Newton: keep a sign bracket; a step that leaves it is replaced by the
    # bracket's secant point, alternating with its midpoint so one-sided stalls cannot happen.
    # A ray is done once on the surface or its Newton step is within float resolution, and
    # leaves the batch (so its t does not depend on the other rays); most are done after two
    # or three steps, NEWTON_STEPS bounds the rest.
    for it in range(NEWTON_STEPS):
        t, a, b, ga, gb, done = kernels.newton(pr, ro, rd, t, a, b, ga, gb, it % 2 == 1)
        if it == NEWTON_STEPS - 1:
            break
        fin = done.nonzero()[:, 0]
        out.index_copy_(0, f[fin], t[fin])
        if fin.numel() == f.numel():
            return out.view(p_n, group)
        if fin.numel():
            rest = (~done).nonzero()[:, 0]
            f, t, a, b, ga, gb = (x[rest] for x in (f, t, a, b, ga, gb))
            ro, rd, pr = (
                ro.index_select(1, rest),
                rd.index_select(1, rest),
                pr.index_select(1, rest),
            )
    return out.index_copy_(0, f, t).view(p_n, group)


def _newton(
    pr: Tensor,
    ro: Tensor,
    rd: Tensor,
    t: Tensor,
    a: Tensor,
    b: Tensor,
    ga: Tensor,
    gb: Tensor,
    secant: bool,
) -> tuple[Tensor, ...]:
    """One safeguarded Newton step on g = z - h along rays ro, rd [3,K] from t inside the
    sign bracket [a, b] (g(a) = ga > 0 >= gb = g(b)): the new t, bracket, and whether the ray
    is done (|g(t)| within NEWTON_TOL_G: t is kept; or a step within float resolution). A
    step that leaves the bracket is replaced by the bracket's secant point (``secant``) or
    its midpoint."""
    f, fx, fy = _height(pr, ro[0] + t * rd[0], ro[1] + t * rd[1], grad=True)
    gv = ro[2] + t * rd[2] - f
    above = gv > 0
    a, b = torch.where(above, t, a), torch.where(above, b, t)
    ga, gb = torch.where(above, gv, ga), torch.where(above, gb, gv)
    slope = rd[2] - fx * rd[0] - fy * rd[1]  # type: ignore[operator]
    step = t - gv / torch.where(slope.abs() > 1e-20, slope, -1e-20)
    fallback = a + (b - a) * ga / (ga - gb).clamp_min(1e-30) if secant else 0.5 * (a + b)
    inside = (step >= a) & (step <= b)
    on = gv.abs() <= NEWTON_TOL_G  # on the surface already: keep t
    done = on | (inside & ((step - t).abs() <= NEWTON_TOL * t))
    return torch.where(on, t, torch.where(inside, step, fallback)), a, b, ga, gb, done


def _clip_to_relief(
    ro: Tensor, rd: Tensor, pr: Tensor, t0: Tensor, t1: Tensor
) -> tuple[Tensor, ...]:
    """Shrink each ray's (ro, rd [3,K]) box segment [t0, t1] [K] to where the ray is below a
    per-ray bound on the relief (pr [W,K]): w <= 1, so h <= sum of positive bumps at their
    nearest approach to the segment's xy path + |ripple|. Above that bound g > 0, so no
    crossing is lost; the bound has margin over float rounding. Empty segments come back with
    t0 >= t1 (no crossing)."""
    nb = (pr.shape[0] - 9) // 4
    x0, y0 = ro[0] + t0 * rd[0], ro[1] + t0 * rd[1]
    sx, sy = (t1 - t0) * rd[0], (t1 - t0) * rd[1]
    inv_len2 = (sx * sx + sy * sy).clamp_min(1e-30).reciprocal()
    a, bx, by, s = pr[4 : 4 + 4 * nb].reshape(nb, 4, -1).unbind(1)  # [nb,K] each
    ex, ey = bx - x0, by - y0
    lam = ((ex * sx + ey * sy) * inv_len2).clamp(0, 1)
    dx, dy = ex - lam * sx, ey - lam * sy
    bound = (a.clamp_min(0) * torch.exp((-(dx * dx + dy * dy) * s).clamp_min(_EXP_MIN))).sum(
        0
    ) + pr[4 + 4 * nb].abs()
    bound = bound * 1.001 + 1e-5
    dz = rd[2]
    t_at = (bound - ro[2]) / torch.where(dz == 0, 1e-30, dz)
    t0 = torch.where(dz < 0, torch.maximum(t0, t_at), t0)
    t1 = torch.where(dz > 0, torch.minimum(t1, t_at), t1)
    flat_above = (dz == 0) & (ro[2] > bound)
    return t0, torch.where(flat_above, t0, t1)


def _march(ro: Tensor, rd: Tensor, pr: Tensor, t0: Tensor, tau: Tensor) -> Tensor:
    """g = z - h at t0 + tau [S,K] along rays ro, rd [3,K], for bracketing only (the crossing
    is then refined on the exact ``_height``). Everything is expanded about the segment
    start, so each Gaussian's exponent is a quadratic in tau and the ripple's phase is
    linear."""
    nb = (pr.shape[0] - 9) // 4
    cx, cy, hx, hy = pr[0], pr[1], pr[2], pr[3]
    ra, kx, ky, ph = pr[4 + 4 * nb : 8 + 4 * nb]
    dx, dy, dz = rd
    x0, y0, z0 = ro[0] + t0 * dx, ro[1] + t0 * dy, ro[2] + t0 * dz
    u = ((x0 - cx) / hx + tau * (dx / hx)).clamp(-1, 1)
    v = ((y0 - cy) / hy + tau * (dy / hy)).clamp(-1, 1)
    w = ((1 - u * u) * (1 - v * v)).square()
    hgt = ra * torch.sin(kx * x0 + ky * y0 + ph + tau * (kx * dx + ky * dy))
    a, bx, by, s = pr[4 : 4 + 4 * nb].reshape(nb, 4, -1).unbind(1)  # [nb,K] each
    ex, ey = x0 - bx, y0 - by
    q2 = (-(dx * dx + dy * dy) * s)[:, None]
    q1 = (-2 * (ex * dx + ey * dy) * s)[:, None]
    q0 = (-(ex * ex + ey * ey) * s)[:, None]
    hgt = hgt + (a[:, None] * torch.exp(((q2 * tau + q1) * tau + q0).clamp_min(_EXP_MIN))).sum(0)
    return z0 + tau * dz - w * hgt


def _surface(
    sc: _Batch, o: Tensor, d: Tensor, t: Tensor, kind: Tensor, idx: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per hit of rays o, d [3,B,N]: refined t [B,N], point, unit normal, texture coordinate
    (local frame) [3,B,N], material [B,N]."""
    b_n, n_r = t.shape
    t = t.reshape(-1).clone()
    o, d = o.reshape(3, -1), d.reshape(3, -1)
    n = torch.zeros_like(o)
    n[2] = 1.0
    m = torch.zeros_like(t, dtype=torch.long)
    kind, idx = kind.reshape(-1), idx.reshape(-1)

    def hits(k: int, mat: Tensor) -> tuple[Tensor, Tensor]:
        """Rays that hit type ``k`` and their flat (scene, index) rows; sets their material."""
        f = (kind == k).nonzero()[:, 0]
        row = torch.div(f, n_r, rounding_mode="floor") * mat.shape[1] + idx[f]
        m.index_copy_(0, f, mat.reshape(-1).index_select(0, row))
        return f, row

    def rows(x: Tensor, row: Tensor) -> Tensor:
        return x.reshape(-1, *x.shape[2:]).index_select(0, row)

    # Each type's formulas run on its own hits only (gathered, then written back).
    if sc.sph is not None:
        c, r, mat, _ = sc.sph
        fs, row = hits(SPHERE, mat)
        cc, rr = rows(c, row).T, rows(r, row)
        oc, dd = o.index_select(1, fs) - cc, d.index_select(1, fs)
        b = _dot(oc, dd)
        disc = (b * b - (_dot(oc, oc) - rr * rr)).clamp_min(0)
        t.index_copy_(0, fs, -b - disc.sqrt())  # exact re-solve for the shaded ray
    p = o + t * d
    p[2] = torch.where(kind == GROUND, 0.0, p[2])  # exactly on the plane: no z-rounding flicker
    q = p.clone()
    if sc.sph is not None:
        loc = p.index_select(1, fs) - cc
        n.index_copy_(1, fs, loc / rr)
        q.index_copy_(1, fs, loc)
    if sc.box is not None:
        c, rot, half, mat, _ = sc.box
        f, row = hits(BOX, mat)
        rr = rows(rot, row)  # [K,3,3] scene-from-box
        pc = p.index_select(1, f) - rows(c, row).T
        loc = torch.stack([_dot(pc, rr[:, :, i].T) for i in range(3)])
        ratio = loc / rows(half, row).T
        # The face is the axis of the largest |ratio| (first on ties, as argmax).
        a0, a1, a2 = ratio.abs()
        on0 = (a0 >= a1) & (a0 >= a2)
        on1 = ~on0 & (a1 >= a2)
        on = (on0, on1, ~on0 & ~on1)
        nl = torch.stack([torch.where(on[i], ratio[i].sign(), 0.0) for i in range(3)])
        n.index_copy_(1, f, torch.stack([_dot(nl, rr[:, i].T) for i in range(3)]))
        q.index_copy_(1, f, loc)
    if sc.cyl is not None:
        c, r, hh, mat, _ = sc.cyl
        f, row = hits(CYLINDER, mat)
        loc = p.index_select(1, f) - rows(c, row).T
        rad = (loc[0] * loc[0] + loc[1] * loc[1]).sqrt()
        on_cap = (loc[2].abs() / rows(hh, row)) > (rad / rows(r, row))
        inv = rad.clamp_min(1e-12).reciprocal()
        zero = torch.zeros_like(rad)
        cap_n = torch.stack([zero, zero, loc[2].sign()])
        side_n = torch.stack([loc[0] * inv, loc[1] * inv, zero])
        n.index_copy_(1, f, torch.where(on_cap, cap_n, side_n))
        q.index_copy_(1, f, loc)
    if sc.hf is not None:
        params, _, mat, _ = sc.hf
        f, row = hits(HEIGHTFIELD, mat)
        ph = p.index_select(1, f)
        _, fx, fy = sc.kernels.height(rows(params, row).T, ph[0], ph[1], grad=True)
        n.index_copy_(1, f, torch.stack([-fx, -fy, torch.ones_like(fx)]))  # type: ignore[list-item,arg-type]
    n = torch.where(_dot(n, d) > 0, -n, n)
    n = n * _dot(n, n).rsqrt()
    shape = (3, b_n, n_r)
    return t.view(b_n, n_r), p.view(shape), n.view(shape), q.view(shape), m.view(b_n, n_r)


def _hash(ix: Tensor, iy: Tensor, iz: Tensor, seed: Tensor) -> Tensor:
    """32-bit integer hash of lattice cells (int64 arithmetic: identical on CPU and CUDA)."""
    mask = 0xFFFFFFFF
    h = ((ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)) & mask
    h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
    h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
    return (h >> 16) ^ h


def _albedo(sc: _Batch, q: Tensor, m: Tensor, valid: Tensor) -> Tensor:
    """Solid procedural textures at texture coordinates q [3,B,N] of materials m [B,N]:
    solid, checker, stripes, value noise, patchwork (0 where not ``valid``)."""
    kind_t, _, pal_t, _, _, dir_t = sc.mat[:6]
    b_n, m_n = kind_t.shape
    # Flat (scene, material) rows: one index per ray serves every table.
    row = (m + torch.arange(0, b_n * m_n, m_n, device=m.device)[:, None]).reshape(-1)
    kind, freq, npal, seed = (sc.mat[i].reshape(-1).index_select(0, row) for i in (0, 1, 3, 4))
    x = q.reshape(3, -1) * freq
    present = set(kind_t.unique().tolist())
    index = torch.zeros_like(row)
    # Lattice indices only for the kinds this batch's material table has at all.
    if _KIND["checker"] in present:
        cell = torch.floor(x).int()
        index = torch.where(kind == _KIND["checker"], (cell[0] + cell[1] + cell[2]) & 1, index)
    if _KIND["patchwork"] in present:
        cell = torch.floor(x).long()
        patch = _hash(cell[0], cell[1], cell[2], seed) % npal
        index = torch.where(kind == _KIND["patchwork"], patch, index)
    if _KIND["stripes"] in present:
        band = _dot(x, dir_t.reshape(-1, 3).index_select(0, row).T)
        index = torch.where(kind == _KIND["stripes"], torch.floor(band).long() % npal, index)
    pal = pal_t.reshape(-1, 3).T  # [3, (scene, material, colour)]
    color = pal.index_select(1, row * 4 + index)
    if _NOISE in present:
        sel = ((kind == _NOISE) & valid.reshape(-1)).nonzero()[:, 0]
        if sel.numel():
            xs, ss = x.index_select(1, sel), seed.index_select(0, sel)
            base = row.index_select(0, sel) * 4
            noise = sc.kernels.noise
            value = noise(xs, ss) * 0.65 + noise(2.03 * xs, ss + 1) * 0.35
            pos = value * (npal.index_select(0, sel) - 1)
            lo = pos.floor().long().clamp(0, 2)
            c0 = pal.index_select(1, base + lo)
            c1 = pal.index_select(1, base + (lo + 1).clamp_max(3))
            color.index_copy_(1, sel, c0 + (c1 - c0) * (pos - lo))
    return torch.where(valid.reshape(-1), color, 0.0).reshape(3, b_n, -1)


def _value_noise(x: Tensor, seed: Tensor) -> Tensor:
    """Trilinear value noise in [0, 1) at x [3,K] with a smoothstep fade: lattice values are
    the top 24 bits of a 32-bit integer hash of (cell, seed).

    The hash runs in int32 (wrapping multiplication is arithmetic mod 2^32, and a logical
    shift is an arithmetic one masked): half the bytes of int64, identical on CPU and CUDA.
    Xor is bitwise, so its lattice terms are formed once per axis; the eight corners are one
    [2,2,2,K] tensor."""
    cell = torch.floor(x)
    f = x - cell
    f = f * f * (3 - 2 * f)
    c = cell.int()
    hx = c[0] * 73856093
    hy = c[1] * 19349663
    hz = c[2] * 83492791
    sd = seed.int() * _i32(2654435761)
    hx = torch.stack([hx, hx + 73856093])[:, None, None]
    hy = torch.stack([hy, hy + 19349663])[:, None]
    hz = torch.stack([hz ^ sd, (hz + 83492791) ^ sd])
    h = hx ^ hy ^ hz  # [dx, dy, dz, K]
    h = (((h >> 16) & 0xFFFF) ^ h) * 0x45D9F3B
    h = (((h >> 16) & 0xFFFF) ^ h) * 0x45D9F3B
    h = ((h >> 16) & 0xFFFF) ^ h
    v = ((h >> 8) & 0xFFFFFF).float() * (1.0 / 16777216)
    v = torch.lerp(v[0], v[1], f[0])  # [dy, dz, K]
    v = torch.lerp(v[0], v[1], f[1])  # [dz, K]
    return torch.lerp(v[0], v[1], f[2])


def _i32(v: int) -> int:
    """The int32 with the same low 32 bits as ``v``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


@dataclass(frozen=True)
class _Kernels:
    """The elementwise-heavy functions, eager or fused by torch.compile (same math)."""

    height: Callable[..., tuple[Tensor, Tensor | None, Tensor | None]]
    spheres: Callable[..., Tensor]
    boxes: Callable[..., Tensor]
    cylinders: Callable[..., Tensor]
    march: Callable[..., Tensor]
    newton: Callable[..., tuple[Tensor, ...]]
    clip: Callable[..., tuple[Tensor, ...]]
    ground: Callable[..., Tensor]
    cone: Callable[..., tuple[Tensor, ...]]
    cone_hits: Callable[..., Tensor]
    noise: Callable[..., Tensor]
    light: Callable[..., tuple[Tensor, ...]]
    mix: Callable[..., Tensor]


_EAGER = _Kernels(
    _height,
    _spheres,
    _boxes,
    _cylinders,
    _march,
    _newton,
    _clip_to_relief,
    _ground,
    _cone,
    _cone_hits,
    _value_noise,
    _light,
    _mix,
)


@functools.cache
def _compiled_kernels() -> _Kernels:
    fuse = functools.partial(torch.compile, dynamic=True)
    return _Kernels(*(fuse(getattr(_EAGER, f.name)) for f in dataclasses.fields(_Kernels)))


def _kernels(compiled: bool) -> _Kernels:
    return _compiled_kernels() if compiled else _EAGER
