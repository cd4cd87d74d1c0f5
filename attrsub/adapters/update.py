"""One adapter's low-rank update of one weight matrix, the unit that extraction reads.

It lives with the adapters, not with extraction, because reading an adapter's factors is
the adapters' concern; extraction only sees the factored updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attrsub.errors import DataError


@dataclass(frozen=True, eq=False)
class Update:
    """One adapter's factored update of one weight matrix: dW = col @ row.T."""

    col: Tensor
    row: Tensor

    def __post_init__(self) -> None:
        if self.col.ndim != 2 or self.row.ndim != 2 or self.col.shape[1] != self.row.shape[1]:
            raise DataError(
                f"an Update needs col [d_out, r] and row [d_in, r] with the same r, got "
                f"col {tuple(self.col.shape)} and row {tuple(self.row.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the weight matrix this update applies to."""
        return (self.col.shape[0], self.row.shape[0])

    @property
    def rank(self) -> int:
        return self.col.shape[1]

    def dense(self) -> Tensor:
        """The d_out x d_in matrix in float64 (for references and tests only)."""
        return self.col.detach().double() @ self.row.detach().double().T


def from_peft(lora_A: Tensor, lora_B: Tensor, scaling: float = 1.0) -> Update:
    """PEFT's factors (lora_A [r, d_in], lora_B [d_out, r], dW = scaling B A) as an Update."""
    if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_A.shape[0] != lora_B.shape[1]:
        raise DataError(
            f"lora_A must be [r, d_in] and lora_B [d_out, r] with the same r, got "
            f"lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)}"
        )
    return Update(col=lora_B.detach() * scaling, row=lora_A.detach().T)
