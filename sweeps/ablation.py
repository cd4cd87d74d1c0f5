"""The main job: the embedded-default study, end to end on one machine.

Runs what the library offers today, on the shipped tiny base: one rendered dataset per
attribute family (plus a contact sheet of them), then the held-out evaluation of the
pretrained base against the same model untrained. The Ray Tune study (mining sweep,
shared subspace actor, ablations, Parquet tables) extends this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from attrsub import __version__
from attrsub.base import DEFAULT_BASE, load_base
from attrsub.data import ALL, FACTORS, DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import AttrsubError
from attrsub.evaluate import evaluate
from attrsub.fsio import ensure_writable_dir, write_json
from attrsub.sheet import contact_sheet

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--study", default="default", help="study name (a folder under storage)")
    p.add_argument("--storage", type=Path, default=REPO / "results", help="results root")
    p.add_argument("--cache", type=Path, default=None, help="dataset cache root")
    p.add_argument("--scenes", type=int, default=16, help="scenes per factor dataset")
    p.add_argument("--size", type=int, default=112)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    study = ensure_writable_dir(args.storage / args.study, "study folder")
    datasets = []
    for factor in FACTORS:
        spec = DatasetSpec(factor, group=0, scenes=args.scenes, views=4, size=args.size)
        datasets.append(render_factor_dataset(spec, args.cache))
        print(f"rendered {spec.label}: {datasets[-1]}")
    sheet = contact_sheet(datasets, study / "factors.png", scenes=2, views=4)
    held_out = SceneDataset(
        render_factor_dataset(
            DatasetSpec(ALL, scenes=args.scenes, views=4, size=args.size, seed=10_000), args.cache
        )
    )
    evals = {}
    for label, random_init in (("untrained", True), ("pretrained", False)):
        base = load_base(DEFAULT_BASE, random_init=random_init)
        evals[label] = evaluate(base.model, held_out)
    summary = {
        "study": args.study,
        "attrsub_version": __version__,
        "base": DEFAULT_BASE,
        "datasets": [str(d) for d in datasets],
        "contact_sheet": str(sheet),
        "held_out_eval": evals,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(study / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except AttrsubError as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 2
    keys = ("depth_absrel", "depth_delta1", "cam_auc30")
    print(f"\n{'model':<12}" + "".join(f"{k:>14}" for k in keys))
    for label, metrics in summary["held_out_eval"].items():
        print(f"{label:<12}" + "".join(f"{metrics.get(k, float('nan')):>14.4f}" for k in keys))
    print(f"\nwall time {summary['wall_s']:.1f} s; contact sheet {summary['contact_sheet']}")
    print(json.dumps({"summary": str(Path(args.storage) / args.study / "summary.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
