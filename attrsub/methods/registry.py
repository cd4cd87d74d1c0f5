"""The fine-tuning methods by name, in the order tables and figures list them.

Adding a method: a module in this folder with a ``Method`` subclass, and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from attrsub.checks import positive_int
from attrsub.methods.base import Context, Method, Registry
from attrsub.methods.full import FullFinetune
from attrsub.methods.lora import Lora, Pissa
from attrsub.methods.none import ZeroShot
from attrsub.methods.reduced import Psv, RandomBasis, Reduced
from attrsub.subspace.bank import BasisSet

REGISTRY = Registry(ZeroShot(), FullFinetune(), Lora(), Pissa(), Psv(), RandomBasis(), Reduced())
METHODS = tuple(REGISTRY)
#: the paper's method: the one whose ablation axes a study varies and whose claims it tests
PAPER_METHOD = "reduced"


def get_method(name: str) -> Method:
    """The method called ``name``; a ConfigError naming the valid ones otherwise."""
    return REGISTRY[name]


def check_method(name: str) -> None:
    get_method(name)


def prepare(
    method: str,
    model: nn.Module,
    *,
    bank: Any = None,
    basis: BasisSet | None = None,
    factors: Sequence[str] = (),
    ranks: Mapping[str, int] | int | None = None,
    ortho: str = "qr",
    rank: int = 16,
    seed: int = 0,
    total_rank: int | None = None,
    base_hash: str = "",
) -> tuple[nn.Module, int]:
    """Set ``model`` up for ``method``; returns (model, exact number of trainable values).

    The reduced method takes a ready ``basis`` (from a subspace server) or integrates one
    from ``bank``, ``factors``, ``ranks``/``rank``, ``ortho`` and ``total_rank``.
    """
    m = get_method(method)
    positive_int(rank, "rank")
    config = m.config({"factors": factors, "ranks": ranks, "ortho": ortho, "rank": rank,
                       "total_rank": total_rank})
    model = m.prepare(model, config, Context(base_hash=base_hash, seed=seed, bank=bank,
                                             basis=basis))
    return model, m.trainable_count(model)
