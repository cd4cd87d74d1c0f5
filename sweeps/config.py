"""Load and validate a study preset from sweeps/presets.yaml, before any trial runs.

Every name (factor, method, task, ortho, extraction method, model) and every number is
checked here, so a typo costs milliseconds instead of a cluster's worth of failed trials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attrsub.errors import ConfigError
from attrsub.factors import FACTORS
from attrsub.integrate import METHODS as ORTHO_METHODS
from attrsub.lora import LoraSpec, target_modules
from attrsub.methods import METHODS
from attrsub.model import CONFIGS, build
from attrsub.size import check_size
from attrsub.subspace import METHODS as EXTRACT_METHODS
from attrsub.subspace import ExtractConfig
from attrsub.tasks import TaskSize, get_task

PRESETS = Path(__file__).with_name("presets.yaml")
_KEYS = {
    "model", "random_init", "size", "views", "scenes", "factors", "groups", "adapter_seeds",
    "mining", "extraction", "downstream", "ablation", "resources",
}
_SCENES = {"mine", "train", "eval"}
_MINING = {"steps", "rank", "lr", "batch_size", "report_every"}
_DOWN = {"tasks", "methods", "seeds", "steps", "lr", "rank", "batch_size"}
_ABLATION = {"ranks", "subsets", "ortho", "extraction"}
_RESOURCES = {"cpu", "gpu"}


@dataclass(frozen=True)
class Preset:
    """A validated study preset (see sweeps/presets.yaml for the meaning of each field)."""

    name: str
    model: str
    random_init: bool
    size: int
    views: int
    scenes: dict[str, int]
    factors: tuple[str, ...]
    groups: int
    adapter_seeds: tuple[int, ...]
    mining: dict[str, Any]
    extraction: ExtractConfig
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    lr: float
    rank: int
    batch_size: int
    ablation_ranks: tuple[int, ...]
    ablation_subsets: tuple[tuple[str, ...], ...]
    ablation_ortho: tuple[str, ...]
    ablation_extraction: tuple[str, ...]
    cpu: float
    gpu: float

    def task_size(self) -> TaskSize:
        return TaskSize(self.scenes["train"], self.scenes["eval"], self.views, self.size)


def _section(raw: dict[str, Any], key: str, allowed: set[str], where: str) -> dict[str, Any]:
    val = raw.get(key)
    if not isinstance(val, dict):
        raise ConfigError(f"{where}: {key!r} must be a mapping with keys {sorted(allowed)}")
    _no_unknown(val, allowed, f"{where}.{key}")
    missing = sorted(allowed - set(val))
    if missing:
        raise ConfigError(f"{where}.{key} lacks {missing}")
    return val


def _no_unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(allowed)}")


def _pos_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{what} must be a positive integer, got {v!r}")
    return v


def _seeds(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{what} must be a non-empty list of seeds, got {v!r}")
    for s in v:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{what}: seed {s!r} is not a non-negative integer")
    return tuple(v)


def _names(v: Any, valid: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{what} must be a non-empty list, got {v!r}")
    bad = [x for x in v if x not in valid]
    if bad:
        raise ConfigError(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return tuple(v)


def _pos_float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError(f"{what} must be a positive number, got {v!r}")
    return float(v)


def from_dict(name: str, raw: Any) -> Preset:
    """Validate one preset's mapping; ConfigError names the first bad field."""
    where = f"preset {name!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(raw, _KEYS, where)
    missing = sorted(_KEYS - set(raw))
    if missing:
        raise ConfigError(f"{where} lacks {missing}")
    if raw["model"] not in CONFIGS:
        raise ConfigError(f"{where}: unknown model {raw['model']!r}; valid: {', '.join(CONFIGS)}")
    size = check_size(raw["size"], f"{where}: size")
    scenes = _section(raw, "scenes", _SCENES, where)
    for k in _SCENES:
        _pos_int(scenes[k], f"{where}.scenes.{k}")
    mining = _section(raw, "mining", _MINING, where)
    for k in ("steps", "rank", "batch_size", "report_every"):
        _pos_int(mining[k], f"{where}.mining.{k}")
    _pos_float(mining["lr"], f"{where}.mining.lr")
    ext = raw["extraction"]
    if not isinstance(ext, dict):
        raise ConfigError(f"{where}: extraction must be a mapping of ExtractConfig fields")
    try:
        extraction = ExtractConfig(**ext)
    except TypeError as exc:
        raise ConfigError(f"{where}.extraction: {exc}") from exc
    down = _section(raw, "downstream", _DOWN, where)
    abl = _section(raw, "ablation", _ABLATION, where)
    res = _section(raw, "resources", _RESOURCES, where)
    factors = _names(raw["factors"], FACTORS, f"{where} factor(s)")
    if not isinstance(down["tasks"], list) or not down["tasks"]:
        raise ConfigError(f"{where}.downstream.tasks must be a non-empty list of task names")
    tasks = tuple(get_task(t).name for t in down["tasks"])
    rank = _pos_int(down["rank"], f"{where}.downstream.rank")
    if isinstance(extraction.rank, int) and rank > extraction.rank:
        raise ConfigError(
            f"{where}: downstream rank {rank} exceeds the extraction rank {extraction.rank}"
        )
    if isinstance(extraction.rank, int) and extraction.rank > mining["rank"] * raw["groups"]:
        raise ConfigError(
            f"{where}: extraction rank {extraction.rank} exceeds what {raw['groups']} adapters "
            f"of rank {mining['rank']} can span"
        )
    subsets = abl["subsets"]
    if not isinstance(subsets, list):
        raise ConfigError(f"{where}.ablation.subsets must be a list of factor lists")
    subsets_t = tuple(_names(s, factors, f"{where} ablation subset factor(s)") for s in subsets)
    ranks = tuple(_pos_int(r, f"{where}.ablation.ranks") for r in abl["ranks"] or [])
    if isinstance(extraction.rank, int) and any(r > extraction.rank for r in ranks):
        raise ConfigError(
            f"{where}: ablation ranks {ranks} exceed extraction rank {extraction.rank}"
        )
    cpu, gpu = res["cpu"], res["gpu"]
    _pos_float(cpu, f"{where}.resources.cpu")
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0:
        raise ConfigError(f"{where}.resources.gpu must be >= 0, got {gpu!r}")
    if not isinstance(raw["random_init"], bool):
        raise ConfigError(f"{where}: random_init must be true or false")
    preset = Preset(
        name=name,
        model=raw["model"],
        random_init=raw["random_init"],
        size=size,
        views=_pos_int(raw["views"], f"{where}.views"),
        scenes=dict(scenes),
        factors=factors,
        groups=_pos_int(raw["groups"], f"{where}.groups"),
        adapter_seeds=_seeds(raw["adapter_seeds"], f"{where}.adapter_seeds"),
        mining=dict(mining),
        extraction=extraction,
        tasks=tasks,
        methods=_names(down["methods"], METHODS, f"{where} method(s)"),
        seeds=_seeds(down["seeds"], f"{where}.downstream.seeds"),
        steps=_pos_int(down["steps"], f"{where}.downstream.steps"),
        lr=_pos_float(down["lr"], f"{where}.downstream.lr"),
        rank=rank,
        batch_size=_pos_int(down["batch_size"], f"{where}.downstream.batch_size"),
        ablation_ranks=ranks,
        ablation_subsets=subsets_t,
        ablation_ortho=_names(abl["ortho"] or ["qr"], ORTHO_METHODS, f"{where} ortho method(s)"),
        ablation_extraction=_names(
            abl["extraction"] or [extraction.method], EXTRACT_METHODS,
            f"{where} extraction method(s)",
        ),
        cpu=float(cpu),
        gpu=float(gpu),
    )
    for task in preset.tasks:
        get_task(task).check(preset.task_size())
    _check_widths(preset, where)
    return preset


def _check_widths(preset: Preset, where: str) -> None:
    """Every rank the study will use must fit the narrowest adapted layer of its model."""
    model = build(preset.model, device="meta")
    widths = {n: min(model.get_submodule(n).weight.shape)
              for n in target_modules(model, LoraSpec(rank=1))}
    layer, width = min(widths.items(), key=lambda kv: kv[1])
    asked = {
        "mining.rank": preset.mining["rank"],
        "downstream.rank": preset.rank,
        "the psv/random baselines' rank (downstream.rank x factors)":
            preset.rank * len(preset.factors),
        **({"extraction.rank": preset.extraction.rank}
           if isinstance(preset.extraction.rank, int) else {}),
        **{f"ablation.ranks {r}": r for r in preset.ablation_ranks},
    }
    for what, r in asked.items():
        if r > width:
            raise ConfigError(
                f"{where}: {what} = {r} is larger than layer {layer!r} of {preset.model} "
                f"(width {width}); ranks must be at most {width}"
            )


def load_preset(name: str, path: str | os.PathLike[str] = PRESETS) -> Preset:
    """The preset ``name`` from ``path``; ConfigError lists the valid names otherwise."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read presets file {str(path)!r}: {exc}") from exc
    if not isinstance(raw, dict) or name not in raw:
        valid = ", ".join(raw) if isinstance(raw, dict) else "none"
        raise ConfigError(f"unknown preset {name!r}; valid: {valid}")
    return from_dict(name, raw[name])
