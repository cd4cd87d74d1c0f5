"""Frames/second of attrsub's analytic torch ray caster beside a mesh ray caster.

The alternative tessellates the same scenes (trimesh) and casts primary and shadow rays with
Embree (``pip install trimesh embreex``), then shades with our own albedo and Blinn-Phong
code, so the comparison isolates geometry queries. It also reports how well the two depth
maps agree (tessellation error only). Without trimesh/embreex it prints a note and skips.

    python bench/render.py [--scenes 8] [--views 4] [--repeats 3] [--threads 2]
    python bench/render.py --device cuda --sizes 518 --dataset paper   # the paper's sizes
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attrsub.scenes import render as R
from attrsub.scenes.factors import FactorSpec, sample_scenes
from attrsub.scenes.spec import SceneSpec

SIZES = (56, 112, 224)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_dataset(preset_name: str, device: str) -> None:
    """Wall time to render one factor dataset of a preset's mining size (into a temp cache)."""
    import tempfile

    from attrsub.data.datasets import DatasetSpec, render_factor_dataset
    from sweeps.config import load_preset

    p = load_preset(preset_name)
    spec = DatasetSpec("texture", scenes=p.scenes["mine"], views=p.views, size=p.size)
    with tempfile.TemporaryDirectory() as tmp:
        _sync()
        start = time.perf_counter()
        render_factor_dataset(spec, tmp, device=device)
        _sync()
        wall = time.perf_counter() - start
    print(f"one {preset_name} factor dataset ({spec.scenes} scenes x {spec.views} views at "
          f"{spec.size} px) on {device}: {wall:.1f} s")


def _mesh_scene(spec: SceneSpec) -> tuple[Any, np.ndarray, np.ndarray]:
    """An Embree BVH over one trimesh of the whole scene (built once, outside the timing),
    plus, per face, the primitive type and index."""
    import trimesh

    sc = R._pack([spec], torch.device("cpu"))
    meshes, kinds, idxs = [], [], []

    def add(mesh: trimesh.Trimesh, kind: int, idx: int) -> None:
        meshes.append(mesh)
        kinds.append(np.full(len(mesh.faces), kind))
        idxs.append(np.full(len(mesh.faces), idx))

    half = float(sc.ground[0])
    ground = trimesh.Trimesh(
        vertices=[[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
    )
    add(ground, R.GROUND, 0)
    if sc.sph is not None:
        c, r, _, ok = sc.sph
        for i in range(int(ok[0].sum())):
            m = trimesh.creation.icosphere(subdivisions=3, radius=float(r[0, i]))
            add(m.apply_translation(c[0, i].numpy()), R.SPHERE, i)
    if sc.box is not None:
        c, rot, h, _, ok = sc.box
        for i in range(int(ok[0].sum())):
            tf = np.eye(4)
            tf[:3, :3], tf[:3, 3] = rot[0, i].numpy(), c[0, i].numpy()
            add(trimesh.creation.box(extents=2 * h[0, i].numpy(), transform=tf), R.BOX, i)
    if sc.cyl is not None:
        c, r, hh, _, ok = sc.cyl
        for i in range(int(ok[0].sum())):
            m = trimesh.creation.cylinder(
                radius=float(r[0, i]), height=2 * float(hh[0, i]), sections=48
            )
            add(m.apply_translation(c[0, i].numpy()), R.CYLINDER, i)
    if sc.hf is not None:
        params, _, _, ok = sc.hf
        n = 96
        for i in range(int(ok[0].sum())):
            p = params[0, i]
            gx = torch.linspace(-1, 1, n) * p[2] + p[0]
            gy = torch.linspace(-1, 1, n) * p[3] + p[1]
            yy, xx = torch.meshgrid(gy, gx, indexing="ij")
            z = R._height(p[:, None], xx.reshape(-1), yy.reshape(-1))[0]  # columns [W,1]
            verts = torch.stack([xx.reshape(-1), yy.reshape(-1), z.reshape(-1)], -1).numpy()
            q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
            faces = np.concatenate(
                [np.stack([q, q + 1, q + n + 1], 1), np.stack([q, q + n + 1, q + n], 1)]
            )
            add(trimesh.Trimesh(vertices=verts, faces=faces, process=False), R.HEIGHTFIELD, i)
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    mesh = trimesh.util.concatenate(meshes)
    return RayMeshIntersector(mesh), np.concatenate(kinds), np.concatenate(idxs)


def _embree_render(
    spec: SceneSpec, caster: Any, kinds: np.ndarray, idxs: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embree primary + shadow rays, our albedo and shading; returns images and z-depths."""
    sc = R._pack([spec], torch.device("cpu"))
    v_n, p_n = spec.views, size * size
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    ys, xs = torch.meshgrid(pix, pix, indexing="ij")
    cam = torch.stack([xs / sc.focal[0], ys / sc.focal[0], torch.ones_like(xs)], -1).reshape(
        1, p_n, 3
    )
    zscale = cam.norm(dim=-1).reciprocal()
    d = (torch.matmul(cam * zscale[..., None], sc.rot[0])).reshape(1, v_n * p_n, 3)
    o = sc.eye[0][:, None, :].expand(v_n, p_n, 3).reshape(1, v_n * p_n, 3)
    tri, ray, loc = caster.intersects_id(
        o[0].numpy(), d[0].numpy(), multiple_hits=False, return_locations=True
    )
    n_r = v_n * p_n
    t = torch.full((1, n_r), math.inf)
    t[0, ray] = torch.from_numpy(((loc - o[0, ray].numpy()) * d[0, ray].numpy()).sum(-1)).float()
    kind = torch.zeros(1, n_r, dtype=torch.long)
    idx = torch.zeros(1, n_r, dtype=torch.long)
    kind[0, ray], idx[0, ray] = torch.from_numpy(kinds[tri]), torch.from_numpy(idxs[tri])
    normal = torch.zeros(1, n_r, 3)
    normal[0, ray] = torch.from_numpy(np.asarray(caster.mesh.face_normals)[tri]).float()
    normal = torch.where((normal * d).sum(-1, keepdim=True) > 0, -normal, normal)
    valid = torch.isfinite(t)
    p = o + torch.where(valid, t, 0.0)[..., None] * d
    # The renderer's shading helpers take component-first vectors [3,B,N].
    _, _, _, q, m = R._surface(
        sc, o.permute(2, 0, 1), d.permute(2, 0, 1), torch.where(valid, t, 0.0), kind, idx
    )
    albedo = R._albedo(sc, q, m, valid).permute(1, 2, 0)
    ks, shin = sc.mat[6].gather(1, m)[..., None], sc.mat[7].gather(1, m)[..., None]
    color = albedo * sc.ambient[:, None, :]
    origin = p + R.SHADOW_EPS * normal
    for li in range(sc.light_rgb.shape[1]):
        point = sc.light_point[:, li, None, None]
        vec = sc.light_vec[:, li, None, :]
        to_light = torch.where(point, vec - p, vec)
        dist = to_light.norm(dim=-1, keepdim=True)
        ldir = to_light / dist
        irr = sc.light_rgb[:, li, None, :] * torch.where(point, dist.square().reciprocal(), 1.0)
        ndl = (normal * ldir).sum(-1, keepdim=True)
        lit = valid & (ndl[..., 0] > 0)
        sel = lit[0].nonzero()[:, 0].numpy()
        blocked = torch.zeros_like(lit)
        if len(sel):
            _, hit_ray, hit_loc = caster.intersects_id(
                origin[0, sel].numpy(),
                ldir[0, sel].numpy(),
                multiple_hits=False,
                return_locations=True,
            )
            far = np.linalg.norm(hit_loc - origin[0, sel][hit_ray].numpy(), axis=-1)
            near = (
                far < dist[0, sel][hit_ray, 0].numpy()
                if bool(point.any())
                else np.ones(len(far), bool)
            )
            blocked[0, torch.from_numpy(sel[hit_ray[near]])] = True
        vis = (lit & ~blocked)[..., None]
        half = ldir - d
        half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        spec_term = ks * (normal * half).sum(-1, keepdim=True).clamp_min(0).pow(shin)
        color = color + vis * irr * (albedo * ndl.clamp_min(0) + spec_term)
    rgb = (1 - torch.exp(-color * sc.exposure[:, None, None])).pow(1 / 2.2).clamp(0, 1)
    depth = torch.where(valid, t * zscale.expand(v_n, p_n).reshape(1, -1), 0.0)
    return rgb, depth.reshape(v_n, size, size)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--compiled", action="store_true", help="also time render(compiled=True)")
    ap.add_argument("--device", default="cpu", help="where attrsub renders: cpu or cuda")
    ap.add_argument("--dataset", default=None, metavar="PRESET",
                    help="also time rendering one factor dataset of PRESET's mining size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # Narrow geometry (<= 10 primitives) and broad lighting (1-3 lights, shadows from each).
    specs = sample_scenes(FactorSpec("lighting", scenes=args.scenes, views=args.views, seed=0))
    prims = max(s.primitive_count() for s in specs)
    lights = max(len(s.lighting.lights) for s in specs)
    frames = args.scenes * args.views
    print(
        f"{args.scenes} scenes x {args.views} views, "
        f"<= {prims} primitives + ground, <= {lights} lights"
    )
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs")
    try:
        import embreex  # noqa: F401
        import trimesh  # noqa: F401

        meshes = [_mesh_scene(s) for s in specs]
    except ImportError as err:
        meshes = None
        print(f"note: mesh alternative skipped ({err}); pip install trimesh embreex to compare")
    head = f"{'size':>5} {'attrsub fps':>12}" + (f" {'compiled fps':>13}" if args.compiled else "")
    print(head + f" {'embree fps':>11} {'depth |rel| median':>19} {'within 1%':>10}")
    for size in args.sizes:
        ours = frames / _median_seconds(
            lambda size=size: R.render(specs, size, device=args.device), args.repeats)
        row = f"{size:>5} {ours:>12.1f}"
        if args.compiled:
            fused = frames / _median_seconds(
                lambda size=size: R.render(specs, size, compiled=True, device=args.device),
                args.repeats
            )
            row += f" {fused:>13.1f}"
        if meshes is not None:

            def alt(size: int = size) -> list[tuple[torch.Tensor, torch.Tensor]]:
                return [_embree_render(s, *m, size) for s, m in zip(specs, meshes, strict=True)]

            theirs = frames / _median_seconds(alt, args.repeats)
            depth_ours = R.render(specs, size, device=args.device)["depths"].cpu()
            depth_alt = torch.stack([dep for _, dep in alt()])
            both = (depth_ours > 0) & (depth_alt > 0)
            rel = ((depth_alt - depth_ours).abs() / depth_ours)[both]
            close = (rel < 0.01).float().mean().item()
            row += f" {theirs:>11.1f} {rel.median().item():>19.2e} {close:>10.3f}"
        print(row)
    if args.dataset is not None:
        time_dataset(args.dataset, args.device)


if __name__ == "__main__":
    main()
