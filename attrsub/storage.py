"""Where a study's files live: a local folder or a URI (``s3://``, ``gs://``, ``file://``).

One layer, pyarrow.fs, for everything a study publishes (tables, records, adapters, banks,
the report, the Optuna journal) and for weights fetched by URI. A local path is written
through a temporary sibling and renamed; an object store's PUT is atomic by itself. A folder
is published file by file with its ``marker`` file last, so a reader that finds the marker
finds the whole folder. S3-compatible servers are reached with the usual
``AWS_ENDPOINT_URL`` (or ``?endpoint_override=`` in the URI), as Ray Tune reaches them too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from attrsub.errors import DataError, StorageError
from attrsub.fsio import atomic_path, publish_dir


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a filesystem by scheme (``file://`` included)."""
    return "://" in os.fspath(location)


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a URI or a local path."""
    s = os.fspath(location)
    if not is_uri(s):
        return pafs.LocalFileSystem(), str(Path(s).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(s)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"cannot open storage {s!r}: {exc}") from exc


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location`` with ``parts`` appended, keeping a URI's query (``?endpoint_override=``)."""
    s = os.fspath(location)
    base, sep, query = s.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")


def exists(location: str | os.PathLike[str]) -> bool:
    fs, p = resolve(location)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    fs, p = resolve(location)
    try:
        with fs.open_input_stream(p) as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise DataError(f"{os.fspath(location)!r} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {os.fspath(location)!r}: {exc}") from exc


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` at ``location`` so a reader sees the old content or the new, whole."""
    fs, p = resolve(location)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with atomic_path(p) as tmp:
                tmp.write_bytes(data)
            return
        with fs.open_output_stream(p) as fh:
            fh.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {os.fspath(location)!r}: {exc}") from exc


def put_file(local: str | os.PathLike[str], location: str | os.PathLike[str]) -> None:
    write_bytes(location, Path(local).read_bytes())


def get_file(location: str | os.PathLike[str], local: str | os.PathLike[str]) -> Path:
    """Copy ``location`` to the local file ``local`` (atomically); returns ``local``."""
    fs, p = resolve(location)
    dest = Path(local)
    try:
        with atomic_path(dest) as tmp, fs.open_input_stream(p) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except FileNotFoundError as exc:
        raise DataError(f"{os.fspath(location)!r} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot copy {os.fspath(location)!r} to {str(dest)!r}: {exc}") from exc
    return dest


def list_names(location: str | os.PathLike[str]) -> list[str]:
    """Names directly under the folder ``location`` (empty when it does not exist)."""
    fs, p = resolve(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {os.fspath(location)!r}: {exc}") from exc
    return sorted(Path(i.path).name for i in infos)


def put_dir(local: str | os.PathLike[str], location: str | os.PathLike[str], marker: str) -> None:
    """Publish the folder ``local`` at ``location``, its file ``marker`` last."""
    root = Path(local)
    files = sorted(f for f in root.rglob("*") if f.is_file())
    if not (root / marker).is_file():
        raise DataError(f"{str(root)!r} has no {marker}; it is not complete")
    for f in sorted(files, key=lambda f: f.name == marker and f.parent == root):
        put_file(f, join(location, *f.relative_to(root).parts))


def get_dir(location: str | os.PathLike[str], local: str | os.PathLike[str], marker: str) -> Path:
    """Copy the published folder ``location`` to ``local``, which appears whole or not at
    all; DataError when its ``marker`` is absent (a folder still being published)."""
    if not exists(join(location, marker)):
        raise DataError(f"{os.fspath(location)!r} has no {marker}; it is not complete")
    fs, p = resolve(location)

    def fill(tmp: Path) -> None:
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = Path(info.path).relative_to(Path(p))
            get_file(join(location, *rel.parts), tmp / rel)

    return publish_dir(local, fill)
