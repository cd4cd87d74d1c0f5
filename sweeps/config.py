"""Load and validate a study preset from sweeps/presets.yaml, before any trial runs.

Every name (factor, method, task, ortho, extraction method, model) and every number is
checked here, so a typo costs milliseconds instead of a cluster's worth of failed trials.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attrsub.adapters.lora import LoraSpec, target_modules
from attrsub.errors import ConfigError
from attrsub.methods import METHODS, REGISTRY
from attrsub.model import CONFIGS, build
from attrsub.scenes.factors import FACTORS
from attrsub.size import check_size
from attrsub.subspace.extract import METHODS as EXTRACT_METHODS
from attrsub.subspace.extract import ExtractConfig
from attrsub.subspace.integrate import METHODS as ORTHO_METHODS
from attrsub.tasks import TaskSize, get_task

PRESETS = Path(__file__).with_name("presets.yaml")
_KEYS = {
    "model", "random_init", "size", "views", "scenes", "factors", "groups", "adapter_seeds",
    "mining", "extraction", "downstream", "ablation", "resources",
}
_SCENES = {"mine", "train", "eval"}
_MINING = {"steps", "rank", "lr", "batch_size", "report_every"}
_DOWN = {"tasks", "methods", "seeds", "steps", "lr", "rank", "batch_size", "report_every"}
_ABLATION = {"ranks", "subsets", "ortho", "extraction"}
_STAGES = {"mine", "finetune"}
_RESOURCES = {"cpu", "gpu"}
_SEARCH = {"sampler", "trials", "startup_trials", "concurrency", "asha", "space"}
_ASHA = {"grace_period", "reduction_factor"}
_LR_SEARCH = {"trials", "span", "seed", "sampler"}
SAMPLERS = ("tpe", "random", "gp", "cmaes")
LR_SAMPLERS = ("grid", *SAMPLERS)


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: a numeric range (``low``..``high``, log-scaled when ``log``)
    or, for names such as ``ortho``, a list of ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``float`` (lr), ``int`` (steps, ranks) or ``categorical``."""
        return "categorical" if self.choices else "float" if self.name == "lr" else "int"


@dataclass(frozen=True)
class SearchConfig:
    """The preset's ``search:`` section: the sampler, budget, ASHA and one space per method."""

    sampler: str
    trials: int
    startup_trials: int
    concurrency: int
    asha: dict[str, float] | None  # {"grace_period", "reduction_factor"}; None: no ASHA
    space: dict[str, tuple[SearchParam, ...]]  # method -> its searched parameters


@dataclass(frozen=True)
class LrSearch:
    """``downstream.lr_search``: tune every method's learning rate before stage 2, each with
    the same budget, so methods are compared at their own best rate, not at one shared guess.

    Optuna searches ``trials`` rates per (task, method), log-uniform in [lr / span, lr * span]
    around the method's preset ``lr``; ``grid`` (the default) tries ``trials`` log-evenly
    spaced rates of that range (the preset's own rate among them when ``trials`` is odd).
    Search trials train on task seed ``seed`` (not one of the study's seeds), so the rate is
    chosen on scenes the reported results never see.
    """

    trials: int
    span: float = 10.0
    seed: int = 1000
    sampler: str = "grid"

    def bounds(self, lr: float) -> tuple[float, float]:
        """The searched range around a method's preset rate ``lr``."""
        return lr / self.span, lr * self.span

    def rates(self, lr: float) -> list[float]:
        """The grid's rates around ``lr``, the range's ends exactly."""
        if self.trials == 1:
            return [lr]
        low, high = self.bounds(lr)
        inner = [lr * self.span ** (2 * i / (self.trials - 1) - 1)
                 for i in range(1, self.trials - 1)]
        return [low, *inner, high]


@dataclass(frozen=True)
class Mining:
    """``mining:``: how each factor's LoRA adapters are trained (stage 1)."""

    steps: int
    rank: int
    lr: float
    batch_size: int
    report_every: int
    init_scale: float = 1.0  # scales LoRA A's init (README, "Mining that finds attributes")


@dataclass(frozen=True)
class Downstream:
    """``downstream:``: the method x task x seed grid of stage 2 and its training."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    lr: dict[str, float]  # method -> learning rate (every method but none)
    rank: int
    batch_size: int
    report_every: int
    lr_search: LrSearch | None = None  # None: every method at its ``lr``


@dataclass(frozen=True)
class Ablation:
    """``ablation:``: the reduced method's axes, each varied alone around the main setting.

    ``seeds`` and ``tasks`` (default: every downstream seed and task) are where the
    variants run; the main method comparison, which the claims rest on, keeps them all.
    """

    ranks: tuple[int, ...]
    subsets: tuple[tuple[str, ...], ...]
    ortho: tuple[str, ...]
    extraction: tuple[str, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class Preset:
    """A validated study preset, nested as its YAML is (sweeps/presets.yaml says what each
    field means)."""

    name: str
    model: str
    random_init: bool
    size: int
    views: int
    scenes: dict[str, int]
    factors: tuple[str, ...]
    groups: int
    adapter_seeds: tuple[int, ...]
    mining: Mining
    extraction: ExtractConfig
    downstream: Downstream
    ablation: Ablation
    resources: dict[str, dict[str, float]]  # stage ("mine", "finetune") -> {"cpu", "gpu"}
    search: SearchConfig | None = None  # the optional ``search:`` section (sweeps/search.py)
    weights_sha256: str | None = None  # the --weights file's sha256, pinned (attrsub.fetch)

    def task_size(self) -> TaskSize:
        return TaskSize(self.scenes["train"], self.scenes["eval"], self.views, self.size)


def _section(raw: dict[str, Any], key: str, allowed: set[str], where: str,
             optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    val = raw.get(key)
    if not isinstance(val, dict):
        raise ConfigError(f"{where}: {key!r} must be a mapping with keys {sorted(allowed)}")
    _no_unknown(val, allowed | optional, f"{where}.{key}")
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
    bad = [x for x in v if not isinstance(x, str) or x not in valid]
    if bad:
        raise ConfigError(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    twice = sorted({x for x in v if v.count(x) > 1})
    if twice:
        raise ConfigError(f"{what} {twice} listed more than once in {v}")
    return tuple(v)


def _pos_float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ConfigError(f"{what} must be a positive finite number, got {v!r}")
    return float(v)


def _lrs(v: Any, methods: tuple[str, ...], what: str) -> dict[str, float]:
    """One learning rate for every method, or a mapping method -> rate (``default`` for the
    rest): low-rank methods need far larger rates than full fine-tuning to move at all."""
    if not isinstance(v, dict):
        rate = _pos_float(v, what)
        return {m: rate for m in methods if REGISTRY[m].trains}
    _no_unknown(v, {*METHODS, "default"}, what)
    trained = [m for m in methods if REGISTRY[m].trains]  # zero-shot has no rate
    missing = [m for m in trained if m not in v and "default" not in v]
    if missing:
        raise ConfigError(f"{what} has no rate for method(s) {missing} and no 'default'")
    return {m: _pos_float(v.get(m, v.get("default")), f"{what}.{m}") for m in trained}


def from_dict(name: str, raw: Any) -> Preset:
    """Validate one preset's mapping; ConfigError names the first bad field."""
    where = f"preset {name!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(raw, _KEYS | {"search", "weights_sha256"}, where)
    missing = sorted(_KEYS - set(raw))
    if missing:
        raise ConfigError(f"{where} lacks {missing}")
    if raw["model"] not in CONFIGS:
        raise ConfigError(f"{where}: unknown model {raw['model']!r}; valid: {', '.join(CONFIGS)}")
    size = check_size(raw["size"], f"{where}: size")
    scenes = _section(raw, "scenes", _SCENES, where)
    for k in _SCENES:
        _pos_int(scenes[k], f"{where}.scenes.{k}")
    mining = dict(_section(raw, "mining", _MINING, where, optional=frozenset({"init_scale"})))
    for k in ("steps", "rank", "batch_size", "report_every"):
        _pos_int(mining[k], f"{where}.mining.{k}")
    _pos_float(mining["lr"], f"{where}.mining.lr")
    mining["init_scale"] = _pos_float(mining.get("init_scale", 1.0), f"{where}.mining.init_scale")
    ext = raw["extraction"]
    if not isinstance(ext, dict):
        raise ConfigError(f"{where}: extraction must be a mapping of ExtractConfig fields")
    _no_unknown(ext, {f.name for f in dataclasses.fields(ExtractConfig)}, f"{where}.extraction")
    try:
        extraction = ExtractConfig(**ext)
    except TypeError as exc:
        raise ConfigError(f"{where}.extraction: {exc}") from exc
    down = _section(raw, "downstream", _DOWN, where, optional=frozenset({"lr_search"}))
    abl = _section(raw, "ablation", _ABLATION, where, optional=frozenset({"seeds", "tasks"}))
    res = _section(raw, "resources", _STAGES, where)
    resources = {}
    for stage in sorted(_STAGES):
        r = _section(res, stage, _RESOURCES, f"{where}.resources")
        _pos_float(r["cpu"], f"{where}.resources.{stage}.cpu")
        gpu = r["gpu"]
        if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0:
            raise ConfigError(f"{where}.resources.{stage}.gpu must be >= 0, got {gpu!r}")
        if gpu > 1 and gpu != int(gpu):
            raise ConfigError(
                f"{where}.resources.{stage}.gpu {gpu!r}: above 1 a trial needs whole GPUs"
            )
        resources[stage] = {"cpu": float(r["cpu"]), "gpu": float(gpu)}
    factors = _names(raw["factors"], FACTORS, f"{where} factor(s)")
    methods = _names(down["methods"], METHODS, f"{where} method(s)")
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
    seeds = _seeds(down["seeds"], f"{where}.downstream.seeds")
    ablation_seeds = seeds
    if abl.get("seeds") is not None:
        ablation_seeds = _seeds(abl["seeds"], f"{where}.ablation.seeds")
        stray = sorted(set(ablation_seeds) - set(seeds))
        if stray:
            raise ConfigError(f"{where}.ablation.seeds {stray} are not downstream seeds "
                              f"{list(seeds)}; ablation variants are compared on those")
    ablation_tasks = tasks
    if abl.get("tasks") is not None:
        ablation_tasks = _names(abl["tasks"], tasks, f"{where}.ablation task(s)")
    if not isinstance(raw["random_init"], bool):
        raise ConfigError(f"{where}: random_init must be true or false")
    pin = raw.get("weights_sha256")
    if pin is not None and not (isinstance(pin, str) and re.fullmatch(r"[0-9a-f]{64}", pin)):
        raise ConfigError(f"{where}.weights_sha256 must be 64 lowercase hex digits, got {pin!r}")
    steps = _pos_int(down["steps"], f"{where}.downstream.steps")
    preset = Preset(
        name=name,
        model=raw["model"],
        random_init=raw["random_init"],
        weights_sha256=pin,
        size=size,
        views=_pos_int(raw["views"], f"{where}.views"),
        scenes=dict(scenes),
        factors=factors,
        groups=_pos_int(raw["groups"], f"{where}.groups"),
        adapter_seeds=_seeds(raw["adapter_seeds"], f"{where}.adapter_seeds"),
        mining=Mining(**mining),
        extraction=extraction,
        downstream=Downstream(
            tasks=tasks,
            methods=methods,
            seeds=seeds,
            steps=steps,
            lr=_lrs(down["lr"], methods, f"{where}.downstream.lr"),
            rank=rank,
            batch_size=_pos_int(down["batch_size"], f"{where}.downstream.batch_size"),
            report_every=_pos_int(down["report_every"], f"{where}.downstream.report_every"),
        ),
        ablation=Ablation(
            ranks=ranks,
            subsets=subsets_t,
            ortho=_names(abl["ortho"] or ["qr"], ORTHO_METHODS, f"{where} ortho method(s)"),
            extraction=_names(
                abl["extraction"] or [extraction.method], EXTRACT_METHODS,
                f"{where} extraction method(s)",
            ),
            seeds=ablation_seeds,
            tasks=ablation_tasks,
        ),
        resources=resources,
    )
    for task in preset.downstream.tasks:
        get_task(task).check(preset.task_size())
    _check_widths(preset, where)
    if raw.get("search") is not None:
        preset = dataclasses.replace(preset, search=_search(raw["search"], preset, where))
    if down.get("lr_search") is not None:
        lrs = _lr_search(down["lr_search"], f"{where}.downstream.lr_search")
        if lrs.seed in preset.downstream.seeds:
            raise ConfigError(
                f"{where}.downstream.lr_search.seed {lrs.seed} is one of the study's seeds "
                f"{list(preset.downstream.seeds)}; rates must be chosen on other scenes"
            )
        preset = dataclasses.replace(
            preset, downstream=dataclasses.replace(preset.downstream, lr_search=lrs)
        )
    return preset


def _lr_search(raw: Any, where: str) -> LrSearch:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be null or a mapping with keys {sorted(_LR_SEARCH)}")
    _no_unknown(raw, _LR_SEARCH, where)
    if "trials" not in raw:
        raise ConfigError(f"{where} lacks 'trials' (rates tried per task and method)")
    out = LrSearch(trials=_pos_int(raw["trials"], f"{where}.trials"))
    if "span" in raw:
        span = _pos_float(raw["span"], f"{where}.span")
        if span <= 1:
            raise ConfigError(f"{where}.span must be above 1 (rates lr/span .. lr*span), "
                              f"got {span!r}")
        out = dataclasses.replace(out, span=span)
    if "seed" in raw:
        out = dataclasses.replace(out, seed=_seeds([raw["seed"]], f"{where}.seed")[0])
    if "sampler" in raw:
        if raw["sampler"] not in LR_SAMPLERS:
            raise ConfigError(f"unknown {where}.sampler {raw['sampler']!r}; valid: "
                              f"{', '.join(LR_SAMPLERS)}")
        out = dataclasses.replace(out, sampler=raw["sampler"])
    return out


def _check_widths(preset: Preset, where: str) -> None:
    """Every rank the study will use must fit the narrowest adapted layer of its model."""
    model = build(preset.model, device="meta")
    widths = {n: min(model.get_submodule(n).weight.shape)
              for n in target_modules(model, LoraSpec(rank=1))}
    layer, width = min(widths.items(), key=lambda kv: kv[1])
    asked = {
        "mining.rank": preset.mining.rank,
        "downstream.rank": preset.downstream.rank,
        "the psv/random baselines' rank (downstream.rank x factors)":
            preset.downstream.rank * len(preset.factors),
        **({"extraction.rank": preset.extraction.rank}
           if isinstance(preset.extraction.rank, int) else {}),
        **{f"ablation.ranks {r}": r for r in preset.ablation.ranks},
    }
    for what, r in asked.items():
        if r > width:
            raise ConfigError(
                f"{where}: {what} = {r} is larger than layer {layer!r} of {preset.model} "
                f"(width {width}); ranks must be at most {width}"
            )


def check_sampler(name: Any, what: str = "sampler") -> str:
    """A known Optuna sampler name (whether its package is installed is checked at search time)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(SAMPLERS)}")
    return name


def search_names(preset: Preset, method: str) -> set[str]:
    """The parameters a method's search space may name: rank_<factor> (0 drops the
    factor, so the subset is searched too), ortho and extraction for reduced; rank for
    the methods that have one; lr and steps for all."""
    names = {"lr", "steps"}
    if REGISTRY[method].needs_bank:
        return names | {"ortho", "extraction"} | {f"rank_{f}" for f in preset.factors}
    if REGISTRY[method].takes_rank:
        names.add("rank")
    return names


def _search(raw: Any, preset: Preset, where: str) -> SearchConfig:
    """Validate the ``search:`` section against the rest of the preset."""
    where = f"{where}.search"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with keys {sorted(_SEARCH)}")
    _no_unknown(raw, _SEARCH, where)
    missing = sorted(_SEARCH - set(raw))
    if missing:
        raise ConfigError(f"{where} lacks {missing}")
    asha = raw["asha"]
    if asha is not None:
        if not isinstance(asha, dict):
            raise ConfigError(f"{where}.asha must be null or a mapping with {sorted(_ASHA)}")
        _no_unknown(asha, _ASHA, f"{where}.asha")
        if sorted(asha) != sorted(_ASHA):
            raise ConfigError(f"{where}.asha lacks {sorted(_ASHA - set(asha))}")
        rf = asha["reduction_factor"]
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not rf > 1:
            raise ConfigError(f"{where}.asha.reduction_factor must be above 1, got {rf!r}")
        asha = {"grace_period": _pos_int(asha["grace_period"], f"{where}.asha.grace_period"),
                "reduction_factor": float(rf)}
    space = raw["space"]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}.space is empty: name at least one method and a parameter "
                          f"to search, e.g. reduced: {{lr: {{low: 1.0e-4, high: 1.0e-2}}}}")
    return SearchConfig(
        sampler=check_sampler(raw["sampler"], f"{where}.sampler"),
        trials=_pos_int(raw["trials"], f"{where}.trials"),
        startup_trials=_pos_int(raw["startup_trials"], f"{where}.startup_trials"),
        concurrency=_pos_int(raw["concurrency"], f"{where}.concurrency"),
        asha=asha,
        space={m: _method_space(preset, m, ps, f"{where}.space.{m}") for m, ps in space.items()},
    )


def _method_space(preset: Preset, method: Any, raw: Any, where: str) -> tuple[SearchParam, ...]:
    if method not in REGISTRY or not REGISTRY[method].trains:
        valid = ", ".join(REGISTRY.where(trains=True))
        raise ConfigError(f"{where}: cannot search method {method!r}; valid: {valid}")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: the search space of method {method!r} is empty")
    valid = search_names(preset, method)
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown search parameter(s) {unknown} for method "
                          f"{method!r}; valid: {sorted(valid)}")
    params = tuple(_param(preset, name, v, f"{where}.{name}") for name, v in raw.items())
    ranks = {p.name: p for p in params if p.name.startswith("rank_")}
    if REGISTRY[method].needs_bank and len(ranks) == len(preset.factors) and all(
            p.high == 0 for p in ranks.values()):
        raise ConfigError(f"{where}: every rank_<factor> is 0, so no factor is left")
    return params


def _param(preset: Preset, name: str, raw: Any, where: str) -> SearchParam:
    if name in ("ortho", "extraction"):
        valid = ORTHO_METHODS if name == "ortho" else EXTRACT_METHODS
        choices = _names(raw, valid, f"{where} choice(s)")
        if len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: repeated choices {list(choices)}")
        return SearchParam(name, choices=choices)
    if not isinstance(raw, dict) or not {"low", "high"} <= set(raw):
        raise ConfigError(f"{where} must be a mapping {{low: ..., high: ...}} (log: optional)")
    _no_unknown(raw, {"low", "high", "log"}, where)
    low, high, log = raw["low"], raw["high"], raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log!r}")
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(f"{where}: bounds must be numbers, got {bound!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low!r} is above high {high!r}")
    if name == "lr":
        if not low > 0:
            raise ConfigError(f"{where}: a learning rate range must be above 0, got low {low!r}")
        return SearchParam(name, float(low), float(high), log)
    if not isinstance(low, int) or not isinstance(high, int):
        raise ConfigError(f"{where}: {name} takes integer bounds, got {low!r}..{high!r}")
    floor = 0 if name.startswith("rank_") else 1
    if low < floor:
        raise ConfigError(f"{where}: low must be at least {floor}, got {low!r}")
    if log and low < 1:
        raise ConfigError(f"{where}: a log range needs low >= 1, got {low!r}")
    if name.startswith("rank_") and isinstance(preset.extraction.rank, int) \
            and high > preset.extraction.rank:
        raise ConfigError(f"{where}: high {high} exceeds the extraction rank "
                          f"{preset.extraction.rank}")
    if name == "rank":
        width = _narrowest(preset.model)
        if high > width:
            raise ConfigError(f"{where}: high {high} is wider than the narrowest adapted layer "
                              f"of {preset.model} (width {width})")
    return SearchParam(name, low, high, log)


def _narrowest(model_name: str) -> int:
    model = build(model_name, device="meta")
    return min(min(model.get_submodule(n).weight.shape)
               for n in target_modules(model, LoraSpec(rank=1)))


def load_preset(name: str, path: str | os.PathLike[str] = PRESETS) -> Preset:
    """The preset ``name`` from ``path``; ConfigError lists the valid names otherwise."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read presets file {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"presets file {str(path)!r} is not valid YAML: {why}{where}") from exc
    if not isinstance(raw, dict) or not raw:
        got = "empty" if not raw else f"a {type(raw).__name__}"
        raise ConfigError(f"presets file {str(path)!r} must map preset names to presets, "
                          f"but it is {got}")
    if name not in raw:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(map(str, raw))}")
    return from_dict(name, raw[name])
