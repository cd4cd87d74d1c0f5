"""PEFT LoRA on our VGGT: which layers, how to apply it, and the adapter folder on disk.

An adapter folder holds PEFT's own files (``adapter_model.safetensors``,
``adapter_config.json``) plus ``attrsub-adapter.json``, a sidecar that says what produced
it (base model and the hash of its weights, factor, dataset spec, seed, rank, steps, final
loss). The base hash is checked on load, so an adapter never lands on a base it was not
trained on. Targets are explicit module names (never a suffix pattern), so the patch
encoder (``aggregator.patch_embed.*``), whose blocks share the suffixes, is never adapted.

PEFT is imported only where an adapter is made or loaded: it imports transformers (about
3 s), which drivers, command-line errors and the trials of the other methods do not need.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attrsub import __version__
from attrsub.adapters.update import Update, from_peft
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import read_safetensors

if TYPE_CHECKING:
    from peft import PeftModel

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
BLOCKS = ("frame", "global")
INITS = ("default", "pissa")
SIDECAR = "attrsub-adapter.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
HEAD_PREFIXES = ("camera_head", "depth_head", "point_head", "track_head")
FROZEN_PREFIX = "aggregator.patch_embed"


@dataclass(frozen=True)
class LoraSpec:
    """Where LoRA goes and its size; defaults are the paper's mining adapters (r 16, alpha 32)."""

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS
    blocks: tuple[str, ...] = BLOCKS
    heads: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        alpha = 2.0 * self.rank if self.alpha is None else self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets, blocks = tuple(self.targets), tuple(self.blocks)
        bad = sorted(set(targets) - set(TARGETS))
        if bad or not targets:
            raise ConfigError(f"unknown LoRA targets {bad or '(none)'}; valid: {TARGETS}")
        bad = sorted(set(blocks) - set(BLOCKS))
        if bad:
            raise ConfigError(f"unknown block kinds {bad}; valid: {BLOCKS}")
        if not blocks and not self.heads:
            raise ConfigError("LoRA needs at least one block kind or heads=True")
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "blocks", blocks)

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank


def _unwrap(model: nn.Module) -> nn.Module:
    peft = sys.modules.get("peft")  # not imported yet: then no model is a PeftModel
    return model.get_base_model() if peft and isinstance(model, peft.PeftModel) else model


def target_modules(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Explicit names of the nn.Linear modules LoRA adapts, in model order.

    Aggregator blocks: ``aggregator.{frame,global}_blocks.{i}.{target}``; with ``heads`` also
    every nn.Linear of the heads (the camera head's; the DPT heads are convolutional).
    """
    kinds = tuple(f"aggregator.{k}_blocks." for k in spec.blocks)
    names = []
    for name, mod in _unwrap(model).named_modules():
        mod = getattr(mod, "base_layer", mod)  # an already-adapted layer counts as its base
        if not isinstance(mod, nn.Linear) or name.startswith(FROZEN_PREFIX) or ".lora_" in name:
            continue
        in_block = name.startswith(kinds) and any(name.endswith("." + t) for t in spec.targets)
        in_head = spec.heads and name.startswith(HEAD_PREFIXES)
        if in_block or in_head:
            names.append(name)
    if not names:
        raise ConfigError(f"LoRA spec {spec} matches no nn.Linear of this model")
    return names


def check_width(model: nn.Module, names: list[str], rank: int) -> None:
    """ConfigError when ``rank`` exceeds the narrower side of any of the layers ``names``."""
    base = _unwrap(model)
    for name in names:
        mod = base.get_submodule(name)
        w = getattr(mod, "base_layer", mod).weight
        if rank > min(w.shape):
            raise ConfigError(
                f"rank {rank} is larger than layer {name!r} of width {min(w.shape)} "
                f"(shape {tuple(w.shape)}); valid: 1..{min(w.shape)}"
            )


def apply_lora(
    model: nn.Module,
    spec: LoraSpec,
    init: str = "default",
    *,
    init_key: str | None = None,
    init_scale: float = 1.0,
    targets: list[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA (base frozen by PEFT); ``init="pissa"`` uses PiSSA's SVD init.

    With ``init_key`` every ``lora_A`` is redrawn by ``keyed_lora_a`` (PEFT's default
    distribution times ``init_scale``, from a generator keyed by ``init_key`` and the layer),
    so adapters with different keys start from independent A whatever torch's global seed
    is. ``targets`` overrides the module names ``target_modules`` would pick.
    """
    if init not in INITS:
        raise ConfigError(f"unknown LoRA init {init!r}; valid: {INITS}")
    if init_key is not None and init != "default":
        raise ConfigError(f"a keyed init redraws the default init, not {init!r}")
    if not (init_scale > 0 and math.isfinite(init_scale)):
        raise ConfigError(f"LoRA init scale must be a positive number, got {init_scale!r}")
    from peft import LoraConfig, get_peft_model

    names = targets if targets is not None else target_modules(model, spec)
    check_width(model, names, spec.rank)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=names,
        init_lora_weights=True if init == "default" else "pissa",
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    if init_key is not None:
        with torch.no_grad():
            for name, a in lora_a_weights(peft_model).items():
                a.copy_(keyed_lora_a(init_key, name, tuple(a.shape), init_scale))
    return peft_model


def init_key(factor: str, group: int, seed: int) -> str:
    """The LoRA init key of a mined adapter: one independent init per (factor, group, seed)."""
    return f"factor={factor}/group={group}/seed={seed}"


def keyed_lora_a(key: str, layer: str, shape: tuple[int, ...], scale: float = 1.0) -> Tensor:
    """lora_A [r, d_in] of one layer, drawn from PEFT's default U(-1/sqrt(d_in), 1/sqrt(d_in))
    (kaiming-uniform with a = sqrt(5)) times ``scale``, by a generator seeded with a hash of
    (key, layer). Deterministic, so the init is recorded by its key and can be redrawn."""
    seed = int.from_bytes(hashlib.sha256(f"{key}|{layer}".encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(seed & (2**63 - 1))
    bound = scale / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).float()


def lora_a_weights(model: nn.Module) -> dict[str, Tensor]:
    """Every adapted layer's lora_A weight (the live parameter), by the base model's name."""
    out = {}
    for name, mod in model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            out[name.removeprefix(PEFT_PREFIX)] = lora_a["default"].weight
    return out


def movement(
    model: nn.Module, init: dict[str, Tensor], scaling: float
) -> dict[str, float]:
    """How far training took each adapted layer from its init, median over layers:
    ``lora_a_change`` = ||A - A0||_F / ||A0||_F (near 0: the row space is still the init)
    and ``update_norm`` = ||scaling B A||_F."""
    changes, norms = [], []
    for name, mod in model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if not (isinstance(lora_a, nn.ModuleDict) and "default" in lora_a):
            continue
        layer = name.removeprefix(PEFT_PREFIX)
        a = lora_a["default"].weight.detach().double().cpu()
        b = mod.lora_B["default"].weight.detach().double().cpu()
        a0 = init[layer].double()
        changes.append(float((a - a0).norm() / a0.norm().clamp_min(1e-30)))
        norms.append(float(scaling * (b @ a).norm()))
    if not changes:
        raise ConfigError("the model has no LoRA layers to measure")
    return {"lora_a_change": statistics.median(changes),
            "update_norm": statistics.median(norms)}


def save_adapter(
    model: PeftModel, dest: str | os.PathLike[str], sidecar: Mapping[str, Any]
) -> Path:
    """Write PEFT's files and the sidecar into ``dest`` (a folder that must not exist yet).

    The caller makes it atomic by passing a temporary folder and renaming it.
    """
    dest = Path(dest)
    model.save_pretrained(str(dest))
    record = {"kind": "lora", "attrsub_version": __version__, **dict(sidecar)}
    (dest / SIDECAR).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return dest


def read_sidecar(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The adapter's provenance record; DataError if the folder is not an attrsub adapter."""
    path = Path(adapter_dir) / SIDECAR
    if not path.is_file():
        raise DataError(f"{str(adapter_dir)!r} is not an adapter folder (no {SIDECAR})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"adapter sidecar {str(path)!r} is unreadable: {exc}") from exc
    base = meta.get("base") if isinstance(meta, dict) else None
    if not (isinstance(base, dict) and isinstance(base.get("name"), str)
            and isinstance(base.get("weights_hash"), str)):
        raise DataError(
            f"adapter sidecar {str(path)!r} lacks 'base' (the base model's name and "
            f"weights_hash it was trained on); it was not written by attrsub or is damaged"
        )
    return meta


def _read_tensors(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / WEIGHTS_FILE
    if not path.is_file():
        raise DataError(f"adapter {str(adapter_dir)!r} has no {WEIGHTS_FILE}")
    return read_safetensors(path, "adapter weights")[1]


def load_adapter(adapter_dir: str | os.PathLike[str], base: Any) -> PeftModel:
    """Apply a saved adapter to ``base`` (a ``model.base.BaseModel``), checking its weights hash."""
    adapter_dir = Path(adapter_dir)
    meta = read_sidecar(adapter_dir)
    want = meta.get("base", {}).get("weights_hash")
    if want != base.weights_hash:
        raise DataError(
            f"adapter {str(adapter_dir)!r} was trained on base weights {want} but the base "
            f"given has {base.weights_hash}; load the base it was trained on"
        )
    _read_tensors(adapter_dir)
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base.model, str(adapter_dir))
    except Exception as exc:
        raise DataError(f"adapter {str(adapter_dir)!r} does not load: {exc}") from exc


def layer_name(key: str) -> str:
    """PEFT's tensor key -> the base model's name, e.g. ``aggregator.frame_blocks.3.attn.qkv``."""
    name = key.removeprefix(PEFT_PREFIX)
    for suffix in (".lora_A.weight", ".lora_B.weight"):
        name = name.removesuffix(suffix)
    return name


def read_updates(adapter_dir: str | os.PathLike[str]) -> dict[str, Update]:
    """Every adapted layer's update dW = scaling * B A, read from the saved files alone."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"adapter {str(adapter_dir)!r} has no readable {CONFIG_FILE}") from exc
    tensors = _read_tensors(adapter_dir)
    a_keys = sorted(k for k in tensors if k.endswith(".lora_A.weight"))
    if not a_keys:
        raise DataError(f"adapter {str(adapter_dir)!r} holds no LoRA factors")
    out: dict[str, Update] = {}
    for key in a_keys:
        b_key = key.removesuffix(".lora_A.weight") + ".lora_B.weight"
        if b_key not in tensors:
            raise DataError(f"adapter {str(adapter_dir)!r} has {key} but no {b_key}")
        name = layer_name(key)
        out[name] = from_peft(tensors[key], tensors[b_key], _scaling(config, name))
    return out


def _scaling(config: Mapping[str, Any], name: str) -> float:
    """PEFT's scaling for one layer: alpha / r (alpha / sqrt(r) with rsLoRA), patterns honoured."""
    r = _pattern(config.get("rank_pattern") or {}, name, config["r"])
    alpha = _pattern(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
    return alpha / (r**0.5 if config.get("use_rslora") else r)


def _pattern(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if name == key or name.endswith("." + key):
            return value
    return default
