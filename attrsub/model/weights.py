"""Building models by config name and loading weights from disk (never downloading).

Weights are VGGT's ``model.pt`` (a plain state dict) or a ``.safetensors`` file with the
same names. Loading is strict: every parameter of the built model must be in the file with
the same shape, and the file may hold nothing else except keys of heads the caller turned off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attrsub.errors import DataError
from attrsub.model.config import get_config
from attrsub.model.vggt import VGGT

_HEADS = ("camera_head", "depth_head", "point_head", "track_head")
_SHOW = 5


def build(name: str, device: str | torch.device = "cpu", track_head: bool = False,
          **overrides: Any) -> VGGT:
    """A freshly initialised model of the named config.

    ``device="meta"`` allocates nothing (for shape checks or ``load``); ``overrides`` change
    config fields, e.g. ``enable_point=False`` or ``gradient_checkpointing=True``.
    """
    cfg = get_config(name, enable_track=track_head, **overrides)
    with torch.device(device):
        return VGGT(cfg)


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a torch-saved state dict (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(device))
        else:
            # mmap: checking a 1B checkpoint reads pages on demand instead of 5 GB up front
            state = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except Exception as exc:
        raise DataError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path} is not a state dict of tensors")
    return state


def check_state_dict(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise DataError naming missing/unexpected keys and shape mismatches, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: expected {list(expected[k])}, got {list(state[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    if problems:
        raise DataError(f"state dict {source} does not match the model: " + "; ".join(problems))


def load(name: str, weights: str | Path, device: str | torch.device = "cpu",
         track_head: bool | None = None, dtype: torch.dtype = torch.float32,
         **overrides: Any) -> VGGT:
    """A model of the named config with weights from disk, strictly checked.

    ``track_head=None`` follows the file (on when it holds ``track_head.*`` keys). Keys of
    heads disabled through ``overrides`` (e.g. ``enable_point=False``) are dropped first, so
    VGGT's full ``model.pt`` loads into a camera+depth model.
    """
    get_config(name, **overrides)  # bad names and fields fail before the file is read
    state = read_state_dict(weights, device)
    if track_head is None:
        track_head = any(k.startswith("track_head.") for k in state)
    model = build(name, device="meta", track_head=track_head, **overrides)
    off = tuple(f"{h}." for h in _HEADS if h not in model.config.head_names)
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in state.items() if not k.startswith(off)}
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device)


def save(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's state dict as safetensors (contiguous copies, no shared storage)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path
