"""Batched analytic ray caster for ``SceneSpec``s, in plain torch (same code on CPU and CUDA).

Every pixel of every view of every scene is one ray; the work is vectorized over scenes, rays
and primitives, with Python loops only over primitive types, bumps and ray chunks. Rays are
traced in groups of TILE x TILE pixels: each group's rays are bounded by a cone, and only the
(group, primitive) pairs whose bounding sphere meets that cone run the exact intersectors (for
primary and shadow rays alike), so each ray is tested against the few primitives it can hit;
the culling is conservative, so hits equal brute force. Ground truth is
exact by construction: depth, world points and normals come from the very hit that was
shaded. Spheres, boxes, cylinders and the ground plane are intersected in closed form;
height fields by ray marching to bracket the first crossing (only over the stretch of each
ray below a per-ray bound on the relief), then safeguarded Newton steps (bisection fallback)
to float precision, so their points lie on the analytic surface. All lights' shadow rays are
traced as one batch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attrsub.errors import ConfigError
from attrsub.scene import MAX_BUMPS, TEXTURE_KINDS, Material, SceneSpec
from attrsub.size import check_size

# Bumped whenever rendered pixels change; part of a cached dataset's key, so a cache made by
# an older renderer is never mistaken for a fresh render.
RENDER_VERSION = 2
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
NEWTON_STEPS = 6
# Shadow rays start this far (scene units) off the surface to avoid self-hits.
SHADOW_EPS = 1e-3
# Rays are culled in groups of TILE x TILE pixels (sizes are multiples of the patch size 14).
TILE = 7
INF = float("inf")


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


def render(
    specs: Sequence[SceneSpec],
    size: int,
    device: str | torch.device = "cpu",
    chunk: int = 131072,
    compiled: bool = False,
) -> dict[str, Tensor]:
    """Render every view of every scene at ``size`` x ``size``; see OUTPUT_KEYS for the dict.

    ``chunk`` is the number of rays traced at once over the whole batch (a speed knob only;
    it changes float rounding in the matmuls, never which primitive a ray hits).
    ``compiled=True`` runs the hot elementwise kernels (height field evaluation and the
    closed-form intersectors) through ``torch.compile``: tens of seconds once per process,
    then several times faster on CPU; results match eager to float rounding.
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
    return _Batch(
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


def _render(sc: _Batch, size: int, chunk: int, cull: bool = True) -> dict[str, Tensor]:
    """Trace in tile-major ray order (so every TILE x TILE pixel block is one contiguous ray
    group for culling), then restore row-major pixel order. ``cull=False`` is the brute-force
    reference: every group is tested against every primitive."""
    dev = sc.eye.device
    b_n, v_n = sc.eye.shape[:2]
    p_n = size * size
    n_rays = v_n * p_n
    tiles = size // TILE
    order = (
        torch.arange(p_n, device=dev)
        .reshape(tiles, TILE, tiles, TILE)
        .permute(0, 2, 1, 3)
        .reshape(p_n)
    )
    # Camera-frame pixel rays (z = 1), shared by all views of a scene.
    pix = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size - 0.5
    ys, xs = torch.meshgrid(pix, pix, indexing="ij")
    cam = torch.stack(
        [
            xs[None] / sc.focal[:, None, None],
            ys[None] / sc.focal[:, None, None],
            torch.ones_like(xs)[None].expand(b_n, -1, -1),
        ],
        -1,
    ).reshape(b_n, 1, p_n, 3)[:, :, order]
    inv_len = cam.norm(dim=-1).reciprocal()  # [B,1,P]: z of the unit ray = z-depth per unit length
    d_all = torch.matmul(cam * inv_len[..., None], sc.rot).reshape(b_n, n_rays, 3)
    o_all = sc.eye[:, :, None, :].expand(b_n, v_n, p_n, 3).reshape(b_n, n_rays, 3)
    zscale = inv_len.expand(b_n, v_n, p_n).reshape(b_n, n_rays)

    out_rgb = torch.empty(b_n, n_rays, 3, device=dev)
    out_alb = torch.empty(b_n, n_rays, 3, device=dev)
    out_p = torch.empty(b_n, n_rays, 3, device=dev)
    out_n = torch.empty(b_n, n_rays, 3, device=dev)
    out_t = torch.empty(b_n, n_rays, device=dev)
    group = TILE * TILE
    step = max(1, chunk // (b_n * group)) * group
    for s in range(0, n_rays, step):
        sl = slice(s, min(s + step, n_rays))
        rgb, alb, p, n, t = _shade(sc, o_all[:, sl], d_all[:, sl], cull)
        out_rgb[:, sl], out_alb[:, sl], out_p[:, sl], out_n[:, sl], out_t[:, sl] = rgb, alb, p, n, t

    inv = torch.empty_like(order)
    inv[order] = torch.arange(p_n, device=dev)

    def unsort(x: Tensor) -> Tensor:
        return x.reshape(b_n, v_n, p_n, -1)[:, :, inv].reshape(b_n, n_rays, -1)

    out_rgb, out_alb, out_p, out_n = (unsort(x) for x in (out_rgb, out_alb, out_p, out_n))
    out_t, zscale = unsort(out_t)[..., 0], unsort(zscale)[..., 0]
    valid = torch.isfinite(out_t)
    r0 = sc.rot[:, 0]
    world = torch.matmul(out_p - sc.eye[:, :1], r0.transpose(1, 2))
    normals = torch.matmul(out_n, r0.transpose(1, 2))
    depth = torch.where(valid, out_t * zscale, 0.0)
    vm = valid[..., None]
    ext, intr = _cameras(sc, size)
    hw = (b_n, v_n, size, size)
    return {
        "images": out_rgb.reshape(*hw, 3).permute(0, 1, 4, 2, 3).contiguous(),
        "albedo": (out_alb * vm).reshape(*hw, 3).permute(0, 1, 4, 2, 3).contiguous(),
        "depths": depth.reshape(hw),
        "world_points": (world * vm).reshape(*hw, 3),
        "normals": (normals * vm).reshape(*hw, 3),
        "valid": valid.reshape(hw),
        "extrinsics": ext,
        "intrinsics": intr,
    }


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
    """Trace, then Lambert + Blinn-Phong with shadow rays per light, then tonemap."""
    t, kind, idx = _trace(sc, o, d, cull=cull)
    valid = torch.isfinite(t)
    t_safe = torch.where(valid, t, 0.0)
    t_safe, p, n, q, m = _surface(sc, o, d, t_safe, kind, idx)
    t = torch.where(valid, t_safe, INF)
    albedo = _albedo(sc, q, m)
    ks = sc.mat[6].gather(1, m)[..., None]
    shin = sc.mat[7].gather(1, m)[..., None]
    # All lights at once: [B,L,N,...], traced as one batch of L x N shadow rays.
    b_n, n_r = valid.shape
    l_n = sc.light_rgb.shape[1]
    point = sc.light_point[:, :, None, None]
    vec = sc.light_vec[:, :, None, :]
    to_light = torch.where(point, vec - p[:, None], vec)
    dist = to_light.norm(dim=-1, keepdim=True)
    ldir = to_light / dist
    irr = sc.light_rgb[:, :, None, :] * torch.where(point, dist.square().reciprocal(), 1.0)
    ndl = (n[:, None] * ldir).sum(-1, keepdim=True)
    lit = valid[:, None] & (ndl[..., 0] > 0) & (irr.amax(-1) > 0)
    tmax = torch.where(point[..., 0], dist[..., 0] - SHADOW_EPS, INF)
    origin = (p + SHADOW_EPS * n)[:, None].expand(b_n, l_n, n_r, 3)
    blocked = _trace(
        sc,
        origin.reshape(b_n, l_n * n_r, 3),
        ldir.reshape(b_n, l_n * n_r, 3),
        tmax=tmax.reshape(b_n, l_n * n_r),
        active=lit.reshape(b_n, l_n * n_r),
        cull=cull,
    ).reshape(b_n, l_n, n_r)
    vis = (lit & ~blocked)[..., None]
    half = ldir - d[:, None]
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    spec = ks[:, None] * (n[:, None] * half).sum(-1, keepdim=True).clamp_min(0).pow(shin[:, None])
    light = (vis * irr * (albedo[:, None] * ndl.clamp_min(0) + spec)).sum(1)
    color = albedo * sc.ambient[:, None, :] + light
    rgb = (1 - torch.exp(-color * sc.exposure[:, None, None])).pow(1 / 2.2)
    sky = sc.sky[:, None, :] * (0.8 + 0.2 * d[..., 2:3].clamp(0, 1))
    rgb = torch.where(valid[..., None], rgb, sky).clamp(0, 1)
    return rgb, albedo, p, n, t


def _trace(
    sc: _Batch,
    o: Tensor,
    d: Tensor,
    tmax: Tensor | None = None,
    active: Tensor | None = None,
    cull: bool = True,
) -> tuple[Tensor, Tensor, Tensor] | Tensor:
    """Closest hit (t, primitive type, index) or, with ``tmax``, any-hit occlusion [B,N].

    Rays come in groups of TILE x TILE (one screen tile of one view). Each group is bounded
    by a cone (apex ball + axis + half-angle) and tested against each primitive's bounding
    sphere; the closed-form kernels then run only on the (group, primitive) pairs that pass,
    with batch := pairs, and their hits are min-reduced (or OR-ed) back per ray. The test is
    conservative, so the hits equal brute force (``cull=False``: every pair) exactly.
    """
    t_ground = _ground(o, d, sc.ground, 0.0)
    b_n, n_r = t_ground.shape
    group = TILE * TILE
    g_n = b_n * n_r // group
    og, dg = o.reshape(g_n, group, 3), d.reshape(g_n, group, 3)
    ag = None if active is None else active.reshape(g_n, group)
    tg = None if tmax is None else tmax.reshape(g_n, group)
    cone = _cone(og, dg, ag) if cull else None
    per_scene = g_n // b_n
    tmin = 0.0
    prims = _primitives(sc)
    # One column per (type, index), type-major: a dense [group, column, ray] table of hits
    # (INF / False where culled) reduces without scatters, and argmin's first-minimum rule
    # breaks ties towards the lowest (type, index).
    cols = [0]
    for _, centre, *_ in prims:
        cols.append(cols[-1] + centre.shape[1])
    if tmax is None:
        table = torch.full((g_n, cols[-1], group), INF, device=d.device)
    else:
        table = torch.zeros((g_n, cols[-1], group), dtype=torch.bool, device=d.device)
    for j, (kind, centre, radius, ok, params) in enumerate(prims):
        if cone is None:
            cand = ok.repeat_interleave(per_scene, 0)
        else:
            rep = (b_n, per_scene, *centre.shape[1:])
            c_g = centre[:, None].expand(rep).reshape(g_n, *centre.shape[1:])
            r_g = radius[:, None].expand(rep[:3]).reshape(g_n, -1)
            cand = _cone_hits(*cone, c_g, r_g) & ok.repeat_interleave(per_scene, 0)
        gi, mi = cand.nonzero(as_tuple=True)
        if gi.numel() == 0:
            continue
        bi = gi // per_scene
        po, pd = og[gi], dg[gi]
        pp = [x[bi, mi][:, None] for x in params]
        true = torch.ones(gi.shape[0], 1, dtype=torch.bool, device=d.device)
        if kind == SPHERE:
            h = sc.kernels.spheres(po, pd, *pp, true, tmin)
        elif kind == BOX:
            h = sc.kernels.boxes(po, pd, *pp, true, tmin)
        elif kind == CYLINDER:
            h = sc.kernels.cylinders(po, pd, *pp, true, tmin)
        else:
            # Last type: skip rays something nearer (closest hit) or anything (any-hit) has.
            tgr = t_ground.reshape(g_n, group)
            if tmax is None:
                near = table[:, : cols[j]].amin(1) if cols[j] else tgr
                cut, act = torch.minimum(near, tgr)[gi], None
            else:
                free = ~table[:, : cols[j]].any(1) & (tgr >= tg)  # type: ignore[operator]
                cut, act = None, (free if ag is None else free & ag)[gi]
            h = _heightfields(
                sc.kernels, po, pd, *pp, true, tmin, None if tg is None else tg[gi], act, cut
            )
        h = h[..., 0]
        table[gi, cols[j] + mi] = h if tmax is None else h < tg[gi]  # type: ignore[index]
    if tmax is not None:
        return _finish(t_ground, (table.any(1).reshape(b_n, n_r),), tmax, active)
    if not prims:
        return _finish(t_ground, None, tmax, active)
    best_t, col = table.min(1)
    spans = list(itertools.pairwise(cols))
    kinds = torch.cat(
        [
            torch.full((c1 - c0,), p[0], device=d.device)
            for p, (c0, c1) in zip(prims, spans, strict=True)
        ]
    )
    index = torch.cat([torch.arange(c1 - c0, device=d.device) for c0, c1 in spans])
    hit = torch.isfinite(best_t)
    kind_hit = torch.where(hit, kinds[col], 0).reshape(b_n, n_r)
    index_hit = torch.where(hit, index[col], 0).reshape(b_n, n_r)
    return _finish(t_ground, (best_t.reshape(b_n, n_r), kind_hit, index_hit), tmax, active)


def _primitives(sc: _Batch) -> list[tuple[int, Tensor, Tensor, Tensor, tuple[Tensor, ...]]]:
    """Per primitive type: kind, bounding spheres (centre [B,M,3], radius [B,M]), ok, and the
    kernel's parameter tensors [B,M,...]."""
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
    return out


def _angle(u: Tensor, v: Tensor) -> Tensor:
    """Angle between vectors, accurate near 0 and pi (atan2 rather than acos)."""
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def _cone(o: Tensor, d: Tensor, active: Tensor | None) -> tuple[Tensor, ...]:
    """Bound each group's (active) rays [G,T]: apex centre, apex radius, unit axis, half-angle,
    and whether any ray is active. Every ray starts within the apex ball, heading within the
    half-angle of the axis."""
    if active is None:
        active = torch.ones(o.shape[:2], dtype=torch.bool, device=o.device)
    w = active[..., None]
    cnt = active.sum(1, keepdim=True).clamp_min(1)
    apex = torch.where(w, o, 0.0).sum(1) / cnt
    rho = torch.where(active, (o - apex[:, None]).norm(dim=-1), 0.0).amax(1)
    axis = torch.where(w, d, 0.0).sum(1)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    cos = torch.where(active, (d * axis[:, None]).sum(-1), 1.0).amin(1)
    theta = torch.acos(cos.clamp(-1.0, 1.0))  # acos is coarse near 0: _cone_hits adds margin
    return apex, rho, axis, theta, active.any(1)


def _cone_hits(
    apex: Tensor, rho: Tensor, axis: Tensor, theta: Tensor, live: Tensor, c: Tensor, r: Tensor
) -> Tensor:
    """Conservative: can any ray of the group [G] pass through the sphere (c, r) [G,M]?

    A ray from o (|o - apex| <= rho) along d hits the sphere only if the ray from the apex
    along d passes within r + rho of c, i.e. angle(c - apex, d) <= asin((r + rho) / |c - apex|),
    so angle(c - apex, axis) <= theta + that. Margins cover float rounding of both tests.
    """
    rr = (r + rho[:, None]) * 1.001 + 1e-4
    w = c - apex[:, None]
    dist = w.norm(dim=-1)
    ang = _angle(w, axis[:, None].expand_as(w))
    lim = theta[:, None] + torch.asin((rr / dist.clamp_min(1e-20)).clamp(max=1.0)) + 1e-3
    return live[:, None] & ((dist <= rr) | (ang <= lim))


def _finish(
    t_ground: Tensor, objects: tuple[Tensor, ...] | None, tmax: Tensor | None, active: Tensor | None
) -> tuple[Tensor, Tensor, Tensor] | Tensor:
    """Merge the ground with the objects' closest hit, or OR their occlusion."""
    if tmax is not None:
        blocked = t_ground < tmax
        if objects is not None:
            blocked |= objects[0]
        return blocked if active is None else blocked & active
    zeros = torch.zeros_like(t_ground, dtype=torch.long)
    if objects is None:
        return t_ground, zeros, zeros
    t_obj, k_obj, i_obj = objects
    ground_wins = t_ground <= t_obj
    return (
        torch.where(ground_wins, t_ground, t_obj),
        torch.where(ground_wins, GROUND, k_obj),
        torch.where(ground_wins, 0, i_obj),
    )


def _ground(o: Tensor, d: Tensor, half: Tensor, tmin: float) -> Tensor:
    t = -o[..., 2] / d[..., 2]
    lim = half[:, None]
    hit = (d[..., 2] < 0) & (t > tmin)
    hit &= (o[..., 0] + t * d[..., 0]).abs() <= lim
    hit &= (o[..., 1] + t * d[..., 1]).abs() <= lim
    return torch.where(hit, t, INF)


def _spheres(o: Tensor, d: Tensor, c: Tensor, r: Tensor, ok: Tensor, tmin: float) -> Tensor:
    ct = c.transpose(1, 2)
    b = (o * d).sum(-1, keepdim=True) - torch.bmm(d, ct)
    q = (o * o).sum(-1, keepdim=True) - 2 * torch.bmm(o, ct) + ((c * c).sum(-1) - r * r)[:, None, :]
    disc = b * b - q
    t = -b - disc.clamp_min(0).sqrt()
    hit = (disc > 0) & (t > tmin) & ok[:, None, :]
    return torch.where(hit, t, INF)


def _boxes(
    o: Tensor, d: Tensor, c: Tensor, rot: Tensor, half: Tensor, ok: Tensor, tmin: float
) -> Tensor:
    b_n, n_b = c.shape[:2]
    m = rot.permute(0, 2, 1, 3).reshape(b_n, 3, n_b * 3)  # d @ m = every box-local direction
    c_loc = torch.einsum("bmk,bmkj->bmj", c, rot).reshape(b_n, 1, n_b * 3)
    dl = torch.bmm(d, m)
    inv = dl.masked_fill_(dl == 0, 1e-20).reciprocal()  # axis-parallel rays: no inf - inf
    tc = (c_loc - torch.bmm(o, m)) * inv
    hw = (half.reshape(b_n, 1, n_b * 3) * inv).abs()
    shape = (*d.shape[:2], n_b, 3)
    tn = (tc - hw).view(shape).amax(-1)
    tf = (tc + hw).view(shape).amin(-1)
    hit = (tn <= tf) & (tn > tmin) & ok[:, None, :]
    return torch.where(hit, tn, INF)


def _cylinders(
    o: Tensor, d: Tensor, c: Tensor, r: Tensor, hh: Tensor, ok: Tensor, tmin: float
) -> Tensor:
    ox = o[..., 0:1] - c[:, None, :, 0]
    oy = o[..., 1:2] - c[:, None, :, 1]
    oz = o[..., 2:3] - c[:, None, :, 2]
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    r2 = (r * r)[:, None, :]
    h = hh[:, None, :]
    a = dx * dx + dy * dy
    bq = ox * dx + oy * dy
    disc = bq * bq - a * (ox * ox + oy * oy - r2)
    ts = (-bq - disc.clamp_min(0).sqrt()) / a
    side = (disc > 0) & (ts > tmin) & ((oz + ts * dz).abs() <= h)
    tcap = (torch.where(dz < 0, h, -h) - oz) / dz
    xc, yc = ox + tcap * dx, oy + tcap * dy
    cap = (xc * xc + yc * yc <= r2) & (tcap > tmin)
    t = torch.minimum(torch.where(side, ts, INF), torch.where(cap, tcap, INF))
    return torch.where(ok[:, None, :], t, INF)


def _height(
    params: Tensor, x: Tensor, y: Tensor, grad: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Height (and gradient) of height fields ``params`` [M,W] at points x, y [M,S]."""
    cx, cy, hx, hy = (params[:, i, None] for i in range(4))
    nb = (params.shape[1] - 9) // 4
    bumps = params[:, 4 : 4 + 4 * nb].reshape(-1, 1, nb, 4)
    rip = params[:, 4 + 4 * nb : 8 + 4 * nb]
    u = ((x - cx) / hx).clamp(-1, 1)
    v = ((y - cy) / hy).clamp(-1, 1)
    wu, wv = 1 - u * u, 1 - v * v
    w = (wu * wv).square()
    ex = x[..., None] - bumps[..., 1]
    ey = y[..., None] - bumps[..., 2]
    g = bumps[..., 0] * torch.exp(-(ex * ex + ey * ey) * bumps[..., 3])
    phase = rip[:, 1, None] * x + rip[:, 2, None] * y + rip[:, 3, None]
    hgt = g.sum(-1) + rip[:, 0, None] * torch.sin(phase)
    if not grad:
        return w * hgt, None, None
    gk = -2 * g * bumps[..., 3]
    cos = rip[:, 0, None] * torch.cos(phase)
    hx_ = (gk * ex).sum(-1) + cos * rip[:, 1, None]
    hy_ = (gk * ey).sum(-1) + cos * rip[:, 2, None]
    wx = -4 * u * wu * wv * wv / hx
    wy = -4 * v * wv * wu * wu / hy
    return w * hgt, wx * hgt + w * hx_, wy * hgt + w * hy_


def _heightfields(
    kernels: _Kernels,
    o: Tensor,
    d: Tensor,
    params: Tensor,
    top: Tensor,
    ok: Tensor,
    tmin: float,
    tmax: Tensor | None,
    active: Tensor | None,
    tcut: Tensor | None = None,
) -> Tensor:
    """March each ray through each field's bounding box; refine the first downward crossing.

    Rays whose box entry is at or beyond ``tcut`` [B,N] are skipped: a hit already found
    there is at least as near and wins ties, so marching them cannot change the result.
    """
    cx, cy, hx, hy = (params[:, None, :, i] for i in range(4))
    inv = d.masked_fill(d == 0, 1e-20).reciprocal()[..., None, :]  # [B,N,1,3]
    lo = torch.stack([cx - hx, cy - hy, torch.zeros_like(cx)], -1)
    hi = torch.stack([cx + hx, cy + hy, top[:, None, :]], -1)
    t1 = (lo - o[..., None, :]) * inv
    t2 = (hi - o[..., None, :]) * inv
    tn = torch.minimum(t1, t2).amax(-1).clamp_min(tmin)
    tf = torch.maximum(t1, t2).amin(-1)
    if tmax is not None:
        tf = torch.minimum(tf, tmax[..., None])
    cand = (tn < tf) & ok[:, None, :]
    if active is not None:
        cand &= active[..., None]
    if tcut is not None:
        cand &= tn < tcut[..., None]
    out = torch.full(cand.shape, INF, device=d.device)
    bi, ni, hi_ = cand.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return out
    ro, rd, pr = o[bi, ni], d[bi, ni], params[bi, hi_]
    t0, t1_ = _clip_to_relief(ro, rd, pr, tn[bi, ni, hi_], tf[bi, ni, hi_])
    keep = (t0 < t1_).nonzero()[:, 0]
    bi, ni, hi_, ro, rd, pr, t0, t1_ = (x[keep] for x in (bi, ni, hi_, ro, rd, pr, t0, t1_))
    n_steps = MARCH_STEPS if tmax is None else SHADOW_MARCH_STEPS
    steps = torch.linspace(0, 1, n_steps + 1, device=d.device)
    ts = (t1_ - t0)[:, None] * steps
    gs = kernels.march(ro, rd, pr, t0, ts)
    ts = ts + t0[:, None]
    cross = (gs[:, :-1] > 0) & (gs[:, 1:] <= 0)
    has = cross.any(1)
    if tmax is not None:
        out[bi[has], ni[has], hi_[has]] = 0.0  # any crossing inside [tmin, tmax) occludes
        return out
    # Only rays that cross need refining (the rest keep INF).
    bi, ni, hi_, ro, rd, pr = bi[has], ni[has], hi_[has], ro[has], rd[has], pr[has]
    ts, gs, cross = ts[has], gs[has], cross[has]
    k = cross.to(torch.uint8).argmax(1, keepdim=True)
    a, b = ts.gather(1, k), ts.gather(1, k + 1)
    ga, gb = gs.gather(1, k), gs.gather(1, k + 1)
    t = a + (b - a) * ga / (ga - gb).clamp_min(1e-30)
    # Safeguarded Newton: keep a sign bracket; a step that leaves it is replaced by the
    # bracket's secant point, alternating with its midpoint so one-sided stalls cannot happen.
    for it in range(NEWTON_STEPS):
        x = ro[:, None, 0] + t * rd[:, None, 0]
        y = ro[:, None, 1] + t * rd[:, None, 1]
        f, fx, fy = kernels.height(pr, x, y, grad=True)
        gv = ro[:, None, 2] + t * rd[:, None, 2] - f
        above = gv > 0
        a, b = torch.where(above, t, a), torch.where(above, b, t)
        ga, gb = torch.where(above, gv, ga), torch.where(above, gb, gv)
        slope = rd[:, None, 2] - fx * rd[:, None, 0] - fy * rd[:, None, 1]  # type: ignore[operator]
        step = t - gv / torch.where(slope.abs() > 1e-20, slope, -1e-20)
        fallback = a + (b - a) * ga / (ga - gb).clamp_min(1e-30) if it % 2 else 0.5 * (a + b)
        t = torch.where((step > a) & (step < b), step, fallback)
    out[bi, ni, hi_] = t[:, 0]
    return out


def _bumps(pr: Tensor) -> tuple[Tensor, ...]:
    """Bump columns (a, x, y, 1/(2 sigma^2)) [K,nb] of height-field rows [K,W]."""
    nb = (pr.shape[1] - 9) // 4
    b = pr[:, 4 : 4 + 4 * nb].reshape(-1, nb, 4)
    return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def _clip_to_relief(
    ro: Tensor, rd: Tensor, pr: Tensor, t0: Tensor, t1: Tensor
) -> tuple[Tensor, ...]:
    """Shrink each ray's box segment [t0, t1] [K] to where the ray is below a per-ray bound on
    the relief: w <= 1, so h <= sum of positive bumps at their nearest approach to the
    segment's xy path + |ripple|. Above that bound g > 0, so no crossing is lost; the bound has
    margin over float rounding. Empty segments come back with t0 >= t1 (no crossing)."""
    a, bx, by, s = _bumps(pr)
    x0, y0 = ro[:, 0] + t0 * rd[:, 0], ro[:, 1] + t0 * rd[:, 1]
    sx, sy = (t1 - t0) * rd[:, 0], (t1 - t0) * rd[:, 1]
    ex, ey = bx - x0[:, None], by - y0[:, None]
    lam = (ex * sx[:, None] + ey * sy[:, None]) / (sx * sx + sy * sy).clamp_min(1e-30)[:, None]
    lam = lam.clamp(0, 1)
    dx, dy = ex - lam * sx[:, None], ey - lam * sy[:, None]
    bound = (a.clamp_min(0) * torch.exp(-(dx * dx + dy * dy) * s)).sum(1) + pr[
        :, 4 * a.shape[1] + 4
    ].abs()
    bound = bound * 1.001 + 1e-5
    dz = rd[:, 2]
    t_at = (bound - ro[:, 2]) / torch.where(dz == 0, 1e-30, dz)
    t0 = torch.where(dz < 0, torch.maximum(t0, t_at), t0)
    t1 = torch.where(dz > 0, torch.minimum(t1, t_at), t1)
    flat_above = (dz == 0) & (ro[:, 2] > bound)
    return t0, torch.where(flat_above, t0, t1)


def _march(ro: Tensor, rd: Tensor, pr: Tensor, t0: Tensor, tau: Tensor) -> Tensor:
    """g = z - h at t0 + tau [K,S] along rays [K], for bracketing only (the crossing is then
    refined on the exact ``_height``). Everything is expanded about the segment start, so
    each Gaussian's exponent is a quadratic in tau and the ripple's phase is linear."""
    a, bx, by, s = _bumps(pr)
    cx, cy, hx, hy = pr[:, 0], pr[:, 1], pr[:, 2], pr[:, 3]
    rip = pr[:, 4 + 4 * a.shape[1] : 8 + 4 * a.shape[1]]
    dx, dy, dz = rd[:, 0], rd[:, 1], rd[:, 2]
    x0, y0, z0 = ro[:, 0] + t0 * dx, ro[:, 1] + t0 * dy, ro[:, 2] + t0 * dz
    u = ((x0 - cx) / hx)[:, None] + tau * (dx / hx)[:, None]
    v = ((y0 - cy) / hy)[:, None] + tau * (dy / hy)[:, None]
    u, v = u.clamp(-1, 1), v.clamp(-1, 1)
    w = ((1 - u * u) * (1 - v * v)).square()
    phase0 = rip[:, 1] * x0 + rip[:, 2] * y0 + rip[:, 3]
    hgt = rip[:, 0, None] * torch.sin(
        phase0[:, None] + tau * (rip[:, 1] * dx + rip[:, 2] * dy)[:, None]
    )
    ex, ey = x0[:, None] - bx, y0[:, None] - by
    q2 = -(dx * dx + dy * dy)[:, None] * s
    q1 = -2 * (ex * dx[:, None] + ey * dy[:, None]) * s
    q0 = -(ex * ex + ey * ey) * s
    for k in range(a.shape[1]):
        e = (q2[:, k, None] * tau + q1[:, k, None]) * tau + q0[:, k, None]
        hgt = hgt + a[:, k, None] * torch.exp(e)
    return z0[:, None] + tau * dz[:, None] - w * hgt


def _surface(
    sc: _Batch, o: Tensor, d: Tensor, t: Tensor, kind: Tensor, idx: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per hit: refined t, point, unit normal, texture coordinate (local frame), material."""
    t = t.clone()
    n = torch.zeros_like(o)
    n[..., 2] = 1.0
    m = torch.zeros_like(idx)
    # Each type's formulas run on its own hits only (gathered, then written back).
    if sc.sph is not None:
        c, r, mat, _ = sc.sph
        bi, ri = (kind == SPHERE).nonzero(as_tuple=True)
        if bi.numel():
            oo, dd, j = o[bi, ri], d[bi, ri], idx[bi, ri]
            cc, rr = c[bi, j], r[bi, j]
            oc = oo - cc
            b = (oc * dd).sum(-1)
            disc = (b * b - ((oc * oc).sum(-1) - rr * rr)).clamp_min(0)
            t[bi, ri] = -b - disc.sqrt()  # exact re-solve for the shaded ray
            m[bi, ri] = mat[bi, j]
    p = o + t[..., None] * d
    q = p.clone()
    if sc.sph is not None and bi.numel():
        loc = p[bi, ri] - cc
        n[bi, ri] = loc / rr[..., None]
        q[bi, ri] = loc
    if sc.box is not None:
        c, rot, half, mat, _ = sc.box
        bi, ri = (kind == BOX).nonzero(as_tuple=True)
        if bi.numel():
            j = idx[bi, ri]
            rr = rot[bi, j]
            loc = ((p[bi, ri] - c[bi, j])[..., :, None] * rr).sum(-2)
            ratio = loc / half[bi, j]
            face = ratio.abs().argmax(-1, keepdim=True)
            nl = torch.zeros_like(loc).scatter(-1, face, ratio.gather(-1, face).sign())
            n[bi, ri] = (rr * nl[..., None, :]).sum(-1)
            q[bi, ri] = loc
            m[bi, ri] = mat[bi, j]
    if sc.cyl is not None:
        c, r, hh, mat, _ = sc.cyl
        bi, ri = (kind == CYLINDER).nonzero(as_tuple=True)
        if bi.numel():
            j = idx[bi, ri]
            loc = p[bi, ri] - c[bi, j]
            rad = loc[..., :2].norm(dim=-1)
            on_cap = (loc[..., 2].abs() / hh[bi, j]) > (rad / r[bi, j])
            side_n = torch.cat(
                [loc[..., :2] / rad.clamp_min(1e-12)[..., None], torch.zeros_like(rad)[..., None]],
                -1,
            )
            cap_n = torch.zeros_like(loc)
            cap_n[..., 2] = loc[..., 2].sign()
            n[bi, ri] = torch.where(on_cap[..., None], cap_n, side_n)
            q[bi, ri] = loc
            m[bi, ri] = mat[bi, j]
    if sc.hf is not None:
        params, _, mat, _ = sc.hf
        bi, ri = (kind == HEIGHTFIELD).nonzero(as_tuple=True)
        if bi.numel():
            hx, hy = p[bi, ri, 0, None], p[bi, ri, 1, None]
            _, fx, fy = sc.kernels.height(params[bi, idx[bi, ri]], hx, hy, grad=True)
            nh = torch.cat([-fx, -fy, torch.ones_like(fx)], -1)  # type: ignore[operator]
            n[bi, ri] = nh / nh.norm(dim=-1, keepdim=True)
            m[bi, ri] = mat[bi, idx[bi, ri]]
    n = torch.where(((n * d).sum(-1, keepdim=True) > 0), -n, n)
    return t, p, n / n.norm(dim=-1, keepdim=True), q, m


def _hash(ix: Tensor, iy: Tensor, iz: Tensor, seed: Tensor) -> Tensor:
    """32-bit integer hash of lattice cells (int64 arithmetic: identical on CPU and CUDA)."""
    mask = 0xFFFFFFFF
    h = ((ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)) & mask
    h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
    h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
    return (h >> 16) ^ h


def _albedo(sc: _Batch, q: Tensor, m: Tensor) -> Tensor:
    """Solid procedural textures: solid, checker, stripes, value noise, patchwork."""
    kind_t, freq_t, pal_t, npal_t, seed_t, dir_t = sc.mat[:6]
    kind = kind_t.gather(1, m)
    freq = freq_t.gather(1, m)[..., None]
    npal = npal_t.gather(1, m)
    seed = seed_t.gather(1, m)
    x = q * freq
    cell = torch.floor(x).long()
    index = torch.zeros_like(kind)
    # Lattice indices only for the kinds this batch's material table has at all.
    if bool((kind_t == _KIND["checker"]).any()):
        index = torch.where(kind == _KIND["checker"], cell.sum(-1) % 2, index)
    if bool((kind_t == _KIND["stripes"]).any()):
        band = (x * dir_t.gather(1, m[..., None].expand(-1, -1, 3))).sum(-1)
        index = torch.where(kind == _KIND["stripes"], torch.floor(band).long() % npal, index)
    if bool((kind_t == _KIND["patchwork"]).any()):
        patch = _hash(cell[..., 0], cell[..., 1], cell[..., 2], seed) % npal
        index = torch.where(kind == _KIND["patchwork"], patch, index)
    b_n, n_r = m.shape
    pal = (
        pal_t.reshape(b_n, -1, 12)
        .gather(1, m[..., None].expand(-1, -1, 12))
        .reshape(b_n, n_r, 4, 3)
    )
    color = pal.gather(2, index[..., None, None].expand(-1, -1, 1, 3))[..., 0, :]
    sel = kind == _NOISE
    if bool(sel.any()):
        xs, ps, ns, ss = x[sel], pal[sel], npal[sel], seed[sel]
        noise = sc.kernels.noise
        value = noise(xs, ss) * 0.65 + noise(2.03 * xs, ss + 1) * 0.35
        pos = value * (ns - 1)
        lo = pos.floor().long().clamp(0, 2)
        frac = (pos - lo)[:, None]
        c0 = ps.gather(1, lo[:, None, None].expand(-1, 1, 3))[:, 0]
        c1 = ps.gather(1, (lo + 1).clamp_max(3)[:, None, None].expand(-1, 1, 3))[:, 0]
        color[sel] = c0 + (c1 - c0) * frac
    return color


def _value_noise(x: Tensor, seed: Tensor) -> Tensor:
    """Trilinear value noise in [0, 1] with a smoothstep fade.

    Same values as hashing each corner with ``_hash``: xor is bitwise, so its lattice terms
    are formed once per axis and shared by the eight corners."""
    cell = torch.floor(x)
    f = x - cell
    f = f * f * (3 - 2 * f)
    c = cell.long()
    mask = 0xFFFFFFFF
    hx = (c[:, 0] * 73856093, (c[:, 0] + 1) * 73856093)
    hy = (c[:, 1] * 19349663, (c[:, 1] + 1) * 19349663)
    sd = seed * 2654435761
    hz = ((c[:, 2] * 83492791) ^ sd, ((c[:, 2] + 1) * 83492791) ^ sd)
    out = torch.zeros_like(f[..., 0])
    for dx in (0, 1):
        for dy in (0, 1):
            hxy = hx[dx] ^ hy[dy]
            for dz in (0, 1):
                h = (hxy ^ hz[dz]) & mask
                h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
                h = (((h >> 16) ^ h) * 0x45D9F3B) & mask
                v = ((h >> 16) ^ h).float() / 4294967296.0
                wx = f[..., 0] if dx else 1 - f[..., 0]
                wy = f[..., 1] if dy else 1 - f[..., 1]
                wz = f[..., 2] if dz else 1 - f[..., 2]
                out = out + v * wx * wy * wz
    return out


@dataclass(frozen=True)
class _Kernels:
    """The elementwise-heavy functions, eager or fused by torch.compile (same math)."""

    height: Callable[..., tuple[Tensor, Tensor | None, Tensor | None]]
    spheres: Callable[..., Tensor]
    boxes: Callable[..., Tensor]
    cylinders: Callable[..., Tensor]
    march: Callable[..., Tensor]
    noise: Callable[..., Tensor]


_EAGER = _Kernels(_height, _spheres, _boxes, _cylinders, _march, _value_noise)


@functools.cache
def _compiled_kernels() -> _Kernels:
    fuse = functools.partial(torch.compile, dynamic=True)
    return _Kernels(*(fuse(getattr(_EAGER, f.name)) for f in dataclasses.fields(_Kernels)))


def _kernels(compiled: bool) -> _Kernels:
    return _compiled_kernels() if compiled else _EAGER
