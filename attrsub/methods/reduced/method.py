"""The basis-family methods behind the method contract: ``reduced`` (a mined bank's
integration, the paper's method), ``psv`` and ``random`` (its ablation bases).

All three train only the M matrices of ``ReducedLinear`` layers on the LoRA target layers;
they differ in where the frozen basis comes from (``bases.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attrsub.adapters.lora import LoraSpec, target_modules
from attrsub.errors import ConfigError, DataError
from attrsub.methods.base import Context, Method
from attrsub.methods.reduced.bases import named_basis_hash, psv_bases, random_bases
from attrsub.methods.reduced.config import GeneratedBasisConfig, ReducedConfig
from attrsub.methods.reduced.model import (
    apply_reduced,
    load_reduced,
    merge,
    save_reduced,
    trainable_count,
)

WEIGHTS_FILE = "reduced.safetensors"


class _BasisMethod(Method):
    """What the three share: M is trained, counted, saved, loaded and merged the same way."""

    takes_rank = True
    basis_family = True
    saved_as = WEIGHTS_FILE
    #: how a configuration is named, before its width (``PSV d=16``)
    short: str

    def trainable_count(self, model: nn.Module) -> int:
        return trainable_count(model)

    def save(self, model: nn.Module, out: Path, ctx: Context, record: Mapping[str, Any]) -> None:
        save_reduced(model, out / WEIGHTS_FILE, base_hash=ctx.base_hash)

    def load(self, base: Any, out: Path, config: Any, ctx: Context) -> nn.Module:
        model = self.prepare(base.model, config, ctx)
        return load_reduced(model, out / WEIGHTS_FILE, base_hash=ctx.base_hash)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge(model)

    def label(self, rank: str = "?", width: str = "?") -> str:
        return f"{self.short} d={width}"

    @staticmethod
    def layers(model: nn.Module, rank: int) -> list[str]:
        """The layers a generated basis covers: LoRA's targets (``psv_bases`` and
        ``random_bases`` check each layer's width against ``rank``)."""
        return target_modules(model, LoraSpec(rank=rank))


class Reduced(_BasisMethod):
    name = "reduced"
    color = "#d62728"
    legend = "mined subspace"
    short = "mined subspace"
    needs_bank = True

    def config(self, settings: Mapping[str, Any]) -> ReducedConfig:
        return ReducedConfig(
            factors=tuple(settings.get("factors") or ()), ranks=settings.get("ranks"),
            rank=settings["rank"],
            total_rank=settings.get("total_rank"), ortho=settings.get("ortho") or "qr",
        )

    def prepare(self, model: nn.Module, config: ReducedConfig, ctx: Context) -> nn.Module:
        """The basis from ``ctx.basis`` (a subspace server's) or integrated from ``ctx.bank``."""
        basis = ctx.basis
        if basis is None:
            if ctx.bank is None:
                raise ConfigError("method 'reduced' needs a subspace bank (--bank FILE)")
            if not config.factors:
                raise ConfigError(
                    f"method 'reduced' needs factors; the bank has {ctx.bank.factors}"
                )
            basis = ctx.bank.basis_set(
                config.factors, config.per_factor, config.ortho, config.total_rank
            )
        if ctx.base_hash and basis.weights_hash != ctx.base_hash:
            raise DataError(
                f"the bank was mined on base weights {basis.weights_hash} but the model's base "
                f"has {ctx.base_hash}"
            )
        return apply_reduced(model, basis.bases, basis.basis_hash)



class _Generated(_BasisMethod):
    """A basis made from the base weights or a seed: only ``rank`` is set."""

    def config(self, settings: Mapping[str, Any]) -> GeneratedBasisConfig:
        return GeneratedBasisConfig(rank=settings["rank"])


class Psv(_Generated):
    name = "psv"
    color = "#9467bd"
    legend = "PSV basis"
    short = "PSV"

    def prepare(self, model: nn.Module, config: GeneratedBasisConfig, ctx: Context) -> nn.Module:
        bases = psv_bases(model, self.layers(model, config.rank), config.rank)
        return apply_reduced(model, bases, named_basis_hash("psv", ctx.base_hash, config.rank))


class RandomBasis(_Generated):
    name = "random"
    color = "#8c564b"
    legend = "random basis"
    short = "random basis"

    def prepare(self, model: nn.Module, config: GeneratedBasisConfig, ctx: Context) -> nn.Module:
        """Bases drawn from the run's seed, so each seed is its own random subspace."""
        bases = random_bases(model, self.layers(model, config.rank), config.rank, ctx.seed)
        return apply_reduced(
            model, bases, named_basis_hash("random", ctx.base_hash, config.rank, ctx.seed)
        )
