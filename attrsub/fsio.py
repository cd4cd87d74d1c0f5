"""Atomic, crash-safe writes: a reader sees the old file or the new one, never half of one.

Everything attrsub persists (datasets, checkpoints, adapters, banks, tables) goes through
these helpers, so an interrupted run never leaves a corrupt artefact behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from attrsub.errors import ConfigError, DataError

# mkstemp creates files readable by their owner only; published files get the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` (and parents) or raise ConfigError saying why it cannot be written.

    Called before any expensive work, so a bad ``--out`` fails in milliseconds.
    """
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be created: {exc.strerror}") from exc
    if not p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} exists and is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(p)!r} is not writable; choose a folder you can write to")
    return p


def check_creatable(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Raise ConfigError unless ``path`` is, or could be made, a writable folder.

    Nothing is created, so a command refused later leaves no trace; the folder is made
    when the first result is written.
    """
    folder = Path(path).expanduser()
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{what} {str(folder)!r} cannot be created: {str(p)!r} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(folder)!r} is not writable; choose a folder you can "
                          f"write to")
    return folder


def check_new_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Raise ConfigError unless ``path`` is a folder that does not exist yet and could be made
    (a finished output is never overwritten); nothing is created."""
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        raise ConfigError(f"{what} {str(p)!r} already exists; give a new folder")
    return check_creatable(p, what)


def check_new_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Raise ConfigError unless a file could be written at ``path`` (its folder need not exist)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a folder; give a file name")
    check_creatable(p.parent, f"{what} folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{what} {str(p)!r} is not writable; choose a file you can write to")
    return p


def missing_dirs(paths: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """The folders ``paths`` and their ancestors that do not exist yet, deepest first."""
    out: list[Path] = []
    for path in paths:
        if path is None:
            continue
        p = Path(path).expanduser().absolute()
        while not p.exists() and p != p.parent:
            out.append(p)
            p = p.parent
    return sorted(set(out), key=lambda q: len(q.parts), reverse=True)


def remove_if_empty(folders: Iterable[Path]) -> None:
    """Remove each of ``folders`` that is (now) empty, deepest first: what a failed command
    made on its way and never filled."""
    for p in sorted(folders, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` atomically.

    On error the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def publish_dir(dest: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Build a folder in a private temporary sibling, then rename it to ``dest``.

    The rename is atomic, so ``dest`` either does not exist or is complete. When two
    processes build the same ``dest`` at once, the first rename wins and the loser's copy
    is discarded (the content is keyed by its hash, so both are identical).
    """
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_safetensors(
    path: str | os.PathLike[str], what: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """A safetensors file's metadata and tensors, or DataError naming ``what`` is wrong with it
    (missing, a folder, damaged); nothing in it is executed."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise DataError(f"{what} {str(p)!r} is a folder; give its .safetensors file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a handle, not a dict)
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise DataError(f"{what} {str(p)!r} is corrupt: {exc}") from exc
    return meta, tensors
