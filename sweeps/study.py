"""A study: where it lives, the record and fingerprint that guard its resumption, the checks
every entry point runs before Ray starts, and the code version its rows carry.

Kept apart from the stages so ``sweeps/mine.py`` and ``sweeps/ablation.py`` stay thin.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrsub
from attrsub import __version__, fetch, storage
from attrsub.checks import check_render_fits, check_training_fits
from attrsub.cli import COUNT, OneLineParser
from attrsub.errors import ConfigError, DataError
from attrsub.fetch import file_sha256
from attrsub.fsio import check_creatable, ensure_writable_dir
from attrsub.model.base import load_base, shipped_weights
from results.schema import read_record, read_table
from sweeps.config import PRESETS, Preset, load_preset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = "studies"  # ./studies in the working directory: never the source tree


@dataclass(frozen=True)
class StudyPaths:
    """Tune's storage (local path or URI), the study's local folder, and the study itself in
    the storage (``tables``: the tables, record, adapters, banks, report and journal).

    For a local study ``local`` is the study; for a URI study it is only this node's cache
    of it, which a fresh node rebuilds from the URI.
    """

    storage: str
    local: Path
    tables: str

    @property
    def remote(self) -> bool:
        """Whether the study lives at a URI, with ``local`` a cache of it."""
        return is_uri(self.tables)

    def file(self, *parts: str) -> str:
        """A path or URI of the study in its storage."""
        return storage.join(self.tables, *parts)

    @property
    def adapters(self) -> Path:
        return self.local / "adapters"

    @property
    def cache(self) -> Path:
        return self.local / "cache"

    def table(self, name: str) -> str:
        return self.file(f"{name}.parquet")

    @property
    def real_data(self) -> str | None:
        """Where a URI study's storage keeps the real captures for every node (published
        once, shared by the studies there); None for a local study."""
        if not self.remote:
            return None
        from attrsub.data.capture_sources import CACHE_NAME

        return storage.join(self.storage, CACHE_NAME)


is_uri = storage.is_uri


def study_paths(where: str | os.PathLike[str], study: str, work_dir: str | None) -> StudyPaths:
    """Resolve the study's folders; nothing is created here (``make_dirs`` does that).

    With a URI (s3://, gs://, file://) the whole study goes there: Tune's state, the tables,
    its record, adapters, banks, report and journal. ``work_dir`` on each node's own disk
    (default ~/attrsub-studies) is only a cache of it: a fresh head rebuilds what it needs
    from the URI, so no shared filesystem is needed.
    """
    if not study or "/" in study or study.startswith("."):
        raise ConfigError(f"study name {study!r} must be a plain folder name")
    s = os.fspath(where)
    if is_uri(s):
        local = Path(work_dir or Path.home() / "attrsub-studies").expanduser().resolve() / study
        tables = storage.join(s, study)
    else:
        root = Path(s).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--storage {str(root)!r} exists and is not a folder")
        s = str(root)
        local = root / study
        tables = str(local)
    return StudyPaths(storage=s, local=local, tables=tables)


def make_dirs(paths: StudyPaths) -> None:
    """Create the study's folders, or say why they cannot be written."""
    if not is_uri(paths.storage):
        ensure_writable_dir(paths.storage, "--storage")
    ensure_writable_dir(paths.local, "study folder")


def study_id(study: str, paths: StudyPaths) -> str:
    """The study's identity on a cluster: its name and where it lives, so two studies of one
    name in different storages never share a subspace actor."""
    digest = hashlib.sha256(paths.tables.encode()).hexdigest()[:12]
    return f"{study}-{digest}"


@dataclass(frozen=True)
class Study:
    """Everything a stage needs, checked before Ray starts."""

    preset: Preset
    name: str
    paths: StudyPaths
    version: str
    weights: str | None
    base: str  # sha256 of the base weights, or "random-init"
    resume: bool = False
    extend: bool = False
    adds: bool = False  # this entry point adds to an existing study (a search)

    @property
    def id(self) -> str:
        return study_id(self.name, self.paths)

    @property
    def record(self) -> str:
        return self.paths.file(STUDY_RECORD)


def study_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every study entry point takes; ``prog`` starts its error lines, as in
    ``print_error``."""
    p = OneLineParser(prog=prog, description=description,
                      formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="quick", help="smoke | quick | paper, or one of --presets")
    p.add_argument("--presets", default=str(PRESETS),
                   help="presets file (default: sweeps/presets.yaml); copy it to make your own")
    p.add_argument("--study", default=None, help="study name (default: the preset's name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="where studies live: a folder (default ./studies), or an s3://, gs:// "
                        "or file:// URI holding the whole study")
    p.add_argument("--work-dir", default=None,
                   help="with a URI --storage: this node's cache of the study (adapters, banks, "
                        "datasets; default ~/attrsub-studies), rebuilt from the URI when empty")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study: finished trials are not rerun; the preset "
                        "and code must be the ones the study was made with")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: the preset may add downstream seeds or tasks "
                        "(everything else must match); only the new trials run")
    p.add_argument("--weights", default=None,
                   help="base weights for the preset's model (VGGT's model.pt or safetensors); "
                        "on a cluster, a path every node can read")
    p.add_argument("--num-cpus", type=COUNT, default=None, help="CPUs for a local Ray")
    return p


def open_study(args: argparse.Namespace, *, adds: bool = False) -> Study:
    """Validate the preset, weights and storage, and check the study against this run,
    writing nothing (``session`` creates the study).

    Without ``--resume`` an existing study is refused (``adds``: the entry point adds to an
    existing study, as a search does, so it may exist); with it the study must exist and
    match the fingerprint it was made with (``--extend``: more seeds or tasks).
    """
    preset = load_preset(args.preset, args.presets)
    if not os.environ.get("RAY_ADDRESS"):
        check_fits_here(preset)
    weights, base = check_weights(preset, args.weights)
    extend = getattr(args, "extend", False)
    if extend and not args.resume:
        raise ConfigError("--extend adds seeds or tasks to an existing study: add --resume")
    paths = study_paths(args.storage, args.study or preset.name, args.work_dir)
    if not is_uri(paths.storage):
        check_creatable(Path(paths.storage), "--storage")
    check_creatable(paths.local, "study folder")
    st = Study(preset, args.study or preset.name, paths, code_version(), weights, base,
               resume=args.resume, extend=extend, adds=adds)
    claim(st)
    return st


def claim(st: Study) -> dict[str, Any]:
    """The ``study.json`` record this run will write, or ConfigError when the study on disk
    does not allow this run. Its fingerprint is what the numbers depend on."""
    mine = fingerprint(st.preset, st.base)
    record = read_record(st.record)
    if record is None:
        if read_table(st.paths.table("trials")):
            raise ConfigError(
                f"study {st.name!r} at {st.paths.tables} has results but no {STUDY_RECORD} (an "
                f"older attrsub made it), so its preset and code are unknown; start a new "
                f"--study"
            )
        if st.resume:
            raise ConfigError(f"no study {st.name!r} at {st.paths.tables}: nothing to resume; "
                              f"run without --resume to start it")
        return {"study": st.name, "fingerprint": mine, "created": _now(),
                "code_version": st.version}
    if not st.resume and not st.adds:
        raise ConfigError(f"study {st.name!r} already exists at {st.paths.tables}; pass "
                          f"--resume to continue it or choose another --study")
    return {**record, "fingerprint": check_fingerprint(st.name, record.get("fingerprint"),
                                                       mine, st.extend),
            "code_version": st.version}


STUDY_RECORD = "study.json"
# Preset fields a resumed study may grow with --extend: new seeds and tasks only add trials.
EXTENDABLE = ("downstream.seeds", "downstream.tasks", "ablation.seeds", "ablation.tasks")


def fingerprint(preset: Preset, base: str) -> dict[str, Any]:
    """What a study's numbers depend on: the preset's content (not its name, nor the
    resources, which change where trials run, not what they compute), the code and the base
    weights. Code is its source's digest, so a commit that touches only docs keeps it."""
    content = dataclasses.asdict(preset)
    for key in ("name", "resources"):
        content.pop(key)
    return json.loads(json.dumps({"preset": content, "code": code_digest(), "base": base}))


def code_digest() -> str:
    """sha256 of the Python source of attrsub, sweeps and results (paths and contents)."""
    h = hashlib.sha256()
    for root in (Path(attrsub.__file__).parent, REPO / "sweeps", REPO / "results"):
        for f in sorted(root.rglob("*.py")):
            h.update(f"{root.name}/{f.relative_to(root)}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_fingerprint(name: str, recorded: Any, mine: dict[str, Any],
                      extend: bool) -> dict[str, Any]:
    """The fingerprint to record for a resumed study, or ConfigError naming what differs."""
    if not isinstance(recorded, dict):
        raise ConfigError(f"study {name!r} has no fingerprint in its {STUDY_RECORD}; start a "
                          f"new --study")
    diffs = _differences(recorded, mine)
    grows = [k for k in diffs if k.removeprefix("preset.") in EXTENDABLE
             and set(map(str, _at(recorded, k) or [])) <= set(map(str, _at(mine, k) or []))]
    other = [k for k in diffs if k not in grows]
    if not diffs or (extend and not other):
        return mine
    shown = "; ".join(f"{k}: {_brief(_at(recorded, k))} -> {_brief(_at(mine, k))}"
                      for k in diffs)
    hint = (" (--extend allows adding to " + ", ".join(k.removeprefix("preset.") for k in grows)
            + ")") if grows and not other else ""
    raise ConfigError(f"study {name!r} was made with another preset or code, so --resume would "
                      f"mix results: {shown}{hint}; resume with the same preset and code, or "
                      f"choose another --study")


def _brief(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _at(d: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ensure_task_data(task: str, cache: str | os.PathLike[str] | None,
                     published: str | None) -> None:
    """The data ``task`` cannot make itself (real captures) are on this node, pulled from the
    study's storage (``published``) if need be; DataError before any trial otherwise.

    The driver calls it first: with a URI study it publishes its own copy there once, so
    nodes of any image get the captures without apt or .debs.
    """
    from attrsub.data.capture_sources import publish_real, pull_real
    from attrsub.tasks import get_task

    try:
        get_task(task).require_data(cache)
    except DataError:
        if published is None:
            raise
        pull_real(published, cache)
        get_task(task).require_data(cache)
        return
    if published is not None and get_task(task).name == "real":
        publish_real(cache, published)


def publish_report(paths: StudyPaths, preset: str, wall_s: float | None) -> str:
    """Write the study's report and figures (results.report) and return where it lives.

    The report reads local tables, so a URI study's tables are copied into its local cache
    first and the report and figures are published beside them afterwards.
    """
    from results.report import write_report

    if not paths.remote:
        return str(write_report(paths.local, preset=preset, wall_s=wall_s))
    for name in storage.list_names(paths.tables):
        if name.endswith(".parquet") or name == STUDY_RECORD:
            storage.get_file(paths.file(name), paths.local / name)
    report = write_report(paths.local, preset=preset, wall_s=wall_s)
    for f in (report, *sorted(paths.local.glob("fig-*.png"))):
        storage.put_file(f, paths.file(f.name))
    return paths.file(report.name)


def check_fits_here(preset: Preset) -> None:
    """ConfigError when a local study's trials could not hold their data in this machine's
    memory (on a cluster each trial checks its own node)."""
    try:
        check_training_fits(preset.scenes["mine"], preset.views, preset.size)
        check_training_fits(preset.scenes["train"], preset.views, preset.size)
        check_render_fits(preset.scenes["eval"], preset.views, preset.size)
    except ConfigError as exc:
        raise ConfigError(f"preset {preset.name!r}: {exc}") from None


def check_weights(preset: Preset, weights: str | None) -> tuple[str | None, str]:
    """The weights file the trials load (absolute; None: the shipped one) and the base's
    sha256, checked before any trial starts."""
    if weights is not None:
        if preset.random_init:
            raise ConfigError(f"preset {preset.name!r} uses a random-init base; drop --weights")
        location, given = fetch.split(weights)
        pin = preset.weights_sha256
        if given is not None and pin is not None and given != pin:
            raise ConfigError(f"--weights {weights!r} gives sha256 {given} but preset "
                              f"{preset.name!r} pins {pin}")
        if fetch.is_remote(location):
            # every node fetches the file by URI; the hash travels with it and is checked
            # here first, so a wrong file or hash fails before any trial
            want = given or pin or fetch.published_sha256(location)
            remote = location if want is None else fetch.with_sha256(location, want)
            base = load_base(preset.model, remote)
            return remote, base.weights_hash
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--weights {location!r} is not a file")
        local = str(path) if (given or pin) is None else fetch.with_sha256(str(path), given or pin)
        base = load_base(preset.model, local)  # a mismatching file fails here, not in trials
        return local, base.weights_hash
    if preset.random_init:
        return None, "random-init"
    shipped = shipped_weights(preset.model)
    if shipped is None:
        raise ConfigError(
            f"preset {preset.name!r} needs pretrained weights for {preset.model!r}, and none "
            f"ship with attrsub: pass --weights PATH (e.g. VGGT-1B's model.pt)"
        )
    return None, file_sha256(shipped)


def code_version() -> str:
    """attrsub's version plus the git commit (and ``+dirty``) when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


