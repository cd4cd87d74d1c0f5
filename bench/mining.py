"""Mining regimes against claim 1: do adapters of one factor share a subspace?

For each regime (mining steps, learning rate, adapters per factor, dataset size, LoRA
init scale) this mines every factor's adapters with ``attrsub.subspace.mine.mine_adapter`` on the
shipped base (or ``--weights``), then measures them with ``attrsub.subspace.evidence``: adapter
overlap within versus across factors on the column and row sides with a permutation p,
held-out energy (own factor's leave-one-out subspace versus the other factors'),
overlap with each adapter's own init, and how far training moved the adapters. Every
measure is printed beside its null measured in the same run (random subspaces of the same
size; label permutations), and the ``shared-init`` regime (one init for every adapter, the
mining before keyed inits) is the artifact baseline.

Run from the repository root: ``python bench/mining.py --regime quick --regime shared-init``
(``--list`` names the regimes, ``--all`` runs every one, about 17 minutes on 2 cores).
Adapters are kept under ``--out`` per regime, so a rerun only measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

FACTORS = ("texture", "geometry", "camera", "lighting")
# mine_adapter keyword arguments per regime, plus "groups" (adapters per factor) and
# "shared_init" (one init for every adapter); "quick" is read from sweeps/presets.yaml.
BASE = {"scenes": 8, "views": 4, "size": 56, "rank": 8, "batch_size": 2, "groups": 3}
REGIMES: dict[str, dict[str, Any]] = {
    "old-quick": {"steps": 50, "lr": 1e-3},
    "shared-init": {"steps": 50, "lr": 1e-3, "shared_init": True},
    "default-init-200": {"steps": 200, "lr": 3e-3},
    "small-init-200": {"steps": 200, "lr": 3e-3, "init_scale": 0.1},
    "tiny-init-200": {"steps": 200, "lr": 3e-3, "init_scale": 0.01},
    "tiny-init": {"steps": 100, "lr": 3e-3, "init_scale": 0.01},
    "tiny-init-lr1e-2": {"steps": 100, "lr": 1e-2, "init_scale": 0.01},
    "tiny-init-16": {"steps": 100, "lr": 3e-3, "init_scale": 0.01, "scenes": 16},
    "tiny-init-16-200": {"steps": 200, "lr": 3e-3, "init_scale": 0.01, "scenes": 16},
    "tiny-init-32": {"steps": 100, "lr": 3e-3, "init_scale": 0.01, "scenes": 32},
    "quick": {},
}


def regime(name: str) -> dict[str, Any]:
    """A regime's full settings; ``quick`` is the quick preset's own mining."""
    if name != "quick":
        return {**BASE, **REGIMES[name]}
    from sweeps.config import load_preset

    p = load_preset("quick")
    m = p.mining
    return {**BASE, "scenes": p.scenes["mine"], "views": p.views, "size": p.size,
            "groups": p.groups, "steps": m.steps, "lr": m.lr, "rank": m.rank,
            "batch_size": m.batch_size, "init_scale": m.init_scale}


def _mine(job: dict[str, Any]) -> dict[str, Any]:
    """One adapter in a worker process (1 thread); returns its sidecar's movement and time."""
    import torch

    from attrsub.subspace.mine import mine_adapter

    torch.set_num_threads(1)
    kw = dict(job["kwargs"])
    if kw.pop("shared_init", False):  # one init for every adapter: the old mining
        kw["lora_init_key"] = "shared"
    out = Path(job["out"])
    t0 = time.perf_counter()
    if not out.is_dir():
        mine_adapter(job["factor"], job["group"], job["seed"], out, weights=job["weights"],
                     cache=job["cache"], **kw)
    meta = json.loads((out / "attrsub-adapter.json").read_text())
    return {"wall_s": time.perf_counter() - t0, **meta["movement"]}


def run_regime(name: str, root: Path, weights: str | None, cache: str, workers: int,
               permutations: int) -> dict[str, Any]:
    from attrsub.subspace.evidence import claim_summary, evidence_rows, load_adapters
    from attrsub.subspace.extract import ExtractConfig
    from attrsub.subspace.mine import find_adapters

    spec = regime(name)
    groups = spec.pop("groups")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        {"factor": f, "group": g, "seed": 100 + 10 * i + g, "out": str(folder / f"{f}-g{g}"),
         "weights": weights, "cache": cache, "kwargs": spec}
        for i, f in enumerate(FACTORS) for g in range(groups)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        moved = list(pool.map(_mine, jobs))
    mine_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    aset = load_adapters(find_adapters([folder]))
    rows = evidence_rows(aset, ExtractConfig(method="irls", rank=spec["rank"]),
                         permutations=permutations)
    claim = claim_summary(rows)
    return {
        "regime": name, "spec": {**spec, "groups": groups}, "claim": claim,
        "mine_wall_s": mine_wall, "evidence_wall_s": time.perf_counter() - t0,
        "lora_a_change": statistics.median(m["lora_a_change"] for m in moved),
        "update_norm": statistics.median(m["update_norm"] for m in moved),
    }


def zero_shot(weights: str | None, cache: str, scenes: int = 32) -> None:
    """The base's error on held-out canonical scenes beside each family's extremes: the
    families must leave the world the base was pretrained on."""
    import torch

    from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
    from attrsub.eval.evaluate import evaluate
    from attrsub.model.base import load_base
    from attrsub.scenes.factors import CANONICAL

    torch.set_num_threads(2)
    model = load_base("vggt-tiny", weights).model
    spec = regime("quick")
    keys = ("depth_absrel", "depth_delta1", "cam_auc30", "pc_acc")
    print(f"zero-shot base, {scenes} held-out scenes (seed 10000) at {spec['size']} px:")
    print(f"  {'family':<10}" + "".join(f"{k:>14}" for k in keys))
    for f in (CANONICAL, *FACTORS):
        ds = SceneDataset(render_factor_dataset(
            DatasetSpec(f, scenes=scenes, views=spec["views"], size=spec["size"], seed=10_000),
            cache))
        m = evaluate(model, ds)
        print(f"  {f:<10}" + "".join(f"{m[k]:>14.4f}" for k in keys), flush=True)


def _fmt(r: dict[str, Any]) -> str:
    c = r["claim"]
    parts = [f"{r['regime']:<16}"]
    for side in ("col", "row"):
        s = c[side]
        parts.append(f"{side}: overlap {s['overlap_within']:.3f}/{s['overlap_cross']:.3f} "
                     f"(rand {s['overlap_random']:.3f}, p {s['p_value']:.4f}), held-out "
                     f"{s['heldout_own']:.3f}/{s['heldout_other']:.3f} "
                     f"(rand {s['heldout_random']:.3f})")
    parts.append(f"init overlap {c['row']['init_overlap']:.3f}, |A-A0|/|A0| "
                 f"{r['lora_a_change']:.3f}, |BA| {r['update_norm']:.3f}; verdict "
                 f"{c['verdict']}; mining {r['mine_wall_s']:.0f} s")
    return "\n    ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--regime", action="append", default=None,
                    help=f"one of {', '.join(REGIMES)} (repeatable; default: quick)")
    ap.add_argument("--list", action="store_true", help="print the regimes and exit")
    ap.add_argument("--all", action="store_true", help="run every regime")
    ap.add_argument("--zero-shot", action="store_true",
                    help="first, the base's error on canonical scenes and on each family")
    ap.add_argument("--weights", default=None, help="base weights (default: shipped)")
    ap.add_argument("--out", default="bench-mining", help="adapters and results, per regime")
    ap.add_argument("--cache", default=None, help="dataset cache (default: <out>/cache)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--permutations", type=int, default=2000)
    args = ap.parse_args()
    if args.list:
        for name in REGIMES:
            print(f"{name:<16} {json.dumps(regime(name))}")
        return
    names = list(REGIMES) if args.all else args.regime or ["quick"]
    bad = [n for n in names if n not in REGIMES]
    if bad:
        ap.error(f"unknown regime(s) {bad}; valid: {', '.join(REGIMES)}")
    root = Path(args.out)
    cache = args.cache or str(root / "cache")
    if args.zero_shot:
        zero_shot(args.weights, cache)
    results = []
    for name in names:
        r = run_regime(name, root, args.weights, cache, args.workers, args.permutations)
        results.append(r)
        (root / name / "evidence.json").write_text(json.dumps(r, indent=2) + "\n")
        print(_fmt(r), flush=True)
    print("\nwithin/cross: mean pair overlap ||P^T Q||^2/k of adapters of one factor / of "
          "different factors; held-out: energy of a left-out adapter captured by its own "
          "factor's subspace / by the others'; rand: random subspaces of the same size")


if __name__ == "__main__":
    main()
