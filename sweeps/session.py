"""The one live driver of a study: its locks, how it joins Ray, and how it ends on Ctrl-C or
an error with one line instead of a traceback."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attrsub.errors import AttrsubError, ConfigError
from results.schema import write_record
from sweeps.progress import close_bars
from sweeps.study import REPO, Study, claim, make_dirs

# What ends a study with one line instead of a traceback: bad input found up front, or
# storage that can no longer be written (the tables written so far stay intact).
STUDY_ERRORS = (AttrsubError, OSError)


def print_interrupted(prog: str, argv: list[str] | None) -> int:
    """Say how to go on after Ctrl-C; returns the shell's status for SIGINT, 130.

    Every finished trial's row was written when it ended (atomically), so the tables are
    intact; the trials that were running are run again by ``--resume``.
    """
    close_bars()  # their last redraw would land below this message
    args = list(sys.argv[1:] if argv is None else argv)
    again = " ".join([f"python sweeps/{prog}.py", *args, *([] if "--resume" in args
                                                          else ["--resume"])])
    print(f"{prog}: interrupted; the finished trials are saved and the tables intact. "
          f"Continue with: {again}", file=sys.stderr)
    return 130


def drive(prog: str, body: Callable[[], int], argv: list[str] | None) -> int:
    """Run a driver's ``body``; a study-ending error or Ctrl-C becomes its one line and the
    exit status (2, 130), the same for every driver."""
    try:
        return body()
    except STUDY_ERRORS as exc:
        return print_error(prog, exc)
    except KeyboardInterrupt:
        return print_interrupted(prog, argv)


def print_error(prog: str, exc: BaseException) -> int:
    """Print a study-ending error for a person; returns the exit status 2."""
    kind = "" if isinstance(exc, AttrsubError) else "I/O error: "
    message = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"{prog}: error: {kind}{message}", file=sys.stderr)
    return 2


# Ray resolves a local node's address to the machine's external IP, and its servers listen
# there, unless it runs "local only" as on macOS and Windows; this is the switch for that.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


DASHBOARD_ENV = "ATTRSUB_RAY_DASHBOARD"  # "0": a local study starts Ray without its dashboard


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster a job runs in, or start a local one that only this machine can reach.

    A local cluster's servers listen on 127.0.0.1 only, and Ray's token authentication stays
    as Ray sets it (on for clusters ``ray.init`` starts since Ray 2.59; the token is
    ~/.ray/auth_token, made on first use, or ``RAY_AUTH_TOKEN``). Workers get the repo on
    PYTHONPATH so trials import ``sweeps`` and ``results``.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(address="auto", log_to_driver=False)
        return
    from ray._private import ray_constants

    os.environ[LOCAL_ONLY_ENV] = "0"  # Ray's own processes, started below, read it
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read it when it imported ray
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    dashboard = os.environ.get(DASHBOARD_ENV, "1") != "0"
    ctx = ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    url = getattr(ctx, "dashboard_url", None)
    print(f"Ray dashboard: http://{url}" if url else
          f"Ray dashboard: off ({DASHBOARD_ENV}=0 or it did not start)", flush=True)


@contextlib.contextmanager
def session(st: Study, num_cpus: int | None = None, *, actor: bool = True) -> Iterator[Any]:
    """The one live driver of a study: its locks, Ray, and (``actor``) the study's subspace
    actor, which it yields (else None) and removes on the way out (its state is on disk).

    A second driver of the same study is refused, on this machine by a lock file in the
    study folder and on a cluster by a lock actor named by the study's identity, which dies
    with its driver.
    """
    import ray

    from sweeps import actor as subspace_actor

    make_dirs(st.paths)
    # Ctrl-C is ours (``_on_sigint``), not Tune's, whose handler ends the run suggesting
    # Tuner.restore; the entry point turns it into one line saying --resume
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with _dir_lock(st.paths.local, st.name), _ctrl_c():
        write_record(st.record, claim(st))  # again: another driver may have been first
        init_ray(num_cpus)
        lock = _cluster_lock(st)
        handle = None
        try:
            if actor:
                p = st.preset
                handle = subspace_actor.get_or_create(
                    st.id, st.paths.local, list(p.factors), p.groups * len(p.adapter_seeds),
                    p.extraction, published=st.paths.tables if st.paths.remote else None,
                )
            yield handle
        finally:
            for h in (handle, lock):
                if h is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(h)


# Set by Ctrl-C; while Tune runs (``_IN_TUNE``) the stage's stopper ends its trials and
# ``fit`` raises KeyboardInterrupt once Tune has returned, so no exception has to travel
# through Ray's and Tune's internals (which may swallow it and finish the stage).
_INTERRUPT = threading.Event()
_IN_TUNE = threading.Event()


def interrupted() -> bool:
    """Whether Ctrl-C stopped this driver (a module function, so Tune's pickled callbacks
    refer to it instead of copying the event)."""
    return _INTERRUPT.is_set()


@contextlib.contextmanager
def tune_running() -> Iterator[None]:
    """Mark a Tune run in progress, so Ctrl-C stops its trials instead of raising at once."""
    _IN_TUNE.set()
    try:
        yield
    finally:
        _IN_TUNE.clear()


def _on_sigint(signum: int, frame: Any) -> None:
    _INTERRUPT.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
    if not _IN_TUNE.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c() -> Iterator[None]:
    """Ctrl-C handling for one driver session (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _INTERRUPT.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _dir_lock(folder: Path, name: str) -> Iterator[None]:
    """An exclusive lock on the study folder itself (no lock file to leave behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"study {name!r} is already being run by another driver on this machine; "
                f"wait for it to end, or choose another --study"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _cluster_lock(st: Study, wait_s: float = 15.0) -> Any:
    """A named actor owned by this driver; Ray frees its name when the driver dies. A
    driver killed a moment ago may still hold it, so a taken name is retried for a while."""
    import ray

    @ray.remote(num_cpus=0)
    class StudyDriver:
        def pid(self) -> int:
            return os.getpid()

    name = f"attrsub-driver-{st.id}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return StudyDriver.options(name=name, namespace="attrsub").remote()
        except ValueError:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"study {st.name!r} is already being run by another driver on this "
                    f"cluster (lock actor {name!r}); wait for it to end, or choose another "
                    f"--study"
                ) from None
            time.sleep(1.0)
