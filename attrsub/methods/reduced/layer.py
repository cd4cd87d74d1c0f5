"""The reduced layer: a frozen nn.Linear plus U M V^T, with frozen bases U, V and only M trained.

``forward`` computes base(x) + ((x V) M^T) U^T: two thin projections around a D_out x D_in
matrix, never a dense d_out x d_in update, so a step costs about what LoRA of rank D costs.
M starts at zero, so the adapted model equals the base model at init. U and V are
non-persistent buffers (like VeRA's frozen projections): they belong to a basis identified
by its hash, and only M is ever saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrsub.errors import ConfigError


class ReducedLinear(nn.Module):
    """A frozen nn.Linear plus U M V^T, with U [d_out, D_out], V [d_in, D_in], M [D_out, D_in]."""

    def __init__(self, base: nn.Linear, U: Tensor, V: Tensor, basis_hash: str) -> None:
        super().__init__()
        d_out, d_in = base.weight.shape
        if U.ndim != 2 or V.ndim != 2 or U.shape[0] != d_out or V.shape[0] != d_in:
            raise ConfigError(
                f"bases U {tuple(U.shape)} and V {tuple(V.shape)} do not fit a weight of shape "
                f"({d_out}, {d_in}); need U [{d_out}, D] and V [{d_in}, D']"
            )
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        dev, dtype = base.weight.device, base.weight.dtype
        self.register_buffer("U", U.detach().to(dev, dtype).contiguous(), persistent=False)
        self.register_buffer("V", V.detach().to(dev, dtype).contiguous(), persistent=False)
        self.M = nn.Parameter(torch.zeros(U.shape[1], V.shape[1], device=dev, dtype=dtype))
        self.basis_hash = basis_hash

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x @ self.V, self.M), self.U)

    def delta(self) -> Tensor:
        """The dense update U M V^T (for merging and checks)."""
        return self.U @ self.M @ self.V.T


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model``, or a ConfigError naming it."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"the model has no module {name!r} to adapt") from exc
