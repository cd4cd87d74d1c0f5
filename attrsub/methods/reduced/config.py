"""Settings of the basis-family methods: which frozen basis, and how wide (PEFT's "config").

Only what can be checked without the bank is checked here (``rank``); the orthogonalisation
and ``total_rank`` are checked against the bank's subspaces when the basis is integrated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attrsub.checks import positive_int


@dataclass(frozen=True)
class ReducedConfig:
    """The mined basis: the bank's ``factors``, integrated with ``ranks`` directions each
    (``rank`` for every factor when ``ranks`` is None), orthogonalised by ``ortho`` and
    optionally truncated to ``total_rank`` directions. ``rank`` has no default here: a run's
    comes from ``FinetuneSpec``, the one place defaults live."""

    rank: int
    factors: tuple[str, ...] = ()
    ranks: Mapping[str, int] | int | None = None
    total_rank: int | None = None
    ortho: str = "qr"

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(self.factors))
        positive_int(self.rank, "rank")

    @property
    def per_factor(self) -> Mapping[str, int] | int:
        """The directions taken from each factor's subspace."""
        return self.rank if self.ranks is None else self.ranks


@dataclass(frozen=True)
class GeneratedBasisConfig:
    """A basis made from the base weights (PSV) or a seed (random): ``rank`` directions a side."""

    rank: int

    def __post_init__(self) -> None:
        positive_int(self.rank, "rank")
