"""Files named by URI (base weights above all): fetched once per node, verified, then reused.

``--weights`` may be a path or an ``s3://``, ``gs://``, ``file://`` or ``https://`` URI. A
URI's file is copied into this node's cache (``$ATTRSUB_WEIGHTS_CACHE``, default
``~/.cache/attrsub/weights``) under its sha256, which must be known before the copy is
trusted: given as a fragment (``s3://bucket/model.pt#sha256=<hex>``), or published beside
the file as ``<file>.sha256`` (``sha256sum``'s format). A copy whose hash differs is
refused and never cached; a cached copy is reused without fetching again.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from pathlib import Path

from attrsub import storage
from attrsub.errors import ConfigError, DataError, StorageError
from attrsub.fsio import atomic_path, missing_dirs, remove_if_empty

_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def cache_root() -> Path:
    env = os.environ.get("ATTRSUB_WEIGHTS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attrsub" / "weights"


def is_remote(weights: str | os.PathLike[str]) -> bool:
    """Whether ``weights`` names a file by URI (fetched into the cache) rather than a path."""
    return storage.is_uri(split(weights)[0])  # https:// included


def split(weights: str | os.PathLike[str]) -> tuple[str, str | None]:
    """(location, sha256 or None) of ``location#sha256=<hex>``."""
    text = os.fspath(weights)
    location, sep, fragment = text.partition("#")
    if not sep:
        return text, None
    key, _, value = fragment.partition("=")
    value = value.lower()
    if key != "sha256" or not _HEX.fullmatch(value):
        raise ConfigError(f"weights {text!r}: the fragment must be #sha256=<64 hex digits>, "
                          f"got #{fragment}")
    return location, value


def with_sha256(location: str, sha256: str) -> str:
    """``location`` carrying its hash, the form trials receive."""
    return f"{split(location)[0]}#sha256={sha256}"


def published_sha256(location: str) -> str | None:
    """The hash published beside ``location`` as ``<location>.sha256``, if there is one."""
    side = f"{location}.sha256"
    try:
        text = (_read_https(side) if side.startswith("https://")
                else storage.read_bytes(side) if storage.exists(side) else None)
    except (DataError, StorageError):
        return None
    if text is None:
        return None
    words = text.decode(errors="replace").split()
    if not words or not _HEX.fullmatch(words[0].lower()):
        raise DataError(f"{side!r} does not start with a sha256 (64 hex digits)")
    return words[0].lower()


def fetch(weights: str | os.PathLike[str]) -> Path:
    """A local file for ``weights`` (a path, or a URI fetched into the cache), verified
    against its sha256 when one is given or published; DataError on a mismatch."""
    location, want = split(weights)
    if not is_remote(location):
        path = Path(location).expanduser()
        if want is not None and path.is_file():
            _verify(path, want, location)
        return path
    want = want or published_sha256(location)
    if want is None:
        raise ConfigError(
            f"weights {location!r} come by URI with no sha256 to verify them: add "
            f"#sha256=<hex> to the URI, pin weights_sha256 in the preset, or publish "
            f"{location}.sha256 beside the file"
        )
    dest = cache_root() / f"{want}{Path(location.split('?')[0]).suffix}"
    if dest.is_file():
        return dest
    made = missing_dirs([dest.parent])
    try:
        with atomic_path(dest) as tmp:
            got = _copy(location, tmp)
            if got != want:
                raise DataError(f"weights {location!r} have sha256 {got}, expected {want}; "
                                f"the file changed or the hash is wrong (nothing was cached)")
    except BaseException:
        remove_if_empty(made)
        raise
    return dest


def _copy(location: str, dest: Path) -> str:
    """Copy ``location`` to ``dest``, returning the sha256 of what was copied."""
    h = hashlib.sha256()
    try:
        if location.startswith("https://"):
            src = urllib.request.urlopen(location, timeout=60)
        else:
            fs, p = storage.resolve(location)
            src = fs.open_input_stream(p)
        with src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except FileNotFoundError as exc:
        raise DataError(f"weights {location!r} do not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot fetch weights {location!r}: {exc}") from exc
    return h.hexdigest()


def _read_https(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as fh:
            return fh.read()
    except OSError as exc:
        raise StorageError(f"cannot read {url!r}: {exc}") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, want: str, location: str) -> None:
    got = file_sha256(path)
    if got != want:
        raise DataError(f"weights {location!r} have sha256 {got}, expected {want}")
