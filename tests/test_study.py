"""A study's identity and safety: its fingerprint on --resume, one live driver per study,
and a local Ray that only this machine can reach, with token authentication on."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from attrsub.errors import ConfigError
from results.schema import read_record, write_record
from sweeps.config import PRESETS
from sweeps.session import _dir_lock
from sweeps.study import claim, open_study, study_id, study_parser, study_paths

REPO = Path(__file__).resolve().parents[1]


def _presets(tmp_path: Path, **changes: object) -> Path:
    """A presets file holding ``smoke``, with ``changes`` (dotted keys) applied."""
    raw = yaml.safe_load(PRESETS.read_text())
    smoke = copy.deepcopy(raw["smoke"])
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        d = smoke
        for k in parents:
            d = d[k]
        d[last] = value
    path = tmp_path / f"presets-{len(list(tmp_path.glob('presets-*')))}.yaml"
    path.write_text(yaml.safe_dump({"smoke": smoke}, sort_keys=False))
    return path


def _open(storage: Path, presets: Path, *flags: str, adds: bool = False):
    args = study_parser("test", None).parse_args(
        ["--preset", "smoke", "--presets", str(presets), "--storage", str(storage), *flags])
    return open_study(args, adds=adds)


def _create(storage: Path, presets: Path):
    """What a driver's session does first: the study folder and its record."""
    st = _open(storage, presets)
    st.paths.local.mkdir(parents=True)
    write_record(st.record, claim(st))
    return st


def test_resume_of_a_missing_study_says_so_and_writes_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "studies"
    with pytest.raises(ConfigError, match=r"no study 'smoke' .* nothing to resume"):
        _open(storage, _presets(tmp_path), "--resume")
    assert not storage.exists()
    st = _open(storage, _presets(tmp_path))  # a new study: checked, and still nothing written
    assert not storage.exists() and st.resume is False


def test_a_resume_with_another_preset_is_refused_naming_the_fields(tmp_path: Path) -> None:
    storage = tmp_path / "studies"
    st = _create(storage, _presets(tmp_path))
    recorded = read_record(st.record)
    assert recorded["fingerprint"]["preset"]["downstream"]["steps"] == 2
    assert recorded["fingerprint"]["base"] == "random-init"
    assert _open(storage, _presets(tmp_path), "--resume").resume  # the same preset resumes
    other = _presets(tmp_path, **{"downstream.steps": 5, "mining.lr": 0.01})
    with pytest.raises(ConfigError,
                       match=r"preset.downstream.steps: 2 -> 5; preset.mining.lr: 0.001 -> 0.01"):
        _open(storage, other, "--resume")
    # a copy of the preset under another file (or name) is the same study: content counts
    assert _open(storage, _presets(tmp_path, **{"resources.mine.cpu": 2}), "--resume")


def test_extend_adds_seeds_or_tasks_and_nothing_else(tmp_path: Path) -> None:
    storage = tmp_path / "studies"
    _create(storage, _presets(tmp_path))
    more = _presets(tmp_path, **{"downstream.seeds": [0, 1]})
    with pytest.raises(ConfigError,
                       match=r"preset.downstream.seeds: \[0\] -> \[0, 1\].*--extend allows"):
        _open(storage, more, "--resume")
    st = _open(storage, more, "--resume", "--extend")
    assert claim(st)["fingerprint"]["preset"]["downstream"]["seeds"] == [0, 1]
    fewer_tasks = _presets(tmp_path, **{"downstream.tasks": ["print_attack"]})
    with pytest.raises(ConfigError, match=r"preset.downstream.tasks"):
        _open(storage, fewer_tasks, "--resume", "--extend")  # dropping is not extending
    mixed = _presets(tmp_path, **{"downstream.seeds": [0, 1], "downstream.rank": 2})
    with pytest.raises(ConfigError, match=r"preset.downstream.rank: 4 -> 2"):
        _open(storage, mixed, "--resume", "--extend")
    with pytest.raises(ConfigError, match="--extend .* add --resume"):
        _open(storage, more, "--extend")


def test_an_existing_study_needs_resume_unless_the_entry_point_adds_to_it(tmp_path) -> None:
    storage = tmp_path / "studies"
    _create(storage, _presets(tmp_path))
    with pytest.raises(ConfigError, match="already exists .* --resume"):
        _open(storage, _presets(tmp_path))
    assert _open(storage, _presets(tmp_path), adds=True)  # a search adds to a study
    with pytest.raises(ConfigError, match="preset.downstream.steps"):  # with the study's own preset
        _open(storage, _presets(tmp_path, **{"downstream.steps": 3}), adds=True)


def test_other_code_or_a_study_without_a_record_is_refused(tmp_path: Path, monkeypatch) -> None:
    storage = tmp_path / "studies"
    _create(storage, _presets(tmp_path))
    monkeypatch.setattr("sweeps.study.code_digest", lambda: "0123456789abcdef")
    with pytest.raises(ConfigError, match=r"code: '[0-9a-f]{16}' -> '0123456789abcdef'"):
        _open(storage, _presets(tmp_path), "--resume")
    from results.schema import trials_schema, write_table

    row = {"trial_id": "a", "study": "old", "stage": "mine", "seed": 0, "status": "ok",
           "code_version": "v"}
    write_table([row], trials_schema(), storage / "old" / "trials.parquet")
    with pytest.raises(ConfigError, match=r"no study.json \(an older attrsub"):
        _open(storage, _presets(tmp_path), "--study", "old", "--resume")


def test_one_driver_per_study_on_a_machine(tmp_path: Path) -> None:
    first = _dir_lock(tmp_path, "s1")
    first.__enter__()
    with pytest.raises(ConfigError, match="already being run by another driver"):
        _dir_lock(tmp_path, "s1").__enter__()
    first.__exit__(None, None, None)
    with _dir_lock(tmp_path, "s1"):  # released when its driver ends
        pass
    assert list(tmp_path.iterdir()) == []  # and no lock file left behind


def test_study_identity_depends_on_where_the_study_lives(tmp_path: Path) -> None:
    a = study_paths(tmp_path / "a", "smoke", None)
    b = study_paths(tmp_path / "b", "smoke", None)
    assert study_id("smoke", a) != study_id("smoke", b)
    assert study_id("smoke", a) == study_id("smoke", study_paths(tmp_path / "a", "smoke", None))


_LOCAL_RAY = textwrap.dedent("""
    import json, os, sys, psutil, ray
    from attrsub.errors import ConfigError
    from sweeps.session import _cluster_lock, init_ray
    from sweeps.study import open_study, study_parser

    init_ray(2)
    @ray.remote
    def where():
        return ray.util.get_node_ip_address()

    st = open_study(study_parser("test", None).parse_args(["--preset", "smoke", "--storage",
                                                   sys.argv[1]]))
    first = _cluster_lock(st)
    try:
        _cluster_lock(st, wait_s=0.5)
        second = "granted"
    except ConfigError as exc:
        second = str(exc)
    ray.kill(first)
    listening = []
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    print(json.dumps({"listening": listening, "node": ray.get(where.remote()),
                      "token": is_token_auth_enabled(), "second": second,
                      "gcs": ray.get_runtime_context().gcs_address}))
    sys.stdout.flush()
    sys.stdin.readline()  # keep the cluster up while the test knocks without the token
""")

_INTRUDER = textwrap.dedent("""
    import sys, ray
    try:
        ray.init(address=sys.argv[1], log_to_driver=False)
        ray.get(ray.remote(lambda: 1).remote())
        print("JOINED", flush=True)
    except Exception as exc:
        print("REFUSED", type(exc).__name__, flush=True)
""")


def test_a_local_study_ray_listens_on_loopback_only_and_keeps_token_auth(tmp_path) -> None:
    """The Ray a study starts on a laptop is reachable from this machine only, and even
    there a process without the cluster's token cannot join it and run code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # Ray's defaults
    env["PYTHONPATH"] = str(REPO)
    env["HOME"] = str(tmp_path)  # Ray makes its token in ~/.ray
    env["ATTRSUB_RAY_DASHBOARD"] = "1"  # as a user gets it: the dashboard on loopback too
    driver = subprocess.Popen([sys.executable, "-c", _LOCAL_RAY, str(tmp_path / "st")],
                              env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        said = [driver.stdout.readline()]
        while said[-1] and not said[-1].startswith("{"):
            said.append(driver.stdout.readline())
        assert said[-1], driver.stderr.read()[-3000:]
        out = json.loads(said[-1])
        assert any(x.startswith("Ray dashboard: http://127.0.0.1:") for x in said), said
        assert out["token"] is True
        assert (tmp_path / ".ray" / "auth_token").is_file()
        assert out["node"] == "127.0.0.1"
        ports = {port for _, _, port in out["listening"]}
        names = {name for name, _, _ in out["listening"]}
        assert {"gcs_server", "raylet"} <= names, out["listening"]
        exposed = [x for x in out["listening"]
                   if x[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
        assert exposed == [], f"Ray ports listening beyond loopback: {exposed}"
        gcs_port = int(out["gcs"].rsplit(":", 1)[1])
        assert gcs_port in ports
        assert "already being run by another driver on this cluster" in out["second"]
        intruder = subprocess.Popen(
            [sys.executable, "-c", _INTRUDER, out["gcs"]], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**env, "HOME": str(tmp_path / "elsewhere"), "RAY_AUTH_MODE": "token",
                 "RAY_AUTH_TOKEN": "0" * 64, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        )
        try:  # Ray retries a refused join for a while; its first refusal is the answer
            said = ""
            for said in intruder.stdout:
                if "InvalidAuthToken" in said or said.startswith(("JOINED", "REFUSED")):
                    break
            assert "InvalidAuthToken" in said, said
        finally:
            intruder.kill()
            intruder.wait()
    finally:
        driver.stdin.close()
        driver.wait(timeout=120)
