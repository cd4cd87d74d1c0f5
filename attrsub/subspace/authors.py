"""The paper authors' predefined-subspace file, to and from our subspace bank.

The authors' training code (github.com/jpppppppppppppppppppppppp/Subspaces-Mining-for-VGGT,
``peft/layer.py``, ``LoraLayer.update_layer``, option ``use_predefined_space``) reads one
safetensors file with a frozen pair per adapted layer, looked up by the PEFT module name
``aggregator.{block_type}.{layer}.{module}.{weight}`` as the key prefix
``{block_type}.{module}.{weight}.{layer}``:

- ``{prefix}.A`` [D, d_in]: the weight of a frozen ``nn.Linear(d_in, D)`` (the row basis,
  transposed); D = ``A.shape[0]`` is the width of their trainable square middle matrix;
- ``{prefix}.B`` [d_out, D]: the weight of a frozen ``nn.Linear(D, d_out)`` (column basis).

Their layer computes scaling * B M A x with M [D, D] zero-initialised (scaling = lora_alpha
/ r of their LoraConfig, absorbed by M). Only 5-part aggregator names are looked up, so
the heads keep ordinary LoRA there; block types are ``frame_blocks`` and ``global_blocks``
(their ``decoder.*`` keys belong to another model). The tensors are assigned as the
weights' data, so float32 is what we write.

Our bank holds per factor and layer an orthonormal column basis U_a [d_out, r_a] and row
basis V_a [d_in, r_a]. Exported, B = [U_1 .. U_m] and A = [V_1 .. V_m]^T: the paper's plain
concatenation of the factors' bases (the span of its A = U S^1/2, B = V S^1/2; the
scale is a change of M's coordinates). Whatever else the bank holds (factor names, ranks,
singular values, spectra, IRLS weights, provenance) rides in the safetensors metadata as
JSON, which their loader ignores, so ``import_bank_authors`` restores the same bank
(equal bases, equal content hash). A file from their code has no such metadata: the caller
names the base and the factors, and each factor's slice of A/B becomes a basis taken as is
(scale "none", unit singular values).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from attrsub import __version__
from attrsub.errors import ConfigError, DataError
from attrsub.fetch import file_sha256
from attrsub.fsio import atomic_path, check_new_file, read_safetensors
from attrsub.model.base import BaseModel
from attrsub.subspace.bank import Bank, load_bank, save_bank
from attrsub.subspace.evidence import current_keys
from attrsub.subspace.extract import ExtractConfig, LayerSubspace
from attrsub.subspace.integrate import rank_of

BLOCK_TYPES = ("frame_blocks", "global_blocks")
MODULES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
META_KEY = "attrsub"
KIND = "authors-subspace"
FORMAT = 1
DEFAULT_FACTOR = "authors"
_LAYER = re.compile(r"aggregator\.(\w+)\.(\d+)\.(\w+)\.(\w+)")
_KEY_FORMS = "{block_type}.{module}.{weight}.{layer}.A/B"


def authors_key(layer: str) -> str:
    """Our module name -> their key prefix: aggregator.frame_blocks.3.attn.qkv ->
    frame_blocks.attn.qkv.3."""
    m = _LAYER.fullmatch(layer)
    if not m or m[1] not in BLOCK_TYPES or f"{m[3]}.{m[4]}" not in MODULES:
        raise ConfigError(
            f"layer {layer!r} has no key in the authors' format, which holds "
            f"aggregator.{{{','.join(BLOCK_TYPES)}}}.N.{{{','.join(MODULES)}}} only"
        )
    return f"{m[1]}.{m[3]}.{m[4]}.{m[2]}"


def layer_name(key: str) -> tuple[str, str]:
    """Their key -> (our module name, "A" or "B"); DataError naming a key we cannot place."""
    stem, _, side = key.rpartition(".")
    parts = stem.split(".")
    if side not in ("A", "B") or len(parts) != 4:
        raise DataError(f"key {key!r} is not of the form {_KEY_FORMS}")
    block, module, weight, layer = parts
    if block == "decoder":
        raise DataError(
            f"key {key!r} is for a model whose blocks are named 'decoder', not VGGT; valid "
            f"block types: {', '.join(BLOCK_TYPES)}"
        )
    if block not in BLOCK_TYPES:
        raise DataError(
            f"key {key!r} has unknown block type {block!r}; valid: {', '.join(BLOCK_TYPES)}"
        )
    if f"{module}.{weight}" not in MODULES:
        raise DataError(
            f"key {key!r} names module {module}.{weight}; valid: {', '.join(MODULES)}"
        )
    if not layer.isdecimal():
        raise DataError(f"key {key!r} has layer {layer!r}, not a block index")
    return f"aggregator.{block}.{int(layer)}.{module}.{weight}", side


def _floats(t: Tensor) -> list[float]:
    """float32 values as JSON numbers (Python floats print in full, so they read back exact)."""
    return [float(x) for x in t.detach().float().cpu().tolist()]


def bank_to_authors(
    bank: Bank,
    factors: Sequence[str] | None = None,
    ranks: Mapping[str, int] | int | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of the authors' file for ``factors`` (default: all, in bank
    order), each factor contributing its first ``ranks`` directions (default: all)."""
    factors = list(bank.factors if factors is None else factors)
    if not factors or len(set(factors)) != len(factors):
        raise ConfigError(f"factors must be distinct and at least one, got {factors}")
    unknown = [f for f in factors if f not in bank.subspaces]
    if unknown:
        raise ConfigError(f"unknown factor(s) {unknown}; this bank has {bank.factors}")
    if isinstance(ranks, Mapping):
        extra = sorted(set(ranks) - set(factors))
        if extra:
            raise ConfigError(f"ranks given for factors not exported: {extra}; exported: {factors}")
    tensors: dict[str, Tensor] = {}
    layers: dict[str, list[dict[str, Any]]] = {}
    for layer in bank.subspaces[factors[0]]:
        key = authors_key(layer)
        cols, rows, entries = [], [], []
        for f in factors:
            sub = bank.subspaces[f].get(layer)
            if sub is None:
                raise ConfigError(f"factor {f!r} of the bank has no subspace for layer {layer!r}")
            r = rank_of(ranks, f, sub.rank, f" at layer {layer!r}")
            cols.append(sub.col_basis[:, :r])
            rows.append(sub.row_basis[:, :r].T)
            entries.append({
                "factor": f, "rank": r, "iterations": sub.iterations, "method": sub.method,
                "scale": sub.scale, "converged": sub.converged,
                "singular_values": _floats(sub.singular_values[:r]),
                "spectrum": _floats(sub.spectrum), "weights": _floats(sub.weights),
            })
        tensors[f"{key}.B"] = torch.cat(cols, dim=1).float().contiguous()
        tensors[f"{key}.A"] = torch.cat(rows, dim=0).float().contiguous()
        layers[layer] = entries
    extra_layers = sorted({ly for f in factors for ly in bank.subspaces[f]} - set(layers))
    if extra_layers:
        raise ConfigError(
            f"factor(s) {factors} cover different layers; {extra_layers[0]!r} is missing from "
            f"factor {factors[0]!r}"
        )
    record = {
        "kind": KIND,
        "format": FORMAT,
        "attrsub_version": __version__,
        "base": {"name": bank.base_name, "weights_hash": bank.weights_hash},
        "bank_content_hash": bank.content_hash(),
        "extract": dataclasses.asdict(bank.config),
        "factors": factors,
        "sources": {f: bank.sources.get(f, []) for f in factors},
        "evidence": bank.evidence,
        "layers": layers,
    }
    return tensors, {META_KEY: json.dumps(record)}


def export_bank_authors(
    bank_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    factors: Sequence[str] | None = None,
    ranks: Mapping[str, int] | int | None = None,
) -> Path:
    """Write the bank at ``bank_path`` as the authors' predefined-subspace file, atomically.

    ``factors`` (default all, in bank order) are concatenated in that order; ``ranks`` keeps
    each factor's first r directions (one int for all, or per factor; default: all).
    """
    out = check_new_file(out_path, "--out")
    tensors, meta = bank_to_authors(load_bank(bank_path), factors, ranks)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def _pairs(tensors: Mapping[str, Tensor]) -> dict[str, tuple[str, Tensor, Tensor]]:
    """layer -> (key prefix, A, B) in float32, every key parsed and every shape checked."""
    sides: dict[str, dict[str, Tensor]] = {}
    prefix: dict[str, str] = {}
    for key, t in tensors.items():
        layer, side = layer_name(key)
        prefix[layer] = key[:-2]
        if t.ndim != 2 or not t.is_floating_point():
            raise DataError(
                f"key {key!r} is a {t.dtype} tensor of shape {tuple(t.shape)}; need a 2-D "
                f"float matrix"
            )
        if not torch.isfinite(t).all():
            raise DataError(f"key {key!r} holds NaN or infinite values")
        sides.setdefault(layer, {})[side] = t.float()
    out = {}
    for layer, pair in sides.items():
        for side in ("A", "B"):
            if side not in pair:
                raise DataError(f"key {prefix[layer]}.{side} is missing (its pair is present)")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != b.shape[1]:
            raise DataError(
                f"key {prefix[layer]}.A is {tuple(a.shape)} and .B {tuple(b.shape)}; need A "
                f"[D, d_in] and B [d_out, D] with the same D"
            )
        out[layer] = (prefix[layer], a, b)
    if not out:
        raise DataError("the file holds no A/B pairs")
    return out


Pairs = Mapping[str, tuple[str, Tensor, Tensor]]


def _check_shapes(model: nn.Module, name: str, pairs: Pairs) -> None:
    """Every pair names a linear layer of the base and fits its weight's shape."""
    for layer, (key, a, b) in pairs.items():
        try:
            mod = model.get_submodule(layer)
        except AttributeError:
            raise DataError(
                f"key {key}.A names layer {layer!r}, which the {name} model does not have"
            ) from None
        if not isinstance(mod, nn.Linear):
            raise DataError(f"key {key}.A names {layer!r}, which is not a linear layer")
        d_out, d_in = mod.weight.shape
        if b.shape[0] != d_out or a.shape[1] != d_in:
            raise DataError(
                f"key {key}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit {name}'s "
                f"{layer} of shape ({d_out}, {d_in}); need A [D, {d_in}] and B [{d_out}, D]"
            )


def _split(
    widths: Mapping[str, tuple[str, int]],
    factors: Sequence[str],
    ranks: Sequence[int] | int | None,
) -> dict[str, list[int]]:
    """Per layer the width of each factor's slice, for a file that does not record it."""
    if not factors or len(set(factors)) != len(factors):
        raise ConfigError(f"factors must be distinct and at least one, got {list(factors)}")
    if isinstance(ranks, Sequence) and len(ranks) != len(factors):
        raise ConfigError(
            f"{len(ranks)} ranks {list(ranks)} for {len(factors)} factors {list(factors)}"
        )
    out = {}
    for layer, (key, d) in widths.items():
        if ranks is None:
            if d % len(factors):
                raise DataError(
                    f"key {key}.A has width {d}, which does not split evenly into "
                    f"{len(factors)} factors; give ranks"
                )
            rs = [d // len(factors)] * len(factors)
        else:
            rs = [ranks] * len(factors) if isinstance(ranks, int) else list(ranks)
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rs):
            raise ConfigError(f"ranks must be positive integers, got {ranks!r}")
        if sum(rs) != d:
            raise DataError(f"key {key}.A has width {d}, but ranks {rs} add up to {sum(rs)}")
        out[layer] = rs
    return out


def authors_to_bank(
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, str],
    *,
    base: BaseModel | None = None,
    factors: Sequence[str] | None = None,
    ranks: Sequence[int] | int | None = None,
    source: Mapping[str, Any] | None = None,
) -> Bank:
    """A Bank from the authors' file contents; exact when ``meta`` is ours (see module doc)."""
    from attrsub.model import CONFIGS, build

    record = json.loads(meta[META_KEY]) if META_KEY in meta else None
    if record is not None and record.get("kind") != KIND:
        raise DataError(f"the file's {META_KEY!r} metadata is not an {KIND} record")
    if record is not None and (factors is not None or ranks is not None):
        raise ConfigError(
            f"the file records its factors {record['factors']} and ranks; factors and ranks "
            f"are for files made by the authors' code"
        )
    if record is None and base is None:
        raise ConfigError(
            "a file from the authors' code names no base model; pass the base its subspace "
            "belongs to (--base, --weights)"
        )
    pairs = _pairs(tensors)
    if record is not None:
        name, want = record["base"]["name"], record["base"]["weights_hash"]
        if base is not None and (base.weights_hash != want or base.name != name):
            raise DataError(
                f"the subspace belongs to {name} weights {want}, but the base given is "
                f"{base.name} weights {base.weights_hash}"
            )
        if name not in CONFIGS:
            raise DataError(f"the file names base {name!r}; known: {', '.join(CONFIGS)}")
    else:
        name, want = base.name, base.weights_hash
    model = base.model if base is not None else build(name, device="meta")
    _check_shapes(model, name, pairs)
    if record is None:
        names = list(factors) if factors is not None else [DEFAULT_FACTOR]
        order = [n for n, _ in model.named_modules() if n in pairs]
        widths = {ly: (pairs[ly][0], pairs[ly][1].shape[0]) for ly in order}
        entries = {
            ly: [{"factor": f, "rank": r} for f, r in zip(names, rs, strict=True)]
            for ly, rs in _split(widths, names, ranks).items()
        }
        config = ExtractConfig()
        sources = {f: [dict(source or {})] for f in names}
        evidence: list[dict[str, Any]] = []
    else:
        names, entries = list(record["factors"]), record["layers"]
        config = ExtractConfig(**record["extract"])
        sources = record.get("sources", {})
        evidence = [current_keys(r) for r in record.get("evidence", [])]
        missing = sorted(set(pairs) ^ set(entries))
        if missing:
            raise DataError(
                f"layer {missing[0]!r} is in the file's record or its tensors, not both"
            )
    subspaces: dict[str, dict[str, LayerSubspace]] = {f: {} for f in names}
    for layer, layer_entries in entries.items():
        key, a, b = pairs[layer]
        if [e["factor"] for e in layer_entries] != names or sum(
            e["rank"] for e in layer_entries
        ) != a.shape[0]:
            raise DataError(f"key {key}.A (width {a.shape[0]}) disagrees with the file's record")
        start = 0
        for e in layer_entries:
            r, sl = e["rank"], slice(start, start + e["rank"])
            start += r
            subspaces[e["factor"]][layer] = LayerSubspace(
                col_basis=b[:, sl].contiguous(),
                row_basis=a[sl].T.contiguous(),
                singular_values=torch.tensor(e["singular_values"]) if record else torch.ones(r),
                spectrum=torch.tensor(e["spectrum"]) if record else torch.ones(r),
                weights=torch.tensor(e["weights"]) if record else torch.ones(1),
                iterations=e.get("iterations", 0),
                rank=r,
                method=e.get("method", KIND),
                scale=e.get("scale", "none"),
                converged=e.get("converged", True),
            )
    return Bank(
        base_name=name,
        weights_hash=want,
        config=config,
        subspaces=subspaces,
        sources={f: list(sources.get(f, [])) for f in names},
        evidence=evidence,
    )


def import_bank_authors(
    path: str | os.PathLike[str],
    out_bank_path: str | os.PathLike[str],
    *,
    base: BaseModel | None = None,
    factors: Sequence[str] | None = None,
    ranks: Sequence[int] | int | None = None,
) -> Path:
    """Read an authors' predefined-subspace file into a subspace bank at ``out_bank_path``.

    A file we exported restores its bank exactly (``base`` optional, checked when given).
    A file from the authors' code needs ``base`` (the model it was mined on) and optionally
    ``factors`` (default one factor, ``authors``) and ``ranks`` (each factor's width per
    layer, one int or one per factor; default: an even split). Either way ``attrsub
    finetune --method reduced --bank OUT --factors ...`` can use the result.
    """
    out = check_new_file(out_bank_path, "--out")
    src = Path(path)
    meta, tensors = read_safetensors(src, "subspace file")
    try:
        bank = authors_to_bank(
            tensors, meta, base=base, factors=factors, ranks=ranks,
            source={"kind": KIND, "file": str(src), "sha256": file_sha256(src)},
        )
    except ConfigError:
        raise
    except DataError as exc:
        raise DataError(f"subspace file {str(src)!r}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"subspace file {str(src)!r} has a damaged record: {exc!r}") from exc
    return save_bank(bank, out)
