"""The ``attrsub`` command line: every step of the pipeline, runnable without Ray."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from attrsub import checks
from attrsub.errors import AttrsubError, ConfigError

Handler = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``prog: error: ...``) with exit status 2,
    like every other error of the command line; sub-commands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _typed(parse: Callable[[str], Any], check: Callable[[Any], Any], kind: str
           ) -> Callable[[str], Any]:
    """An argparse ``type`` that parses, then checks with a function of attrsub.checks, so a
    bad value gets the same message on the command line and in the library."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            return check(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    convert.__name__ = kind
    return convert


def _in(valid: Sequence[str], what: str) -> Callable[[str], str]:
    return _typed(str, lambda v: checks.one_of(v, valid, what), what)


COUNT = _typed(int, lambda v: checks.positive_int(v, ""), "an integer")
INDEX = _typed(int, lambda v: checks.nonneg_int(v, ""), "an integer")
RATE = _typed(float, lambda v: checks.positive_number(v, ""), "a number")
DEVICE = _typed(str, checks.check_device, "a device")


def _size(text: str) -> int:
    from attrsub.size import check_size

    return _typed(int, lambda v: check_size(v, ""), "an integer")(text)


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


def _settings(cls: type, args: argparse.Namespace, **given: Any) -> dict[str, Any]:
    """The fields of the dataclass ``cls`` that the command's options set, plus ``given``
    (options named otherwise), so a command passes its options on by name, not one by one."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**{k: v for k, v in vars(args).items() if k in names}, **given}


def cmd_render(args: argparse.Namespace) -> int:
    from attrsub.data.datasets import DatasetSpec, default_cache_root, render_factor_dataset
    from attrsub.fsio import check_creatable

    spec = DatasetSpec(**_settings(DatasetSpec, args))
    if args.out is not None:
        check_creatable(args.out, "--out")
    path = render_factor_dataset(
        spec, args.out or default_cache_root(), device=args.device,
        progress=_progress_printer(spec.label),
    )
    print(path)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from attrsub.data.datasets import find_datasets
    from attrsub.data.sheet import contact_sheet, family_sheet
    from attrsub.fsio import check_new_file

    if (args.data is None) == (not args.families):
        raise ConfigError("show needs a dataset folder or --families (one of them)")
    check_new_file(args.out, "--out")
    if args.families:
        out = family_sheet(args.out, scenes=args.scenes, views=args.views, size=args.size,
                           seed=args.seed, cache=args.cache)
    else:
        out = contact_sheet(find_datasets(args.data), args.out, scenes=args.scenes,
                            views=args.views)
    print(out)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from attrsub.train.pretrain import PretrainRecipe, pretrain

    recipe = PretrainRecipe(**_settings(PretrainRecipe, args))
    report = pretrain(recipe, args.out, cache=args.cache, device=args.device)
    print(json.dumps(report["eval"], indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from attrsub.eval.evaluate import evaluate, open_data
    from attrsub.model.base import load_base

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
    from attrsub.data.capture_sources import fetch_real
    from attrsub.data.captures import check_export, export_all

    if args.export is not None:
        check_export(args.export, args.views)
    path = fetch_real(args.cache, debs=args.debs or ())
    print(path)
    if args.export is not None:
        for source, folder in export_all(args.export, args.cache, views=args.views).items():
            print(f"{source}: {folder}")
    return 0


def cmd_mine_adapter(args: argparse.Namespace) -> int:
    from attrsub.subspace.mine import mine_adapter

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
    """``--rank`` of bank build: a positive integer or the name of a rank rule."""
    from attrsub.subspace.extract import RANK_RULES

    if text.lstrip("+-").isdigit():
        return COUNT(text)
    return _in(RANK_RULES, "rank rule (or a positive integer)")(text)


def _factor_list(text: str) -> tuple[str, ...]:
    """``--factors``: comma-separated factor names."""
    from attrsub.scenes.factors import FACTORS

    names = tuple(f.strip() for f in text.split(",") if f.strip())
    for name in names:
        if name not in FACTORS:
            raise argparse.ArgumentTypeError(
                f"unknown factor {name!r}; valid: {', '.join(FACTORS)} (comma-separated)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a factor twice")
    return names


def cmd_bank_build(args: argparse.Namespace) -> int:
    from attrsub.fsio import check_new_file
    from attrsub.subspace.bank import save_bank
    from attrsub.subspace.extract import ExtractConfig
    from attrsub.subspace.mine import build_bank, default_extract_rank, find_adapters

    check_new_file(args.out, "--out")
    adapters = find_adapters(args.adapters)
    rank = args.rank if args.rank is not None else default_extract_rank(adapters)
    cfg = ExtractConfig(method=args.method, rank=rank, alpha=args.alpha, iters=args.iters)
    bank = build_bank(adapters, cfg, permutations=args.permutations)
    print(save_bank(bank, args.out))
    return 0


def cmd_bank_info(args: argparse.Namespace) -> int:
    from attrsub.subspace.bank import load_bank, summary

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
        print("  claim 1 (factor subspaces exist): no evidence stored (bank built without "
              "its adapters' evidence)")
    else:
        print(f"  claim 1 (factor subspaces exist): {claim['verdict']}")
        for side in ("col", "row"):
            c = claim[side]
            line = f"    {side} space ({c['status']}): "
            if c["overlap_within"] is not None:
                line += (f"adapter overlap within {c['overlap_within']:.3f} vs cross "
                         f"{c['overlap_cross']:.3f} (random {c['overlap_random']:.3f}, "
                         f"permutation p {c['p_value']:.4f}); ")
            if c["heldout_own"] is not None:
                line += (f"held-out energy own {c['heldout_own']:.3f} vs other factors "
                         f"{c['heldout_other']:.3f} (random {c['heldout_random']:.3f})")
            if c["init_overlap"] is not None:
                line += f"; overlap with its own init {c['init_overlap']:.3f}"
            print(line)
    print("  claim 2 (disentangled): per factor pair, mean over layers, random in brackets")
    for pair, d in info["pairs"].items():
        print(
            f"  {pair:>21s}: smallest principal angle {d['col_angle_min']:.1f} deg "
            f"({d['rand_col_angle_min']:.1f}), mean {d['col_angle_mean']:.1f} deg "
            f"({d['rand_col_angle_mean']:.1f}), scale-invariant distance "
            f"{d['scale_inv_distance']:.3f} ({d['rand_scale_inv_distance']:.3f})"
        )
    return 0


def _base_or_none(args: argparse.Namespace) -> Any:
    """The base named by ``--base/--weights/--untrained``, or None when none of them is given."""
    if args.base is None and args.weights is None and not args.untrained:
        return None
    from attrsub.model.base import DEFAULT_BASE, load_base

    return load_base(args.base or DEFAULT_BASE, args.weights, random_init=args.untrained)


def cmd_bank_export(args: argparse.Namespace) -> int:
    from attrsub.subspace.authors import export_bank_authors

    print(export_bank_authors(args.bank, args.out, factors=args.factors or None, ranks=args.rank))
    return 0


def cmd_bank_import(args: argparse.Namespace) -> int:
    from attrsub.fsio import check_new_file
    from attrsub.subspace.authors import import_bank_authors

    check_new_file(args.out, "--out")
    ranks = args.ranks[0] if args.ranks and len(args.ranks) == 1 else args.ranks
    print(import_bank_authors(args.file, args.out, base=_base_or_none(args),
                              factors=args.factors or None, ranks=ranks))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from attrsub.fsio import check_new_dir
    from attrsub.methods.export import export_peft_lora

    check_new_dir(args.out)
    print(export_peft_lora(args.adapter, args.out, base=_base_or_none(args), bank=args.bank))
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    """``--ranks``: comma-separated positive integers."""
    return tuple(COUNT(part) for part in text.split(","))


def cmd_finetune(args: argparse.Namespace) -> int:
    from attrsub.methods import FinetuneSpec, run

    metrics = run(FinetuneSpec(**_settings(FinetuneSpec, args, random_init=args.untrained)))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; values are checked as they are parsed (attrsub.checks), so
    a bad one is refused in one line before any import of torch models or any work."""
    from attrsub.eval.align import DEPTH_ALIGN_MODES
    from attrsub.methods import METHODS, FinetuneSpec
    from attrsub.model import CONFIGS
    from attrsub.scenes.factors import CANONICAL, FACTORS
    from attrsub.subspace.extract import METHODS as EXTRACT
    from attrsub.subspace.integrate import METHODS as ORTHO

    configs = sorted(CONFIGS)
    parser = OneLineParser(prog="attrsub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render a factor dataset into the cache")
    p.add_argument("--factor", required=True, type=_in((*FACTORS, CANONICAL), "factor"),
                   help=f"one of {', '.join((*FACTORS, CANONICAL))}")
    p.add_argument("--group", type=INDEX, default=0, help="which dataset of the family")
    p.add_argument("--scenes", type=COUNT, default=32)
    p.add_argument("--views", type=COUNT, default=4)
    p.add_argument("--size", type=_size, default=112, help="image size, a multiple of 14")
    p.add_argument("--seed", type=INDEX, default=0)
    p.add_argument("--out", type=Path, default=None, help="dataset root (default: the cache)")
    p.add_argument("--device", type=DEVICE, default="cpu", help="cpu, cuda, cuda:N or mps")
    p.set_defaults(parser=p, func=cmd_render)

    p = sub.add_parser("show", help="contact sheet (PNG) of rendered datasets, or of the "
                       "canonical world and every family's extremes (--families)")
    p.add_argument("data", type=Path, nargs="?", default=None,
                   help="a dataset folder or a folder of datasets")
    p.add_argument("--families", action="store_true",
                   help="render the canonical world and each factor family onto one sheet")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--scenes", type=COUNT, default=3)
    p.add_argument("--views", type=COUNT, default=3)
    p.add_argument("--size", type=_size, default=112, help="--families: image size")
    p.add_argument("--seed", type=INDEX, default=0, help="--families: dataset seed")
    p.add_argument("--cache", type=Path, default=None, help="--families: dataset cache")
    p.set_defaults(parser=p, func=cmd_show)

    p = sub.add_parser("pretrain", help="pretrain a base model on the canonical distribution")
    p.add_argument("--config", default="vggt-tiny", type=_in(configs, "model config"),
                   help=f"one of {', '.join(configs)}")
    p.add_argument("--scenes", type=COUNT, default=512)
    p.add_argument("--steps", type=COUNT, default=1500)
    p.add_argument("--size", type=_size, default=112)
    p.add_argument("--lr", type=RATE, default=5e-4)
    p.add_argument("--batch-size", type=COUNT, default=4)
    p.add_argument("--seed", type=INDEX, default=0)
    p.add_argument("--out", type=Path, default=Path("weights"),
                   help="weights folder (default: weights/ in the current directory; the "
                        "weights shipped in the package are replaced only if you name their "
                        "folder)")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--device", type=DEVICE, default="cpu")
    p.set_defaults(parser=p, func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="metrics of a model on a dataset or folder")
    p.add_argument("--model", default="vggt-tiny", type=_in(configs, "model config"),
                   help=f"one of {', '.join(configs)}")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--untrained", action="store_true", help="evaluate a random-init model")
    p.add_argument("--adapter", type=Path, default=None,
                   help="a mine-adapter folder or a finetune --out folder to apply first")
    p.add_argument("--bank", type=Path, default=None, help="the bank a reduced adapter used")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--size", type=_size, default=112, help="resize folder images to this")
    p.add_argument("--max-samples", type=COUNT, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--depth-align", default="median",
                   type=_in(DEPTH_ALIGN_MODES, "depth alignment"),
                   help=f"depth alignment before AbsRel: {', '.join(DEPTH_ALIGN_MODES)}")
    p.add_argument("--device", type=DEVICE, default="cpu")
    p.set_defaults(parser=p, func=cmd_evaluate)

    p = sub.add_parser("fetch-real", help="download and cache the real captured data (Debian)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache root (default: $ATTRSUB_CACHE or ~/.cache/attrsub/datasets)")
    p.add_argument("--debs", type=Path, nargs="+", default=None,
                   help="use these visp-images-data and opencv-doc .debs instead of downloading")
    p.add_argument("--export", type=Path, default=None,
                   help="also write each source as a bring-your-own folder EXPORT/<source>")
    p.add_argument("--views", type=COUNT, default=4, help="frames per exported castel sample")
    p.set_defaults(parser=p, func=cmd_fetch_real)

    p = sub.add_parser("mine-adapter", help="train one LoRA adapter on a factor dataset")
    p.add_argument("--factor", required=True, type=_in(FACTORS, "factor"),
                   help=f"one of {', '.join(FACTORS)}")
    p.add_argument("--group", type=INDEX, default=0)
    p.add_argument("--seed", type=INDEX, default=0)
    p.add_argument("--out", type=Path, required=True, help="adapter folder (must not exist)")
    p.add_argument("--base", default="vggt-tiny", type=_in(configs, "model config"),
                   help=f"one of {', '.join(configs)}")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--untrained", action="store_true", help="random-init base (for tests)")
    p.add_argument("--scenes", type=COUNT, default=16)
    p.add_argument("--views", type=COUNT, default=4)
    p.add_argument("--size", type=_size, default=112)
    p.add_argument("--steps", type=COUNT, default=200)
    p.add_argument("--lr", type=RATE, default=1e-4)
    p.add_argument("--rank", type=COUNT, default=16)
    p.add_argument("--alpha", type=RATE, default=None, help="default: 2 x rank")
    p.add_argument("--init-scale", type=RATE, default=1.0,
                   help="lora_A init = PEFT's default draw times this (keyed per adapter)")
    p.add_argument("--batch-size", type=COUNT, default=2)
    p.add_argument("--heads", action="store_true", help="also adapt the heads' linears")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--device", type=DEVICE, default="cpu")
    p.set_defaults(parser=p, func=cmd_mine_adapter)

    p = sub.add_parser("bank", help="build or inspect a subspace bank")
    bank_sub = p.add_subparsers(dest="bank_command", required=True)
    q = bank_sub.add_parser("build", help="extract every factor's subspaces from adapters")
    q.add_argument("--adapters", type=Path, nargs="+", required=True,
                   help="adapter folders or folders of them (sidecars say their factor)")
    q.add_argument("--out", type=Path, required=True, help="bank file (.safetensors)")
    q.add_argument("--method", default="irls", type=_in(EXTRACT, "extraction method"),
                   help=", ".join(EXTRACT))
    q.add_argument("--rank", default=None, type=_extract_rank,
                   help="an int, cliff-gap or cliff-energy (default: 16, or the directions "
                        "the adapters span when fewer)")
    q.add_argument("--alpha", type=RATE, default=1.0, help="IRLS exponent, in (0, 2]")
    q.add_argument("--iters", type=COUNT, default=20)
    q.add_argument("--permutations", type=INDEX, default=2000,
                   help="label shuffles of the evidence's permutation test (0: no evidence)")
    q.set_defaults(parser=q, func=cmd_bank_build)
    q = bank_sub.add_parser("export", help="write a bank in another format (authors: the "
                            "paper code's predefined-subspace safetensors)")
    q.add_argument("bank", type=Path, help="a bank from `attrsub bank build`")
    q.add_argument("--format", required=True, type=_in(("authors",), "bank format"),
                   help="authors")
    q.add_argument("--out", type=Path, required=True, help="file to write (.safetensors)")
    q.add_argument("--factors", type=_factor_list, default=(),
                   help="comma-separated, in the order to concatenate (default: all)")
    q.add_argument("--rank", type=COUNT, default=None,
                   help="keep each factor's first N directions (default: all)")
    q.set_defaults(parser=q, func=cmd_bank_export)
    q = bank_sub.add_parser("import", help="read an authors'-format subspace file into a bank")
    q.add_argument("file", type=Path, help="a predefined-subspace .safetensors file")
    q.add_argument("--out", type=Path, required=True, help="bank file to write (.safetensors)")
    q.add_argument("--base", default=None, type=_in(configs, "model config"),
                   help="the base the subspace was mined on (needed for the authors' own files)")
    q.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    q.add_argument("--untrained", action="store_true", help="a random-init base")
    q.add_argument("--factors", default=(), type=lambda t: tuple(t.split(",")),
                   help="the authors' files: names of the concatenated blocks (default: authors)")
    q.add_argument("--ranks", type=_int_list, default=None,
                   help="the authors' files: each block's width, e.g. 3,1 (default: even split)")
    q.set_defaults(parser=q, func=cmd_bank_import)
    q = bank_sub.add_parser("info", help="summary of a bank")
    q.add_argument("file", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(parser=q, func=cmd_bank_info)

    d = FinetuneSpec.default
    p = sub.add_parser("finetune", help="fine-tune on a downstream task with one method")
    p.add_argument("--task", required=True)
    p.add_argument("--method", default="reduced", type=_in(METHODS, "method"),
                   help=", ".join(METHODS))
    p.add_argument("--bank", type=Path, default=None)
    p.add_argument("--factors", type=_factor_list, default=(),
                   help="comma-separated, e.g. texture,geometry")
    p.add_argument("--rank", type=COUNT, default=d("rank"),
                   help="per-factor rank (reduced), D (psv, random), r (lora, pissa)")
    p.add_argument("--total-rank", type=COUNT, default=None, help="reduced: truncate to D")
    p.add_argument("--ortho", default=d("ortho"), type=_in(ORTHO, "orthogonalisation"),
                   help=", ".join(ORTHO))
    p.add_argument("--base", default=d("base"), type=_in(configs, "model config"),
                   help=f"one of {', '.join(configs)}")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--untrained", action="store_true")
    p.add_argument("--steps", type=COUNT, default=d("steps"))
    p.add_argument("--lr", type=RATE, default=d("lr"))
    p.add_argument("--seed", type=INDEX, default=d("seed"))
    p.add_argument("--batch-size", type=COUNT, default=d("batch_size"))
    p.add_argument("--train-scenes", type=COUNT, default=d("train_scenes"))
    p.add_argument("--eval-scenes", type=COUNT, default=d("eval_scenes"))
    p.add_argument("--views", type=COUNT, default=d("views"))
    p.add_argument("--size", type=_size, default=d("size"))
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="a new folder for metrics.json and the trained adapter")
    p.add_argument("--device", type=DEVICE, default=d("device"))
    p.set_defaults(parser=p, func=cmd_finetune)

    p = sub.add_parser("export", help="write a trained adapter in another format (peft-lora: "
                       "a plain PEFT LoRA folder any PEFT user can load)")
    p.add_argument("--adapter", type=Path, required=True,
                   help="a mine-adapter folder or a finetune --out folder")
    p.add_argument("--format", required=True, type=_in(("peft-lora",), "adapter format"),
                   help="peft-lora")
    p.add_argument("--out", type=Path, required=True, help="a new folder")
    p.add_argument("--bank", type=Path, default=None, help="the bank a reduced adapter used")
    p.add_argument("--base", default=None, type=_in(configs, "model config"),
                   help="default: the base the adapter records")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--untrained", action="store_true", help="the adapter's base is random-init")
    p.set_defaults(parser=p, func=cmd_export)
    return parser


_OUTPUTS = ("out", "cache", "export", "checkpoint_dir")


def _prog(args: argparse.Namespace) -> str:
    sub = getattr(args, "bank_command", None)
    return f"attrsub {args.command}" + (f" {sub}" if sub else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input exits with status 2 and one clear line, no traceback, and a
    failed command leaves no folder behind that it made on its way."""
    from attrsub.data.datasets import default_cache_root
    from attrsub.fsio import missing_dirs, remove_if_empty

    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # argparse reports these from the top parser; name the command given them
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # a usage error (2, its line printed) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    outputs = [getattr(args, k, None) for k in _OUTPUTS]
    made = missing_dirs([*outputs, default_cache_root()])
    try:
        return int(args.func(args))
    except AttrsubError as exc:
        remove_if_empty(made)
        message = " | ".join(line for line in str(exc).splitlines() if line.strip())
        print(f"{_prog(args)}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_if_empty(made)
        print(f"{_prog(args)}: interrupted; finished outputs are complete, nothing is half "
              f"written", file=sys.stderr)
        return 130
    except BaseException:
        remove_if_empty(made)
        raise


if __name__ == "__main__":
    sys.exit(main())
