"""``lora`` and ``pissa``: PEFT LoRA of rank ``rank`` on the frame and global blocks' four
linears, from PEFT's default init or PiSSA's (``init_lora_weights="pissa"``).

A PiSSA fine-tune saves no adapter: PiSSA moves the top singular directions out of the base
weights into the adapter, so its adapter only means something on the residual base that
exists in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attrsub.adapters.lora import LoraSpec, apply_lora, load_adapter, save_adapter
from attrsub.methods.base import Context, Method

ADAPTER_DIR = "lora-adapter/"


class Lora(Method):
    name = "lora"
    color = "#ff7f0e"
    legend = "LoRA (x = r)"
    takes_rank = True
    saved_as = ADAPTER_DIR
    init = "default"

    def config(self, settings: Mapping[str, Any]) -> LoraSpec:
        return LoraSpec(rank=settings["rank"])

    def prepare(self, model: nn.Module, config: LoraSpec, ctx: Context) -> nn.Module:
        return apply_lora(model, config, init=self.init)

    def save(self, model: nn.Module, out: Path, ctx: Context, record: Mapping[str, Any]) -> None:
        save_adapter(model, out / ADAPTER_DIR, record)

    def load(self, base: Any, out: Path, config: LoraSpec, ctx: Context) -> nn.Module:
        return load_adapter(out / ADAPTER_DIR, base)

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def label(self, rank: str = "?", width: str = "?") -> str:
        return f"LoRA r={rank}"


class Pissa(Lora):
    name = "pissa"
    color = "#2ca02c"
    legend = "PiSSA (x = r)"
    saved_as = None
    init = "pissa"

    def save(self, model: nn.Module, out: Path, ctx: Context, record: Mapping[str, Any]) -> None:
        """Nothing: the adapter is tied to the residual base PiSSA made in memory."""

    def load(self, base: Any, out: Path, config: LoraSpec, ctx: Context) -> nn.Module:
        return Method.load(self, base, out, config, ctx)

    def label(self, rank: str = "?", width: str = "?") -> str:
        return f"PiSSA r={rank}"
