"""``none``: the zero-shot row. Nothing trains; the base model is evaluated as it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from attrsub.methods.base import Context, Method


class ZeroShot(Method):
    name = "none"
    color = "#7f7f7f"
    trains = False
    legend = "no fine-tuning"
    relative_cost = 0.2

    def config(self, settings: Mapping[str, Any]) -> None:
        return None

    def prepare(self, model: nn.Module, config: None, ctx: Context) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def trainable_count(self, model: nn.Module) -> int:
        return 0

