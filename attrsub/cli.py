"""The ``attrsub`` command line: every step of the pipeline, runnable without Ray."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from attrsub.errors import AttrsubError

Handler = Callable[[argparse.Namespace], int]


def _progress_printer(label: str) -> Callable[[int, int], None]:
    from tqdm.auto import tqdm

    bar: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=label, unit="scene", leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


def cmd_render(args: argparse.Namespace) -> int:
    from attrsub.data import DatasetSpec, default_cache_root, render_factor_dataset
    from attrsub.fsio import ensure_writable_dir

    spec = DatasetSpec(
        factor=args.factor,
        group=args.group,
        scenes=args.scenes,
        views=args.views,
        size=args.size,
        seed=args.seed,
    )
    root = ensure_writable_dir(args.out or default_cache_root(), "--out")
    path = render_factor_dataset(
        spec, root, device=args.device, progress=_progress_printer(spec.label)
    )
    print(path)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from attrsub.data import find_datasets
    from attrsub.sheet import contact_sheet

    out = contact_sheet(find_datasets(args.data), args.out, scenes=args.scenes, views=args.views)
    print(out)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from attrsub.base import WEIGHTS_DIR
    from attrsub.pretrain import PretrainRecipe, pretrain

    recipe = PretrainRecipe(
        config=args.config,
        scenes=args.scenes,
        steps=args.steps,
        size=args.size,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    report = pretrain(recipe, args.out or WEIGHTS_DIR, cache=args.cache, device=args.device)
    print(json.dumps(report["eval"], indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from attrsub.base import load_base
    from attrsub.evaluate import evaluate, open_data

    data = open_data(args.data, size=args.size)
    base = load_base(args.model, args.weights, device=args.device, random_init=args.untrained)
    metrics = evaluate(base.model, data, device=args.device, max_samples=args.max_samples)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        for k, v in metrics.items():
            print(f"{k:>16s}  {v:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from attrsub.data import ALL, FACTORS
    from attrsub.model import CONFIGS

    parser = argparse.ArgumentParser(prog="attrsub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render a factor dataset into the cache")
    p.add_argument("--factor", required=True, help=f"one of {', '.join((*FACTORS, ALL))}")
    p.add_argument("--group", type=int, default=0, help="group seed of the narrow base draw")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=112, help="image size, a multiple of 14")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="dataset root (default: the cache)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("show", help="contact sheet (PNG) of rendered datasets")
    p.add_argument("data", type=Path, help="a dataset folder or a folder of datasets")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--views", type=int, default=4)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("pretrain", help="pretrain a base model on the broad distribution")
    p.add_argument("--config", default="vggt-tiny", choices=sorted(CONFIGS))
    p.add_argument("--scenes", type=int, default=512)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="weights folder (default: shipped)")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="metrics of a model on a dataset or folder")
    p.add_argument("--model", default="vggt-tiny", help=f"one of {', '.join(CONFIGS)}")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--untrained", action="store_true", help="evaluate a random-init model")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--size", type=int, default=112, help="resize folder images to this")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input exits with status 2 and one clear line, no traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AttrsubError as exc:
        print(f"attrsub {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
