"""Which base model a run starts from: a named config plus a weights file, and its hash.

The hash of the base weights travels with every adapter and subspace bank, so an adapter
can never be applied to a base it was not trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attrsub.errors import ConfigError, DataError
from attrsub.fetch import fetch, file_sha256
from attrsub.model import CONFIGS, build, load

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
DEFAULT_BASE = "vggt-tiny"


def shipped_weights(name: str) -> Path | None:
    """The weights shipped in the package for ``name`` (only the tiny base ships)."""
    p = WEIGHTS_DIR / f"{name}.safetensors"
    return p if p.is_file() else None


@dataclass(frozen=True)
class BaseModel:
    """A loaded base model and where it came from."""

    name: str
    weights: Path | None
    weights_hash: str
    model: nn.Module


def load_base(
    name: str = DEFAULT_BASE,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    random_init: bool = False,
) -> BaseModel:
    """Load base ``name`` from ``weights`` (default: the shipped file for that config): a
    path, or a URI fetched once into this node's cache and verified (attrsub.fetch).

    ``random_init`` builds an untrained model (hash ``random-init``), the baseline the
    pretrained base is compared against.
    """
    if name not in CONFIGS:
        raise ConfigError(f"unknown model config {name!r}; valid: {', '.join(CONFIGS)}")
    if random_init:
        return BaseModel(name, None, "random-init", build(name, device=device))
    path = fetch(weights) if weights is not None else shipped_weights(name)
    if path is None:
        raise ConfigError(
            f"no weights ship for {name!r}; pass --weights PATH (e.g. VGGT's released "
            f"model.pt for vggt-1b). Shipped: {DEFAULT_BASE}"
        )
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} does not exist")
    model = load(name, weights=path, device=device)
    return BaseModel(name, path, file_sha256(path), model)
