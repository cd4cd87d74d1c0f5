"""The ``attrsub`` command line: every step of the pipeline, runnable without Ray."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from attrsub.errors import AttrsubError, ConfigError

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
    from attrsub.sheet import contact_sheet, family_sheet

    if (args.data is None) == (not args.families):
        raise ConfigError("show needs a dataset folder or --families (one of them)")
    if args.families:
        out = family_sheet(args.out, scenes=args.scenes, views=args.views, size=args.size,
                           seed=args.seed, cache=args.cache)
    else:
        out = contact_sheet(find_datasets(args.data), args.out, scenes=args.scenes,
                            views=args.views)
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
    model = base.model
    if args.adapter is not None:
        from attrsub.methods import load_trained

        model = load_trained(base, args.adapter, bank=args.bank)
    metrics = evaluate(
        model, data, device=args.device, max_samples=args.max_samples, depth_align=args.depth_align
    )
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        for k, v in metrics.items():
            print(f"{k:>16s}  {v:.4f}")
    return 0


def cmd_fetch_real(args: argparse.Namespace) -> int:
    from attrsub.debfetch import fetch_real

    path = fetch_real(args.cache, debs=args.debs or ())
    print(path)
    if args.export is not None:
        from attrsub.captures import export_all

        for source, folder in export_all(args.export, args.cache, views=args.views).items():
            print(f"{source}: {folder}")
    return 0


def cmd_mine_adapter(args: argparse.Namespace) -> int:
    from attrsub.mine import mine_adapter

    out = mine_adapter(
        args.factor,
        args.group,
        args.seed,
        args.out,
        base=args.base,
        weights=args.weights,
        random_init=args.untrained,
        scenes=args.scenes,
        views=args.views,
        size=args.size,
        steps=args.steps,
        lr=args.lr,
        rank=args.rank,
        alpha=args.alpha,
        init_scale=args.init_scale,
        batch_size=args.batch_size,
        heads=args.heads,
        cache=args.cache,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        progress=True,
    )
    print(out)
    return 0


def _extract_rank(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def cmd_bank_build(args: argparse.Namespace) -> int:
    from attrsub.bank import save_bank
    from attrsub.mine import build_bank, find_adapters
    from attrsub.subspace import ExtractConfig

    cfg = ExtractConfig(
        method=args.method, rank=_extract_rank(args.rank), alpha=args.alpha, iters=args.iters
    )
    if args.out.is_dir():
        raise ConfigError(f"--out {str(args.out)!r} is a folder; give a file name")
    bank = build_bank(find_adapters(args.adapters), cfg, permutations=args.permutations)
    print(save_bank(bank, args.out))
    return 0


def cmd_bank_info(args: argparse.Namespace) -> int:
    from attrsub.bank import load_bank, summary

    info = summary(load_bank(args.file))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"base {info['base']['name']} (weights {info['base']['weights_hash'][:16]})")
    print(f"extraction {info['extract']}")
    print(f"{info['layers']} layers")
    for f, d in info["factors"].items():
        cliffs = list(d["cliff_per_layer"].values())
        print(
            f"  {f:>10s}: {d['adapters']} adapters, rank {d['rank_min']}..{d['rank_max']}, "
            f"spectral cliff (largest log-gap) at {min(cliffs)}..{max(cliffs)}, "
            f"median {sorted(cliffs)[len(cliffs) // 2]}"
        )
    claim = info["claim1"]
    if claim is None:
        print("  claim 1 (attribute subspaces exist): no evidence stored (bank built without "
              "its adapters' evidence)")
    else:
        print(f"  claim 1 (attribute subspaces exist): {claim['verdict']}")
        for side in ("col", "row"):
            c = claim[side]
            line = f"    {side} space ({c['status']}): "
            if c["overlap_within"] is not None:
                line += (f"adapter overlap within {c['overlap_within']:.3f} vs cross "
                         f"{c['overlap_cross']:.3f} (random {c['overlap_random']:.3f}, "
                         f"permutation p {c['p_value']:.4f}); ")
            if c["heldout_own"] is not None:
                line += (f"held-out energy own {c['heldout_own']:.3f} vs other attributes "
                         f"{c['heldout_other']:.3f} (random {c['heldout_random']:.3f})")
            if c["init_overlap"] is not None:
                line += f"; overlap with its own init {c['init_overlap']:.3f}"
            print(line)
    print("  claim 2 (disentangled): per attribute pair, mean over layers, random in brackets")
    for pair, d in info["pairs"].items():
        print(
            f"  {pair:>21s}: smallest principal angle {d['col_angle_min']:.1f} deg "
            f"({d['rand_col_angle_min']:.1f}), mean {d['col_angle_mean']:.1f} deg "
            f"({d['rand_col_angle_mean']:.1f}), scale-invariant distance "
            f"{d['scale_inv_distance']:.3f} ({d['rand_scale_inv_distance']:.3f})"
        )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from attrsub.methods import finetune

    factors = tuple(f for f in (args.factors or "").split(",") if f)
    metrics = finetune(
        args.task,
        args.method,
        base=args.base,
        weights=args.weights,
        random_init=args.untrained,
        bank=args.bank,
        factors=factors,
        rank=args.rank,
        total_rank=args.total_rank,
        ortho=args.ortho,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        batch_size=args.batch_size,
        train_scenes=args.train_scenes,
        eval_scenes=args.eval_scenes,
        views=args.views,
        size=args.size,
        cache=args.cache,
        out=args.out,
        device=args.device,
    )
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from attrsub.data import CANONICAL, FACTORS
    from attrsub.model import CONFIGS

    parser = argparse.ArgumentParser(prog="attrsub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render a factor dataset into the cache")
    p.add_argument("--factor", required=True, help=f"one of {', '.join((*FACTORS, CANONICAL))}")
    p.add_argument("--group", type=int, default=0, help="which dataset of the family")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=112, help="image size, a multiple of 14")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="dataset root (default: the cache)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("show", help="contact sheet (PNG) of rendered datasets, or of the "
                       "canonical world and every family's extremes (--families)")
    p.add_argument("data", type=Path, nargs="?", default=None,
                   help="a dataset folder or a folder of datasets")
    p.add_argument("--families", action="store_true",
                   help="render the canonical world and each factor family onto one sheet")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--size", type=int, default=112, help="--families: image size")
    p.add_argument("--seed", type=int, default=0, help="--families: dataset seed")
    p.add_argument("--cache", type=Path, default=None, help="--families: dataset cache")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("pretrain", help="pretrain a base model on the canonical distribution")
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
    p.add_argument("--adapter", type=Path, default=None,
                   help="a mine-adapter folder or a finetune --out folder to apply first")
    p.add_argument("--bank", type=Path, default=None, help="the bank a reduced adapter used")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--size", type=int, default=112, help="resize folder images to this")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--depth-align", default="median",
                   help="depth alignment before AbsRel: none, median, lsq or scale_shift")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fetch-real", help="download and cache the real captured data (Debian)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache root (default: $ATTRSUB_CACHE or ~/.cache/attrsub/datasets)")
    p.add_argument("--debs", type=Path, nargs="+", default=None,
                   help="use these visp-images-data and opencv-doc .debs instead of downloading")
    p.add_argument("--export", type=Path, default=None,
                   help="also write each source as a bring-your-own folder EXPORT/<source>")
    p.add_argument("--views", type=int, default=4, help="frames per exported castel sample")
    p.set_defaults(func=cmd_fetch_real)

    p = sub.add_parser("mine-adapter", help="train one LoRA adapter on a factor dataset")
    p.add_argument("--factor", required=True, help=f"one of {', '.join(FACTORS)}")
    p.add_argument("--group", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="adapter folder (must not exist)")
    p.add_argument("--base", default="vggt-tiny", choices=sorted(CONFIGS))
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--untrained", action="store_true", help="random-init base (for tests)")
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None, help="default: 2 x rank")
    p.add_argument("--init-scale", type=float, default=1.0,
                   help="lora_A init = PEFT's default draw times this (keyed per adapter)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--heads", action="store_true", help="also adapt the heads' linears")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_mine_adapter)

    p = sub.add_parser("bank", help="build or inspect a subspace bank")
    bank_sub = p.add_subparsers(dest="bank_command", required=True)
    q = bank_sub.add_parser("build", help="extract every factor's subspaces from adapters")
    q.add_argument("--adapters", type=Path, nargs="+", required=True,
                   help="adapter folders or folders of them (sidecars say their factor)")
    q.add_argument("--out", type=Path, required=True, help="bank file (.safetensors)")
    q.add_argument("--method", default="irls", help="irls, mean or svd")
    q.add_argument("--rank", default="16", help="an int, cliff-gap or cliff-energy")
    q.add_argument("--alpha", type=float, default=1.0)
    q.add_argument("--iters", type=int, default=20)
    q.add_argument("--permutations", type=int, default=2000,
                   help="label shuffles of the evidence's permutation test (0: no evidence)")
    q.set_defaults(func=cmd_bank_build)
    q = bank_sub.add_parser("info", help="summary of a bank")
    q.add_argument("file", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_bank_info)

    p = sub.add_parser("finetune", help="fine-tune on a downstream task with one method")
    p.add_argument("--task", required=True)
    p.add_argument("--method", default="reduced")
    p.add_argument("--bank", type=Path, default=None)
    p.add_argument("--factors", default=None, help="comma-separated, e.g. texture,geometry")
    p.add_argument("--rank", type=int, default=8,
                   help="per-factor rank (reduced), D (psv, random), r (lora, pissa)")
    p.add_argument("--total-rank", type=int, default=None, help="reduced: truncate to D")
    p.add_argument("--ortho", default="qr")
    p.add_argument("--base", default="vggt-tiny", choices=sorted(CONFIGS))
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--untrained", action="store_true")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--train-scenes", type=int, default=16)
    p.add_argument("--eval-scenes", type=int, default=16)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.json and weights")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_finetune)
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
