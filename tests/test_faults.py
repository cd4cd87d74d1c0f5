"""Faults on a real local Ray cluster (2 CPUs), each caused by killing a real process by its
pid or by taking the storage away mid-study: a trial's worker, the driver (ablation and
search), the subspace actor; a diverging trial; a full disk and unwritable storage.

Every study here runs a small variant of the smoke preset (written to a presets file), as a
driver subprocess in its own session, so the test can kill it and everything it started.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from results.schema import read_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO),
       "OMP_NUM_THREADS": "1"}
PRESET = "faults"


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in change.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_presets(path: Path, change: dict[str, Any]) -> Path:
    """The smoke preset, one factor, one short mining trial, one task and no learning-rate
    search, with ``change`` merged in."""
    smoke = yaml.safe_load((REPO / "sweeps" / "presets.yaml").read_text())["smoke"]
    small = {"factors": ["texture"], "groups": 1, "mining": {"steps": 2},
             "ablation": {"subsets": [["texture"]]},
             "downstream": {"tasks": ["print_attack"], "lr_search": None}}
    preset = _merge(_merge(smoke, small), change)
    # a search space is replaced, not merged: smoke's names all four factors
    preset["search"]["space"] = change.get("search", {}).get(
        "space", {"lora": smoke["search"]["space"]["lora"]})
    path.write_text(yaml.safe_dump({PRESET: preset}))
    return path


class Driver:
    """``sweeps/<script>`` as a subprocess in a session of its own."""

    def __init__(self, script: str, storage: Path, presets: Path, *extra: str) -> None:
        self.log_path = storage.parent / f"{script}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "sweeps" / script), "--preset", PRESET, "--presets",
             str(presets), "--storage", str(storage), "--num-cpus", "2", *extra],
            env=ENV, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Kill whatever is left of this driver's session (a killed driver's Ray)."""
        for pid in session_pids(self.proc.pid):
            _kill(pid)
        self._log.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _procs() -> list[tuple[int, int, str]]:
    """(pid, session id, command line) of every live process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out.append((int(d.name), int(fields[3]), cmd))
    return out


def session_pids(sid: int) -> list[int]:
    return [pid for pid, s, _ in _procs() if s == sid]


def pids_named(title: str, sid: int) -> list[int]:
    """Processes of session ``sid`` whose (Ray-set) title starts with ``title``."""
    return [pid for pid, s, cmd in _procs() if s == sid and cmd.startswith(title)]


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(what: str, cond: Callable[[], Any], driver: Driver, timeout: float = 300) -> Any:
    """Poll ``cond`` until it returns something truthy; fail if the driver ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if driver.proc.poll() is not None:
            pytest.fail(f"the study ended (rc {driver.proc.returncode}) before {what}:\n"
                        f"{driver.log[-4000:]}")
        time.sleep(0.5)
    driver.cleanup()
    pytest.fail(f"timed out waiting for {what}:\n{driver.log[-4000:]}")


def results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every result Tune logged for the trials of one experiment (result.json lines)."""
    out = []
    for f in experiment_dir.glob("*/result.json"):
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                out.append(json.loads(line))
    return out


def trials(storage: Path) -> pd.DataFrame:
    df = pd.read_parquet(storage / PRESET / "trials.parquet")
    assert df.trial_id.is_unique, df.trial_id[df.trial_id.duplicated()].tolist()
    return df


def not_ok(df: pd.DataFrame) -> list[str]:
    """What a failed assertion shows: each not-ok trial and its error."""
    return [f"{r.trial_id}: {r.status}: {r.error}" for r in df[df.status != "ok"].itertuples()]


def finetune_rows(storage: Path) -> list[dict[str, Any]]:
    """The fine-tuning rows written so far (a torn table would raise: writes are atomic)."""
    return [r for r in read_table(storage / PRESET / "trials.parquet")
            if r["stage"] == "finetune"]


def test_killed_worker_is_retried_from_its_checkpoint_with_one_row(tmp_path: Path) -> None:
    presets = write_presets(tmp_path / "p.yaml", {"downstream": {
        "methods": ["full"], "steps": 300, "report_every": 10}})
    storage = tmp_path / "store"
    driver = Driver("ablation.py", storage, presets)
    exp = storage / f"{PRESET}-ablation"

    def checkpointed() -> dict[str, Any] | None:
        return next((r for r in results(exp)
                     if r.get("step", 0) >= 30 and r.get("checkpoint_dir_name")), None)

    seen = wait_until("a checkpoint at step 30", checkpointed, driver)
    _kill(seen["pid"])
    assert driver.wait() == 0, driver.log[-4000:]
    assert not alive(seen["pid"])
    df = trials(storage)
    ft = df[df.stage == "finetune"]
    assert len(ft) == 1 and ft.status.iloc[0] == "ok", ft[["status", "error"]]
    row = ft.iloc[0]
    # the retry resumed from a checkpoint at or after the one seen before the kill, and ran
    # to the end
    assert row.resumed_step >= seen["step"] and row.resumed_step % 10 == 0
    assert row.steps == 300 and math.isfinite(row.main)
    assert len({r["pid"] for r in results(exp)}) == 2  # the killed worker and its successor


def test_killed_driver_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    presets = write_presets(tmp_path / "p.yaml", {"downstream": {
        "methods": ["none", "lora", "psv"], "seeds": [0, 1, 2], "steps": 120,
        "report_every": 10}})
    storage = tmp_path / "store"
    driver = Driver("ablation.py", storage, presets)
    wait_until("two finished fine-tuning rows",
               lambda: len([r for r in finetune_rows(storage) if r["status"] == "ok"]) >= 2,
               driver)
    _kill(driver.proc.pid)
    driver.wait()
    before = trials(storage)
    done = before[(before.stage == "finetune") & (before.status == "ok")]
    assert 2 <= len(done) < 9, "the driver was killed before the study ended"

    again = Driver("ablation.py", storage, presets, "--resume")
    assert again.wait() == 0, again.log[-4000:]
    after = trials(storage)
    ft = after[after.stage == "finetune"]
    assert len(ft) == 9 and (ft.status == "ok").all(), not_ok(ft)
    # trials finished before the kill were not run again: their rows are untouched (values;
    # pandas reads an integer column as float once the table holds a null in it, as the
    # zero-shot rows' rank, which run last)
    kept = after.set_index("trial_id").loc[done.trial_id, done.columns.drop("trial_id")]
    pd.testing.assert_frame_equal(kept.sort_index(), done.set_index("trial_id").sort_index(),
                                  check_like=True, check_dtype=False)
    assert "mining" not in again.log  # the bank exists, so stage 1 is skipped


def test_ctrl_c_during_mining_stops_cleanly_and_says_resume(tmp_path: Path) -> None:
    presets = write_presets(tmp_path / "p.yaml", {
        "groups": 2, "mining": {"steps": 400, "report_every": 10}})
    storage = tmp_path / "store"
    driver = Driver("ablation.py", storage, presets)
    wait_until("a mining trial past step 10",
               lambda: any(r.get("step", 0) >= 10 for r in results(storage / f"{PRESET}-mine")),
               driver)
    os.kill(driver.proc.pid, signal.SIGINT)  # what Ctrl-C sends
    assert driver.wait(timeout=120) == 130, driver.log[-4000:]
    log = driver.log
    for bad in ("Traceback", "TypeError", "Tuner.restore"):
        assert bad not in log, log[-4000:]
    said = [line for line in log.splitlines() if line.startswith("ablation: interrupted")]
    assert len(said) == 1 and said[0].endswith("--resume"), log[-3000:]
    read_table(storage / PRESET / "trials.parquet")  # readable (or not written yet)
    again = Driver("ablation.py", storage, presets, "--resume")
    assert again.wait() == 0, again.log[-4000:]
    df = trials(storage)
    assert (df.status == "ok").all() and (df.stage == "mine").sum() == 2, not_ok(df)


def test_killed_search_driver_resumes_the_optuna_study(tmp_path: Path) -> None:
    import optuna

    presets = write_presets(tmp_path / "p.yaml", {
        "downstream": {"steps": 120, "report_every": 10},
        "search": {"concurrency": 2, "asha": None, "space": {
            "lora": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
                     "rank": {"low": 1, "high": 4}}}}})
    storage = tmp_path / "store"
    args = ("--method", "lora", "--study", PRESET, "--seed", "0")
    driver = Driver("search.py", storage, presets, *args, "--trials", "8")
    wait_until("a finished search row",
               lambda: any(r["stage"] == "search" for r in read_table(
                   storage / PRESET / "trials.parquet")), driver)
    _kill(driver.proc.pid)
    driver.wait()
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(storage / PRESET / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(journal)
    n_before = summary.n_trials
    assert any(t.state.name == "RUNNING" for t in optuna.load_study(
        study_name=summary.study_name, storage=journal).trials)

    again = Driver("search.py", storage, presets, *args, "--trials", "2", "--resume")
    assert again.wait() == 0, again.log[-4000:]
    study = optuna.load_study(study_name=summary.study_name, storage=journal)
    assert len(study.trials) >= n_before + 2
    assert not any(t.state.name == "RUNNING" for t in study.trials)
    df = trials(storage)
    assert len(df) == len(study.trials)  # every Optuna trial has exactly one row
    interrupted = df[df.error.fillna("").str.contains("interrupted")]
    assert len(interrupted) >= 1 and (interrupted.status == "failed").all()
    assert (df.status == "ok").sum() >= 3


def test_killed_subspace_actor_restarts_and_no_trial_fails(tmp_path: Path) -> None:
    presets = write_presets(tmp_path / "p.yaml", {
        "factors": ["texture", "geometry"],
        # trials long enough (about 6 s each) that most start after the kill and need the
        # restarted actor; at 30 steps the study could end before the actor was found
        "downstream": {"methods": ["reduced"], "steps": 200, "report_every": 10},
        "ablation": {"ranks": [1, 2, 3], "subsets": [["texture"], ["geometry"]],
                     "ortho": ["none", "svd"], "extraction": ["mean"]}})
    storage = tmp_path / "store"
    driver = Driver("ablation.py", storage, presets)
    exp = storage / f"{PRESET}-ablation"
    wait_until("the first reduced trial's report", lambda: results(exp), driver)
    (actor,) = wait_until("the subspace actor's process",
                          lambda: pids_named("ray::SubspaceActor", driver.proc.pid), driver)
    _kill(actor)
    assert driver.wait() == 0, driver.log[-4000:]
    assert not alive(actor)
    df = trials(storage)
    ft = df[df.stage == "finetune"]
    assert len(ft) == 9 and (ft.status == "ok").all(), not_ok(ft)
    stats = json.loads(re.search(r"subspace actor: (\{.*\})", driver.log).group(1))
    assert stats["bank_loads"] >= 1  # the restarted actor reloaded the persisted bank


def test_diverging_trial_is_recorded_failed_and_the_study_finishes(tmp_path: Path) -> None:
    presets = write_presets(tmp_path / "p.yaml", {"downstream": {
        "methods": ["none", "full", "lora"], "steps": 20,
        "lr": {"full": 1.0e+12, "lora": 1.0e-3}}})
    storage = tmp_path / "store"
    driver = Driver("ablation.py", storage, presets)
    assert driver.wait() == 0, driver.log[-4000:]
    ft = trials(storage).query("stage == 'finetune'").set_index("method")
    assert ft.loc["full", "status"] == "failed"
    assert "DivergenceError" in ft.loc["full", "error"]
    assert "diverged" in ft.loc["full", "error"]
    assert ft.loc["full", "steps"] < 20  # stopped at once, not after the last step
    assert (ft.drop("full").status == "ok").all()
    assert "1 trial(s) not ok" in driver.log


def _fill_disk(root: Path) -> None:
    with (root / "filler").open("wb") as fh:
        block = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass


def _lock(path: Path) -> Callable[[], None]:
    """Make ``path`` unwritable even for root (immutable attribute); returns the undo."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555)
        return lambda: path.chmod(mode)
    subprocess.run(["chattr", "+i", str(path)], check=True)
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def _can(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.mark.parametrize("fault", ["full-disk", "unwritable"])
def test_storage_failing_mid_study_gives_a_clear_error_and_readable_tables(
        tmp_path: Path, fault: str) -> None:
    storage = tmp_path / "store"
    storage.mkdir()
    if fault == "full-disk":
        if os.geteuid() != 0 or not _can(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs",
                                          str(storage)]):
            pytest.skip("a small tmpfs to fill needs root and mount (not a failure)")
    elif os.geteuid() == 0 and not _can(["chattr", "-i", str(storage)]):
        pytest.skip("this filesystem has no immutable attribute, and root ignores modes")
    presets = write_presets(tmp_path / "p.yaml", {"downstream": {
        "methods": ["none", "lora"], "seeds": [0, 1, 2], "steps": 120, "report_every": 10}})
    driver = Driver("ablation.py", storage, presets)
    undo: list[Callable[[], Any]] = [driver.cleanup]
    if fault == "full-disk":
        undo.append(lambda: subprocess.run(["umount", "-l", str(storage)], capture_output=True))
    try:
        wait_until("the first fine-tuning row", lambda: finetune_rows(storage), driver)
        if fault == "full-disk":
            _fill_disk(storage)
        else:
            undo.insert(0, _lock(storage / PRESET))
        rc = driver.wait()
        log = driver.log
        assert rc == 2, log[-4000:]
        assert "ablation: error: cannot write results table" in log, log[-4000:]
        assert "Traceback" not in log.split("ablation: error:")[-1]
        df = trials(storage)  # readable, with every row written before the fault
        assert (df.stage == "mine").sum() == 1 and (df.stage == "finetune").sum() >= 1
        assert not list((storage / PRESET).glob(".trials.parquet.*"))  # no temp files left
    finally:
        for step in undo:
            step()
