"""Any trained adapter as a plain PEFT LoRA folder, so tools that know PEFT load it unchanged.

The output is what ``PeftModel.from_pretrained(model, out_dir)`` reads (``adapter_config.json``
and ``adapter_model.safetensors``) and nothing else: no sidecar, no attrsub code to load it.
Provenance (the source folder, method, base name and weights hash, basis hash) rides in the
safetensors metadata under ``attrsub``, which PEFT ignores.

- A LoRA adapter (``attrsub mine-adapter`` or ``finetune --method lora``) is already one:
  its PEFT config is kept verbatim and its tensors are rewritten with the provenance.
- The reduced family (``reduced``, ``psv``, ``random``) computes dW = U M V^T with no scale
  of its own (``ReducedLinear.forward``). It becomes a LoRA of rank D_out = U's width per
  layer: lora_B = U [d_out, D_out], lora_A = M V^T [D_out, d_in] (formed in float64), and
  lora_alpha = r per layer, so PEFT's scaling alpha / r is exactly 1. Layers of different
  widths get ``rank_pattern`` and ``alpha_pattern`` entries. The frozen basis is rebuilt
  by ``attrsub.methods.load_trained`` (from the bank, the base's singular vectors or the
  seed), the one way attrsub itself loads these adapters, on a copy of the base.

Methods with no low-rank form are refused: ``full`` changes every weight, ``none`` nothing,
and a PiSSA fine-tune saves no adapter (its residual base exists only in memory).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from attrsub import __version__
from attrsub.adapters.lora import CONFIG_FILE, PEFT_PREFIX, SIDECAR, WEIGHTS_FILE, read_sidecar
from attrsub.errors import ConfigError, DataError
from attrsub.fsio import check_new_dir, publish_dir, read_safetensors
from attrsub.methods.registry import REGISTRY
from attrsub.model.base import BaseModel

FORMATS = ("peft-lora",)
# a method whose run keeps a low-rank adapter: LoRA's folder or the basis family's M
EXPORTABLE = tuple(n for n, m in REGISTRY.items() if m.saved_as)
META_KEY = "attrsub"


def export_peft_lora(
    adapter_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base: BaseModel | None = None,
    bank: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the trained adapter in ``adapter_dir`` as a plain PEFT LoRA folder ``out_dir``.

    ``adapter_dir``: a ``mine-adapter`` folder or a ``finetune --out`` folder. ``base``: the
    base model a reduced-family adapter was trained on (default: the shipped weights of the
    base its ``metrics.json`` names; a LoRA needs none). ``bank``: the subspace bank a
    ``reduced`` adapter used. ``base.model`` is not modified (the work is done on a copy);
    given with a LoRA, ``base`` is only checked against the adapter's base weights hash.
    """
    out = check_new_dir(out_dir)
    root = Path(adapter_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"adapter folder {str(root)!r} does not exist")
    lora = next((d for d in (root, root / "lora-adapter") if (d / SIDECAR).is_file()), None)
    if lora is not None:
        if bank is not None:
            raise ConfigError(f"{str(root)!r} is a LoRA adapter, which uses no bank; drop --bank")
        fill = _lora_fill(lora, base)
    else:
        fill = _reduced_fill(root, *_method(root), base, bank)
    return publish_dir(out, fill)


def _method(root: Path) -> tuple[str, dict[str, Any]]:
    """The method and metrics row of a ``finetune --out`` folder; refuses those with no LoRA
    form."""
    metrics = root / "metrics.json"
    if not metrics.is_file():
        raise DataError(
            f"{str(root)!r} is not an adapter folder: expected {SIDECAR} (mine-adapter), "
            f"lora-adapter/ or reduced.safetensors with metrics.json (finetune --out)"
        )
    try:
        row = json.loads(metrics.read_text())
        method = row.get("method")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{str(metrics)!r} is unreadable: {exc}") from exc
    the_method = REGISTRY.get(method) if isinstance(method, str) else None
    if the_method is not None and the_method.takes_rank and not the_method.saved_as:
        raise ConfigError(
            f"{str(root)!r} is a {the_method.label(rank=str(row.get('rank')))} fine-tune, which "
            f"saves no adapter; exportable methods: {', '.join(EXPORTABLE)}"
        )
    if the_method is None or not the_method.saved_as:
        raise ConfigError(
            f"method {method!r} of {str(root)!r} cannot be written as a LoRA adapter; "
            f"exportable methods: {', '.join(EXPORTABLE)}"
        )
    if not (root / the_method.saved_as).exists():
        raise DataError(f"{str(root)!r} is a {method} fine-tune without {the_method.saved_as}")
    return method, row


def _write(
    dest: Path, config: dict[str, Any], tensors: dict[str, Tensor], record: dict[str, Any]
) -> None:
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    meta = {"format": "pt", META_KEY: json.dumps(record, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / WEIGHTS_FILE), meta)


def _lora_fill(adapter: Path, base: BaseModel | None) -> Callable[[Path], None]:
    """A LoRA folder: PEFT's config verbatim, its tensors checked and re-tagged."""
    sidecar = read_sidecar(adapter)
    want = (sidecar.get("base") or {}).get("weights_hash")
    if base is not None and base.weights_hash != want:
        raise DataError(
            f"adapter {str(adapter)!r} was trained on base weights {want} but the base given "
            f"has {base.weights_hash}"
        )
    try:
        config = json.loads((adapter / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"adapter {str(adapter)!r} has no readable {CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise DataError(f"adapter {str(adapter)!r} is not a PEFT LoRA adapter ({CONFIG_FILE})")
    _, tensors = read_safetensors(adapter / WEIGHTS_FILE, "adapter weights")
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            pair = key.removesuffix(".lora_A.weight") + ".lora_B.weight"
            if pair not in tensors:
                raise DataError(f"adapter {str(adapter)!r} has {key} but no {pair}")
    if not any(k.endswith(".lora_A.weight") for k in tensors):
        raise DataError(f"adapter {str(adapter)!r} holds no LoRA factors")
    record = {
        "attrsub_version": __version__,
        "exported_from": str(adapter),
        "method": sidecar.get("kind", "lora"),
        "base": sidecar.get("base"),
        "sidecar": sidecar,
    }
    return lambda dest: _write(dest, config, tensors, record)


def reduced_as_lora(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, int]]:
    """PEFT tensors (lora_B = U, lora_A = M V^T) and rank per layer of a reduced model."""
    from attrsub.methods.reduced import reduced_layers

    tensors, ranks = {}, {}
    for name, layer in reduced_layers(model).items():
        u, m, v = (t.detach().cpu().double() for t in (layer.U, layer.M, layer.V))
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = u.float()
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (m @ v.T).float()
        ranks[name] = u.shape[1]
    if not ranks:
        raise DataError("the rebuilt model has no reduced-subspace layers to export")
    return tensors, ranks


def peft_config(ranks: dict[str, int]) -> dict[str, Any]:
    """PEFT's own adapter_config.json for LoRA on exactly these layers with scaling 1."""
    from peft import LoraConfig

    widths = list(ranks.values())
    r = max(set(widths), key=widths.count)
    odd = {name: w for name, w in ranks.items() if w != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        rank_pattern=odd,
        alpha_pattern=odd,
        target_modules=list(ranks),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
    )
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def _resolve_base(row: dict[str, Any], root: Path, base: BaseModel | None) -> BaseModel:
    """The adapter's base, as a private copy: the given one or the shipped weights it names."""
    from attrsub.model.base import load_base

    want = row.get("base_hash")
    if base is not None:
        if base.weights_hash != want:
            raise DataError(
                f"{str(root)!r} was trained on base weights {want} but the base given has "
                f"{base.weights_hash}; pass the base it was trained on"
            )
        return dataclasses.replace(base, model=copy.deepcopy(base.model))
    name = row.get("base")
    if want == "random-init":
        raise ConfigError(
            f"{str(root)!r} was trained on a random-init {name} base, which cannot be rebuilt "
            f"from its name; pass that base"
        )
    try:
        found = load_base(name)
    except ConfigError as exc:
        raise ConfigError(f"{str(root)!r}: {exc}") from exc
    if found.weights_hash != want:
        raise ConfigError(
            f"{str(root)!r} was trained on {name} weights {want}, not the shipped ones "
            f"({found.weights_hash}); pass the base it was trained on (--weights)"
        )
    return found


def _reduced_fill(
    root: Path,
    method: str,
    row: dict[str, Any],
    base: BaseModel | None,
    bank: str | os.PathLike[str] | None,
) -> Callable[[Path], None]:
    """A reduced-family fine-tune rebuilt as attrsub loads it, then written as LoRA."""
    from attrsub.methods.finetune import load_trained

    needs_bank = REGISTRY[method].needs_bank
    if needs_bank and bank is None:
        raise ConfigError(f"{str(root)!r} is a {method} adapter: pass the bank it used (--bank)")
    if not needs_bank and bank is not None:
        raise ConfigError(f"{str(root)!r} is a {method} adapter, which uses no bank; drop --bank")
    meta, _ = read_safetensors(root / "reduced.safetensors", "reduced adapter")
    b = _resolve_base(row, root, base)
    tensors, ranks = reduced_as_lora(load_trained(b, root, bank=bank))
    config = peft_config(ranks)
    record = {
        "attrsub_version": __version__,
        "exported_from": str(root),
        "method": method,
        "base": {"name": row.get("base"), "weights_hash": row.get("base_hash")},
        "basis_hash": meta.get("basis_hash"),
        "bank": str(bank) if bank is not None else None,
        "key": {k: row.get(k) for k in ("factors", "rank", "total_rank", "ortho", "seed")},
        "task": row.get("task"),
    }
    return lambda dest: _write(dest, config, tensors, record)
