"""``full``: full fine-tuning, every base parameter except the patch encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from attrsub.adapters.lora import FROZEN_PREFIX
from attrsub.methods.base import Context, Method


class FullFinetune(Method):
    name = "full"
    color = "#1f77b4"
    legend = "full fine-tuning"
    relative_cost = 1.3

    def config(self, settings: Mapping[str, Any]) -> None:
        return None

    def prepare(self, model: nn.Module, config: None, ctx: Context) -> nn.Module:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_PREFIX))
        return model

