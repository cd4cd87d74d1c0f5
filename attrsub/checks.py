"""Checks of user input that several commands share, each raising ConfigError before any work.

Counts and rates, names from a fixed list, the compute device, and whether a job's data
fit in this machine's memory and on its disk. The command line wraps each one as an
argparse ``type``, and the library calls the same functions where it checks the same
things (a rank, whether data fit), so such a value gets the same line either way.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrsub.errors import ConfigError

DEVICES = ("cpu", "cuda", "cuda:N", "mps")
_CUDA = re.compile(r"cuda(?::(\d+))?")
# Bytes per pixel of one stored view of a rendered scene (attrsub.data.datasets's shard layout):
# images and albedo uint8 x3, depth float32, world points float32 x3, normals float16 x3,
# valid bool.
STORED_BYTES_PER_PIXEL = 3 + 3 + 4 + 12 + 6 + 1
# Bytes per pixel of one view as the renderer returns it and a loaded sample holds it
# (float32 images, albedo, depth, world points and normals, bool valid).
FLOAT_BYTES_PER_PIXEL = 12 + 12 + 4 + 12 + 12 + 1
# Scenes the renderer draws at once and a shard holds (attrsub.data.datasets).
RENDER_BATCH, SHARD_SCENES = 16, 64


def positive_int(value: Any, what: str) -> int:
    """``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} {value!r} is not a positive integer (1 or more)")
    return value


def int_in(value: Any, what: str, lo: int, hi: int) -> int:
    """``value`` as an int if it is an integer (numpy's too, not a bool) in ``[lo, hi]``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not lo <= int(value) <= hi):
        raise ConfigError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def nonneg_int(value: Any, what: str) -> int:
    """``value`` if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} {value!r} is not a non-negative integer (0 or more)")
    return value


def positive_number(value: Any, what: str) -> float:
    """``value`` if it is a finite number > 0 (rates, scales)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{what} {value!r} is not a finite number above 0")
    return float(value)


def one_of(value: Any, valid: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``valid``."""
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def check_device(device: Any) -> str:
    """``device`` if torch can run on it here: cpu, cuda, cuda:N (an existing GPU) or mps."""
    text = str(device)
    if text == "cpu":
        return text  # argparse checks the default too: no torch import for it
    import torch

    usable = ["cpu"]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        usable += ["cuda", *(f"cuda:{i}" for i in range(gpus))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        usable.append("mps")
    here = f"usable here: {', '.join(usable)}"
    match = _CUDA.fullmatch(text)
    if match is None and text != "mps":
        raise ConfigError(f"unknown device {text!r}; valid: {', '.join(DEVICES)} ({here})")
    if text not in usable:
        why = ("torch sees no CUDA GPU" if match and not gpus
               else f"this machine has {gpus} CUDA GPU(s)" if match
               else "torch has no MPS backend here")
        raise ConfigError(f"device {text!r} is not available: {why} ({here})")
    return text


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can use now (Linux MemAvailable), if known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def free_disk(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_memory(need: float, what: str) -> None:
    """ConfigError when ``need`` bytes (a lower bound of ``what``) exceed the memory free."""
    have = available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{what} needs at least {_human(need)} of memory, and this machine has "
            f"{_human(have)} available; use a smaller size or fewer scenes or views"
        )


def check_disk(need: float, where: str | os.PathLike[str], what: str) -> None:
    """ConfigError when ``need`` bytes (a lower bound of ``what``) exceed the disk free."""
    have = free_disk(where)
    if have is not None and need > have:
        raise ConfigError(
            f"{what} needs at least {_human(need)} of disk at {str(where)!r}, and "
            f"{_human(have)} is free; use a smaller size or fewer scenes or views"
        )


def describe(scenes: int, views: int, size: int) -> str:
    return f"{scenes} scene(s) of {views} view(s) at {size} px"


def check_render_fits(
    scenes: int, views: int, size: int, root: str | os.PathLike[str] | None = None
) -> None:
    """Refuse a render whose one batch and one shard cannot fit in memory, or whose stored
    dataset cannot fit on the disk of ``root`` (lower bounds: tensors only, no overhead)."""
    pixels = views * size * size
    batch, shard = min(scenes, RENDER_BATCH), min(scenes, SHARD_SCENES)
    need = pixels * (batch * FLOAT_BYTES_PER_PIXEL + 2 * shard * STORED_BYTES_PER_PIXEL)
    check_memory(need, f"rendering {describe(scenes, views, size)}")
    if root is not None:
        check_disk(scenes * pixels * STORED_BYTES_PER_PIXEL, root,
                   f"storing {describe(scenes, views, size)}")


def check_training_fits(scenes: int, views: int, size: int) -> None:
    """Refuse training on a rendered dataset that cannot be held in memory (training keeps
    every shard it has read) or whose one sample cannot be loaded."""
    pixels = views * size * size
    need = scenes * pixels * STORED_BYTES_PER_PIXEL + pixels * FLOAT_BYTES_PER_PIXEL
    check_memory(need, f"training on {describe(scenes, views, size)}")
