"""The contract every fine-tuning method meets, so the driver, the sweeps and the report
treat them alike and a new method is one module in this folder plus one registry line.

A method is a stateless object: ``config`` turns the flat settings of a run (the columns a
trials row has: ``rank``, ``factors``, ``ranks``, ``total_rank``, ``ortho``, ``seed``) into
its own frozen config, validated there; ``prepare`` sets a model up so that exactly the
method's parameters train; ``save``/``load`` keep and restore what it trained in a
``finetune --out`` folder; ``merge`` folds it into plain weights. Everything the sweeps
and the report need to know about a method (does it train, does it need a bank, is its
``rank`` a width, its label and colour) is an attribute here, never a list of names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from attrsub.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """What a method may need beyond its config: the base's weights hash (every saved
    artefact is tied to it), the run's seed, and the study's bank or a ready basis."""

    base_hash: str = ""
    seed: int = 0
    bank: Any = None
    basis: Any = None


class Method(ABC):
    """One fine-tuning method (see the module docstring for the contract)."""

    name: ClassVar[str]
    #: the report's plot colour (a matplotlib colour string)
    color: ClassVar[str] = "black"
    #: False for the zero-shot row: no optimiser step is taken
    trains: ClassVar[bool] = True
    #: True when it integrates a mined subspace bank (the subspace actor serves it)
    needs_bank: ClassVar[bool] = False
    #: True when ``rank`` is its width (LoRA's r, a basis' D); its table rows keep ``rank``
    takes_rank: ClassVar[bool] = False
    #: a basis-family method: dW = U M V^T, saved as M, exportable as a rank-D LoRA
    basis_family: ClassVar[bool] = False
    #: what ``save`` writes inside a ``finetune --out`` folder (None: nothing to keep)
    saved_as: ClassVar[str | None] = None
    #: the expected training cost relative to LoRA's (a sweep starts the longest first)
    relative_cost: ClassVar[float] = 1.0
    #: the paper's name for the method in a figure legend (no width)
    legend: ClassVar[str]

    @abstractmethod
    def config(self, settings: Mapping[str, Any]) -> Any:
        """This method's frozen config from a run's flat settings (unused keys ignored)."""

    @abstractmethod
    def prepare(self, model: nn.Module, config: Any, ctx: Context) -> nn.Module:
        """``model`` set up so that exactly this method's parameters have requires_grad."""

    def trainable_count(self, model: nn.Module) -> int:
        """The exact number of values the method trains in a prepared model."""
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def save(self, model: nn.Module, out: Path, ctx: Context, record: Mapping[str, Any]) -> None:
        """Write what was trained into the run folder ``out`` (default: nothing to keep)."""
        return None

    def load(self, base: Any, out: Path, config: Any, ctx: Context) -> nn.Module:
        """``base.model`` (a ``model.base.BaseModel``) with what ``save`` wrote in ``out``."""
        raise ConfigError(f"method {self.name!r} saves no adapter to load")

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the trained update into plain weights (default: nothing to fold)."""
        return model

    def label(self, rank: str = "?", width: str = "?") -> str:
        """The paper's name for one configuration (``LoRA r=4``, ``mined subspace d=16``),
        given its ``rank`` and basis ``width`` already formatted."""
        return self.legend


class Registry(Mapping[str, Method]):
    """The methods by name, in the order tables and figures list them."""

    def __init__(self, *methods: Method) -> None:
        self._by_name = {m.name: m for m in methods}
        if len(self._by_name) != len(methods):
            raise ValueError("two methods share a name")

    def __getitem__(self, name: str) -> Method:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"unknown method {name!r}; valid: {', '.join(self)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str, default: Method | None = None) -> Method | None:  # type: ignore[override]
        return self._by_name.get(name, default)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def where(self, **attrs: Any) -> tuple[str, ...]:
        """Names of the methods whose attributes equal ``attrs``, e.g. ``where(trains=True)``."""
        return tuple(n for n, m in self._by_name.items()
                     if all(getattr(m, k) == v for k, v in attrs.items()))
