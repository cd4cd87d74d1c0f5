"""Mining: one LoRA adapter per factor dataset, then one bank from many adapters.

``mine_adapter`` is the unit of work a sweep fans out: render (or reuse) a factor dataset,
put LoRA on the base, train it, publish the adapter folder atomically. ``build_bank`` turns
the adapters of each factor into per-layer subspaces (attrsub.subspace.extract.extract_all).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attrsub.adapters.lora import (
    LoraSpec,
    apply_lora,
    init_key,
    lora_a_weights,
    movement,
    read_sidecar,
    read_updates,
    save_adapter,
)
from attrsub.adapters.update import Update
from attrsub.checks import check_training_fits
from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_creatable, check_new_dir, publish_dir
from attrsub.model.base import DEFAULT_BASE, load_base
from attrsub.scenes.factors import FACTORS
from attrsub.subspace.bank import Bank
from attrsub.subspace.evidence import ALL_LAYERS, evidence_rows, load_adapters
from attrsub.subspace.extract import ExtractConfig, LayerSubspace, extract_all
from attrsub.train.loop import StepInfo, TrainConfig, train


def mine_adapter(
    factor: str,
    group: int,
    seed: int,
    out: str | os.PathLike[str],
    *,
    base: str = DEFAULT_BASE,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
    scenes: int = 16,
    views: int = 4,
    size: int = 112,
    steps: int = 200,
    lr: float = 1e-4,
    rank: int = 16,
    alpha: float | None = None,
    init_scale: float = 1.0,
    lora_init_key: str | None = None,
    batch_size: int = 2,
    heads: bool = False,
    cache: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[StepInfo], bool | None] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    progress: bool = False,
) -> Path:
    """Train one LoRA adapter on factor dataset (factor, group, seed); returns its folder.

    ``out`` must not exist yet (a finished adapter is never overwritten); the folder appears
    complete or not at all. ``checkpoint_dir`` lets a retried trial resume its training, from
    the last of the checkpoints written every ``checkpoint_every`` steps and at the end.

    The LoRA init is drawn from a generator keyed by (factor, group, seed) (``init_key``),
    so adapters of different datasets start from independent A; a shared init would be a
    shared subspace that no factor caused (``lora_init_key`` overrides the key, e.g. to
    reproduce that artifact). The sidecar records the key and how far training moved the
    adapter from it (``movement``).
    """
    spec = DatasetSpec(factor=factor, group=group, scenes=scenes, views=views, size=size, seed=seed)
    lora = LoraSpec(rank=rank, alpha=alpha, heads=heads)
    cfg = TrainConfig(
        steps=steps, lr=lr, seed=seed, batch_size=batch_size, log_every=1,
        checkpoint_every=checkpoint_every,
    )
    if factor not in FACTORS:
        raise ConfigError(f"unknown factor {factor!r} to mine; valid: {', '.join(FACTORS)}")
    out = check_new_dir(out, "adapter folder")
    if checkpoint_dir is not None:
        check_creatable(checkpoint_dir, "checkpoint folder")
    check_training_fits(scenes, views, size)
    b = load_base(base, weights, device=device, random_init=random_init)
    key = init_key(factor, group, seed) if lora_init_key is None else lora_init_key
    model = apply_lora(b.model, lora, init_key=key, init_scale=init_scale)
    data = SceneDataset(render_factor_dataset(spec, cache, device=device))
    a0 = {name: a.detach().clone().cpu() for name, a in lora_a_weights(model).items()}
    result = train(
        model, data, cfg, device=device, checkpoint_dir=checkpoint_dir, callback=callback,
        progress=progress, desc=f"mine {spec.label}",
    )
    sidecar = {
        "base": {"name": b.name, "weights_hash": b.weights_hash},
        "factor": factor,
        "dataset": spec.to_dict(),
        "seed": seed,
        "rank": lora.rank,
        "alpha": lora.alpha,
        "targets": list(lora.targets),
        "blocks": list(lora.blocks),
        "heads": lora.heads,
        "init": {"key": key, "scale": init_scale, "scheme": "keyed-kaiming-uniform"},
        "movement": movement(model, a0, lora.scaling),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "train": {"lr": lr, "batch_size": batch_size, "wall_s": result.wall_s,
                  "resumed_from": result.resumed_from},
    }
    model.cpu()
    return publish_dir(out, lambda tmp: _fill(model, tmp, sidecar))


def _fill(model: Any, tmp: Path, sidecar: Mapping[str, Any]) -> None:
    save_adapter(model, tmp, sidecar)


def find_adapters(paths: Sequence[str | os.PathLike[str]]) -> dict[str, list[Path]]:
    """Adapter folders under ``paths`` (each an adapter or a folder of them), by factor."""
    found: dict[str, list[Path]] = defaultdict(list)
    for p in map(Path, paths):
        if not p.is_dir():
            raise DataError(f"{str(p)!r} is not a folder")
        candidates = [p] if (p / "attrsub-adapter.json").is_file() else sorted(
            d for d in p.iterdir() if (d / "attrsub-adapter.json").is_file()
        )
        if not candidates:
            raise DataError(f"no adapter folders (with attrsub-adapter.json) under {str(p)!r}")
        for d in candidates:
            factor = read_sidecar(d).get("factor")
            if factor not in FACTORS:
                raise DataError(
                    f"adapter {str(d)!r} says factor {factor!r}; valid: {', '.join(FACTORS)}"
                )
            found[factor].append(d)
    return dict(found)


def extract_factor(
    factor: str, dirs: Sequence[Path], cfg: ExtractConfig
) -> tuple[dict[str, LayerSubspace], list[dict[str, Any]], tuple[str, str]]:
    """One factor's per-layer subspaces from its adapters, their sidecars, and their base.

    Separate from ``build_bank`` so a server can extract each factor as soon as its adapters
    are complete, while other factors are still training.
    """
    if not dirs:
        raise ConfigError(f"factor {factor!r} has no adapters")
    base: tuple[str, str] | None = None
    per_layer: dict[str, list[Update]] = defaultdict(list)
    sources: list[dict[str, Any]] = []
    for d in dirs:
        meta = read_sidecar(d)
        this = (meta["base"]["name"], meta["base"]["weights_hash"])
        if base is None:
            base = this
        elif this != base:
            raise DataError(
                f"adapter {str(d)!r} was trained on base {this} but earlier adapters on "
                f"{base}; a bank needs one base"
            )
        if meta.get("factor") != factor:
            raise DataError(
                f"adapter {str(d)!r} says factor {meta.get('factor')!r}, listed under {factor!r}"
            )
        for layer, upd in read_updates(d).items():
            per_layer[layer].append(upd)
        sources.append({"path": str(d), **meta})
    if {len(v) for v in per_layer.values()} != {len(dirs)}:
        raise DataError(f"adapters of factor {factor!r} adapt different layers")
    check_extract_rank(cfg, factor, [s.get("rank") for s in sources])
    assert base is not None
    return extract_all(per_layer, cfg), sources, base


def default_extract_rank(adapters_by_factor: Mapping[str, Sequence[Path]], rank: int = 16
                         ) -> int:
    """``rank``, lowered to the fewest directions any factor's adapters span (the sum of their
    LoRA ranks), so a default never asks for more than the adapters hold."""
    spans = [sum(int(read_sidecar(d).get("rank", rank)) for d in dirs)
             for dirs in adapters_by_factor.values()]
    return max(1, min([rank, *spans]))


def check_extract_rank(cfg: ExtractConfig, factor: str, ranks: Sequence[Any]) -> None:
    """ConfigError when a fixed extraction rank exceeds what ``factor``'s adapters (of LoRA
    ranks ``ranks``) can span: a bank would record it and silently hold fewer directions."""
    if not isinstance(cfg.rank, int) or not all(isinstance(r, int) for r in ranks):
        return
    span, kinds = sum(ranks), "/".join(map(str, sorted(set(ranks))))
    if cfg.rank > span:
        raise ConfigError(
            f"extraction rank {cfg.rank} is larger than the {span} directions that the "
            f"{len(ranks)} adapter(s) of factor {factor!r} (rank {kinds}) can span; valid: "
            f"1..{span}, or a rule (cliff-gap, cliff-energy)"
        )


def assemble_bank(
    extracted: Mapping[str, tuple[dict[str, LayerSubspace], list[dict[str, Any]], tuple[str, str]]],
    cfg: ExtractConfig,
    evidence: Sequence[Mapping[str, Any]] = (),
) -> Bank:
    """A bank from ``extract_factor`` results; every factor must share one base.

    ``evidence`` (attrsub.subspace.evidence.evidence_rows) is kept in the bank over all layers only.
    """
    if not extracted:
        raise ConfigError("a bank needs adapters of at least one factor, got none")
    bases = {base for _, _, base in extracted.values()}
    if len(bases) != 1:
        raise DataError(f"the factors' adapters were trained on different bases {sorted(bases)}")
    (name, weights_hash), = bases
    return Bank(
        name, weights_hash, cfg,
        {f: subs for f, (subs, _, _) in extracted.items()},
        {f: src for f, (_, src, _) in extracted.items()},
        [dict(r) for r in evidence if r["layer"] == ALL_LAYERS],
    )


def build_bank(
    adapters_by_factor: Mapping[str, Sequence[Path]],
    cfg: ExtractConfig,
    *,
    permutations: int = 2000,
    seed: int = 0,
) -> Bank:
    """Extract one subspace per factor and layer from that factor's adapters, with the
    evidence that they are factor subspaces (``permutations`` label shuffles; 0: none)."""
    if not adapters_by_factor:
        raise ConfigError("build_bank needs adapters of at least one factor, got none")
    extracted = {f: extract_factor(f, dirs, cfg) for f, dirs in adapters_by_factor.items()}
    rows = (evidence_rows(load_adapters(adapters_by_factor), cfg, permutations=permutations,
                          seed=seed) if permutations else [])
    return assemble_bank(extracted, cfg, rows)
