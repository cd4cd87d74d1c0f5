"""The cluster YAMLs: offline validation, the policies they promise, and a real autoscaling run.

There is no `ray up --dry-run`, so each launcher YAML goes through what `ray up` does before it
touches a cloud (``prepare_config`` then ``validate_config``), the AWS node configs through
EC2's own RunInstances request shape (botocore ships it), and the KubeRay manifest through
the RayCluster CRD's openAPIV3Schema with unknown fields rejected, as
``kubectl apply --validate=strict`` would. The slow test starts a head from
cluster/local-fake.yaml (Ray's fake multi-node provider), runs the smoke study with trials
that each need a (fake) GPU the head lacks, and reads from Ray's state API that GPU worker
nodes came from zero, ran the trials, and left after the idle timeout.

The set-up is held to what the security review asked: nodes install only pinned packages
from the registry (cluster/requirements.txt, a lock that covers pyproject.toml's
dependencies), never a fetched script, and every node gets least-privilege cloud rights
(the IAM policies in cluster/*.json, narrow Google Cloud scopes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CLOUD = ("aws-gpu.yaml", "gcp-gpu.yaml")
LAUNCHER = (*CLOUD, "local-fake.yaml")
# KubeRay v1.7.0's RayCluster CRD; it lives in the workspace's shared/reference, not the repo.
CRD_NAME = "kuberay-v1.7.0-raycluster-crd.yaml"
CRD_CANDIDATES = [Path(os.environ.get("ATTRSUB_RAYCLUSTER_CRD", "/nonexistent")),
                  *(base / "shared" / "reference" / CRD_NAME for base in (REPO, REPO.parent))]
# GPUs each instance type really has: a node type must not promise Ray more or fewer.
INSTANCE_GPUS = {"g5.2xlarge": 1, "p4d.24xlarge": 8, "g2-standard-8": 1, "a2-highgpu-8g": 8}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def validate_launcher(config: dict[str, Any]) -> None:
    """What `ray up` checks offline; the autoscaler reads the fake config as written."""
    if config.get("provider", {}).get("type") == "fake_multinode":
        validate_config(config)
    else:
        validate_config(prepare_config(copy.deepcopy(config)))


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected: the API server prunes them silently, and
    ``kubectl apply --validate=strict`` refuses them, which is what we want a typo to do."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def raycluster_validator() -> jsonschema.protocols.Validator:
    """Built once: checking the 1 MB schema itself takes seconds."""
    schema = raycluster_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def raycluster_schema() -> dict[str, Any]:
    path = next((p for p in CRD_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip(f"{CRD_NAME} not found (set ATTRSUB_RAYCLUSTER_CRD to its path)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(v1["schema"]["openAPIV3Schema"])


def validate_kuberay(manifest: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(raycluster_validator().iter_errors(manifest))
    if error is not None:
        raise error
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")


def _commands(config: dict[str, Any], *keys: str) -> str:
    return "\n".join(c for k in keys for c in config.get(k, []))


# --- offline validation -------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_yaml_passes_rays_validation(name: str) -> None:
    validate_launcher(load(name))


@pytest.mark.parametrize("name", LAUNCHER)
@pytest.mark.parametrize(("mistake", "message"), [
    ("unknown key", r"Additional properties are not allowed \('max_wrkers' was unexpected\)"),
    ("head type not defined", r"`head_node_type` must be one of `available_node_types`"),
    ("non-integer GPU count", r"1\.5 is not of type 'integer'"),
])
def test_launcher_mistake_fails_with_rays_message(name: str, mistake: str, message: str) -> None:
    config = load(name)
    worker = next(t for k, t in config["available_node_types"].items()
                  if k != config["head_node_type"])
    if mistake == "unknown key":
        config["max_wrkers"] = 3
    elif mistake == "head type not defined":
        config["head_node_type"] = "no_such_type"
    else:
        worker["resources"]["GPU"] = 1.5
    with pytest.raises((jsonschema.ValidationError, ValueError), match=message):
        validate_launcher(config)


def test_kuberay_manifest_matches_the_raycluster_crd() -> None:
    validate_kuberay(load("kuberay.yaml"))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda m: m["spec"].__setitem__("enableInTreeAutoscalng", True),
     r"'enableInTreeAutoscalng' was unexpected"),
    (lambda m: m["spec"]["workerGroupSpecs"][0].__setitem__("minReplicas", "zero"),
     r"'zero' is not of type 'integer'"),
    (lambda m: m["spec"]["workerGroupSpecs"][0].pop("groupName"),
     r"'groupName' is a required property"),
    (lambda m: m["spec"]["authOptions"].__setitem__("mode", "password"),
     r"'password' is not one of \['disabled', 'token'\]"),
])
def test_kuberay_mistake_fails_crd_validation(mutate: Callable[[dict], Any],
                                              message: str) -> None:
    manifest = load("kuberay.yaml")
    mutate(manifest)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_kuberay(manifest)


def test_aws_node_configs_are_valid_run_instances_requests() -> None:
    """Ray passes node_config to EC2 RunInstances unchanged; botocore knows its shape offline.
    botocore is in the test extra: a missing one fails here rather than skipping."""
    import botocore.session as botocore_session
    from botocore.validate import ParamValidator

    ec2 = botocore_session.get_session().get_service_model("ec2")
    shape = ec2.operation_model("RunInstances").input_shape
    known_types = set(ec2.shape_for("InstanceType").enum)
    for name, node in load("aws-gpu.yaml")["available_node_types"].items():
        report = ParamValidator().validate({**node["node_config"], "MinCount": 1,
                                            "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert node["node_config"]["InstanceType"] in known_types, name


# --- what the cloud YAMLs promise ---------------------------------------------------------


def _instance(node: dict[str, Any]) -> str:
    cfg = node["node_config"]
    return cfg.get("InstanceType") or cfg["machineType"]


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_yaml_scales_gpu_workers_from_zero(name: str) -> None:
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {k: t for k, t in types.items() if k != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0
    assert "--num-gpus=0" in _commands(config, "head_start_ray_commands")
    assert sorted(t["resources"]["GPU"] for t in workers.values()) == [1, 8]
    for key, node in workers.items():
        assert node.get("min_workers", 0) == 0, key
        assert node["resources"]["GPU"] == INSTANCE_GPUS[_instance(node)], key
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    assert 0 < config["idle_timeout_minutes"] <= 30


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_yaml_installs_the_project_with_cuda_torch_on_gpu_nodes(name: str) -> None:
    config = load(name)
    assert config["file_mounts"]["~/attrsub"] == "."
    head = _commands(config, "setup_commands", "head_setup_commands")
    worker = _commands(config, "setup_commands", "worker_setup_commands")
    for cmds in (head, worker):
        assert "-e ~/attrsub" in cmds
        assert f"ray[default,tune]=={ray.__version__}" in cmds
    assert "whl/cpu" in head and "whl/cpu" not in worker
    assert "torch.cuda.is_available()" in worker


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_yaml_turns_token_auth_on_and_keeps_ports_private(name: str) -> None:
    config = load(name)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    everything = yaml.safe_dump(config)
    assert "0.0.0.0" not in everything, "nothing may listen on or open to every address"
    assert "--dashboard-host=127.0.0.1" in _commands(config, "head_start_ray_commands")
    provider = config["provider"]
    assert not provider.get("security_group", {}).get("IpPermissions"), "only Ray's SSH rule"
    # Trials on workers write Tune results and tables to the object store.
    for key, node in config["available_node_types"].items():
        if key != config["head_node_type"]:
            cfg = node["node_config"]
            assert cfg.get("IamInstanceProfile") or cfg.get("serviceAccounts"), key


def _gpu_shapes() -> list[tuple[str, float, float]]:
    """(name, CPUs, GPUs) of every GPU worker type in the cloud YAMLs and KubeRay groups."""
    shapes = []
    for name in CLOUD:
        for key, node in load(name)["available_node_types"].items():
            if node["resources"].get("GPU"):
                shapes.append((f"{name}:{key}", node["resources"]["CPU"],
                               node["resources"]["GPU"]))
    for group in load("kuberay.yaml")["spec"]["workerGroupSpecs"]:
        (c,) = group["template"]["spec"]["containers"]
        limits = c["resources"]["limits"]
        shapes.append((f"kuberay.yaml:{group['groupName']}", float(limits["cpu"]),
                       limits["nvidia.com/gpu"]))
    return shapes


def test_gpu_nodes_run_one_paper_trial_per_gpu() -> None:
    """N GPUs run N paper trials at once: no GPU node type runs out of CPUs first."""
    paper = yaml.safe_load((REPO / "sweeps" / "presets.yaml").read_text())["paper"]
    for stage, res in paper["resources"].items():
        cpu, gpu = res["cpu"], res["gpu"]
        assert gpu > 0, f"paper {stage} trials must ask for GPUs, or the cluster never scales"
        for name, cpus, gpus in _gpu_shapes():
            assert cpus // cpu >= gpus // gpu, f"{name}: too few CPUs per GPU for {stage}"


def test_kuberay_autoscales_gpu_groups_from_zero_with_token_auth() -> None:
    spec = load("kuberay.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpus = []
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == 0, group["groupName"]
        for c in group["template"]["spec"]["containers"]:
            assert c["image"].endswith(f"{ray.__version__}-py311-gpu")
            gpus.append(c["resources"]["limits"]["nvidia.com/gpu"])
    assert sorted(gpus) == [1, 8]


def test_kuberay_runtime_env_installs_the_project_dependencies_pinned_from_the_lock() -> None:
    """The KubeRay job's pip list covers pyproject's dependencies but Ray (the image's), each
    package pinned with == at the lock's version."""
    env = load("kuberay-runtime-env.yaml")
    ray.runtime_env.RuntimeEnv(**env)  # Ray's own check of the runtime env's fields
    assert set(env["pip"]) <= {"packages", "pip_check"}, "no extra indexes or pip options"
    lock = read_pins(LOCK)
    pins = {}
    for line in env["pip"]["packages"]:
        name, version = _exact_pin(line)
        assert lock.get(name) == version, f"{line}: the lock has {name}=={lock.get(name)}"
        pins[name] = version
    deps = _pyproject()["project"]["dependencies"]
    wanted = {canonicalize_name(Requirement(d).name) for d in deps}
    assert wanted - {"ray"} <= set(pins), sorted(wanted - {"ray"} - set(pins))
    assert "ray" not in pins, "Ray comes from the image"
    images = [c["image"] for g in load("kuberay.yaml")["spec"]["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"]]
    assert all(f"rayproject/ray:{lock['ray']}-" in i for i in images), images


def test_readme_names_every_yaml_and_the_whole_workflow() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for path in CLUSTER.glob("*.yaml"):
        assert f"cluster/{path.name}" in readme, path.name
    for step in ("ray up cluster/aws-gpu.yaml", "ray job submit", "--working-dir .",
                 "--preset paper", "s3://", "gs://", "read_parquet", "ray down"):
        assert step in readme, step


# --- supply chain: pinned packages from the registry, never a fetched script -----------

LOCK = CLUSTER / "requirements.txt"
LOCK_TOP = CLUSTER / "requirements.in"
LOCK_ON_NODE = "~/attrsub/cluster/requirements.txt"
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
# Options of `pip install` / `uv pip install` that take a value.
VALUE_OPTIONS = {
    "--python": "python", "-p": "python", "--index-url": "index", "-i": "index",
    "--extra-index-url": "extra-index", "-f": "extra-index", "--find-links": "extra-index",
    "-c": "constraints", "--constraint": "constraints", "--constraints": "constraints",
    "-b": "build-constraints", "--build-constraint": "build-constraints",
    "--build-constraints": "build-constraints", "-r": "requirements",
    "--requirement": "requirements", "-e": "editable", "--editable": "editable",
    "--target": "target", "--prefix": "target",
}


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, what CI runs
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _exact_pin(line: str) -> tuple[str, Version]:
    """(name, version) of `name[extras]==version`; anything looser fails."""
    req = Requirement(line)
    specs = list(req.specifier)
    assert req.url is None and req.marker is None, line
    assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
        f"{line!r} is not pinned with ==")
    return canonicalize_name(req.name), Version(specs[0].version)


def read_pins(path: Path) -> dict[str, Version]:
    """The name -> version of a requirements file in which every requirement is pinned."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            assert not line.startswith("-"), f"{path.name}: option {line!r} (index, URL, -e)"
            name, version = _exact_pin(line)
            assert name not in pins, f"{path.name}: {name} twice"
            pins[name] = version
    return pins


@dataclasses.dataclass
class Install:
    command: str
    packages: list[str]
    options: dict[str, list[str]]
    flags: set[str]


def _installs(config: dict[str, Any]) -> list[Install]:
    """Every `pip install` (system pip or uv's) in a launcher YAML's commands."""
    found = []
    for key in COMMAND_KEYS:
        for command in config.get(key, []):
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            for i in range(len(tokens) - 1):
                if not (tokens[i].rsplit("/", 1)[-1] in ("pip", "pip3")
                        and tokens[i + 1] == "install"):
                    continue
                install = Install(command, [], {}, set())
                args = iter(tokens[i + 2:])
                for tok in args:
                    if tok in ("&&", "||", ";", "|", ")", ">", ">>", "<"):
                        break
                    if tok in VALUE_OPTIONS:
                        install.options.setdefault(VALUE_OPTIONS[tok], []).append(next(args))
                    elif tok.startswith("-"):
                        install.flags.add(tok)
                    else:
                        install.packages.append(tok)
                found.append(install)
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER.glob("*.yaml")))
def test_no_yaml_fetches_an_install_script(name: str) -> None:
    text = (CLUSTER / name).read_text()
    for bad in ("curl", "wget", "| sh", "|sh", "| bash", "|bash", "| python", "|python"):
        assert bad not in text, f"{name} contains {bad!r}"


@pytest.mark.parametrize("name", LAUNCHER)
def test_every_install_is_pinned_and_held_to_the_lock(name: str) -> None:
    config = load(name)
    lock = read_pins(LOCK)
    installs = _installs(config)
    every = _commands(config, *COMMAND_KEYS)
    assert len(installs) == len(re.findall(r"\bpip3? install\b", every)), "one the parser missed"
    if name in CLOUD:
        assert any(LOCK_ON_NODE in i.options.get("constraints", []) for i in installs)
    for inst in installs:
        assert not inst.options.get("extra-index"), inst.command
        assert not inst.options.get("requirements"), "install the lock with -c, not -r"
        (index,) = inst.options.get("index", [None])
        assert index in (PYPI, TORCH_CPU_INDEX), f"name the index: {inst.command}"
        assert inst.packages or inst.options.get("editable"), inst.command
        for spec in inst.packages:
            pkg, version = _exact_pin(spec)
            assert pkg in lock, f"{spec}: not in the lock"
            assert version.public == str(lock[pkg]), f"{spec}: the lock has {lock[pkg]}"
        if index == TORCH_CPU_INDEX:
            # PyTorch's own index serves one wheel: the CPU build of the lock's torch.
            assert "--no-deps" in inst.flags, inst.command
            ((pkg, version),) = [_exact_pin(p) for p in inst.packages]
            assert pkg == "torch" and version.local == "cpu", inst.command
        elif "--no-deps" not in inst.flags:
            # Whatever the resolver adds is held to the lock, build tools included.
            assert inst.options.get("constraints") == [LOCK_ON_NODE], inst.command
            if inst.options.get("editable"):
                assert inst.options.get("build-constraints") == [LOCK_ON_NODE], inst.command
        assert inst.options.get("editable", ["~/attrsub"]) == ["~/attrsub"], inst.command


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_nodes_run_the_kuberay_images_python(name: str) -> None:
    """One Python minor everywhere: the launcher's virtualenv and the KubeRay images."""
    (venv,) = [c for c in _commands(load(name), "setup_commands").splitlines() if " venv " in c]
    version = Version(shlex.split(venv)[shlex.split(venv).index("--python") + 1])
    assert "--managed-python" in venv
    images = [c["image"] for c in load("kuberay.yaml")["spec"]["headGroupSpec"]["template"]
              ["spec"]["containers"]]
    assert all(f"-py{version.major}{version.minor}-" in i for i in images), images
    requires = _pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(version)


def test_lock_pins_every_dependency_within_pyprojects_ranges() -> None:
    lock = read_pins(LOCK)
    top = read_pins(LOCK_TOP)
    for pkg, version in top.items():
        assert lock.get(pkg) == version, f"{pkg}: requirements.in {version}, lock {lock.get(pkg)}"
    project = _pyproject()
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for dep in wanted:
        req = Requirement(dep)
        pkg = canonicalize_name(req.name)
        assert pkg in top, f"{dep}: no top-level pin in requirements.in"
        assert req.specifier.contains(lock[pkg], prereleases=True), (
            f"the lock's {pkg}=={lock[pkg]} is outside pyproject's {dep!r}")
        for extra in req.extras:  # ray[tune,default]: what the extras add is locked too
            for needed in map(Requirement, metadata.requires(req.name) or []):
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(needed.name) in lock, f"{dep}: {needed}"
    assert lock["ray"] == Version(ray.__version__), "the Ray the tests run is the clusters' Ray"
    for sdk in ("boto3", "google-api-python-client", "uv"):
        assert sdk in top, sdk


# --- least-privilege cloud rights -----------------------------------------------------------

AWS_HEAD_PROFILE, AWS_WORKER_PROFILE = "attrsub-ray-head", "attrsub-ray-worker"
BUCKET_ARN = "arn:aws:s3:::YOUR-BUCKET"
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


def _statements(name: str) -> list[dict[str, Any]]:
    doc = json.loads((CLUSTER / name).read_text())
    assert doc["Version"] == "2012-10-17", name
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow", name
        assert not {"NotAction", "NotResource", "NotPrincipal"} & set(st), name
    return doc["Statement"]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _check_no_wildcard_actions(name: str) -> set[str]:
    actions = {a for st in _statements(name) for a in _listed(st["Action"])}
    for action in actions:
        assert "*" not in action, f"{name}: wildcard action {action}"
        assert action.split(":")[0] in ("ec2", "s3", "ssm", "iam"), f"{name}: {action}"
    return actions


def _check_bucket_only(statements: list[dict[str, Any]]) -> None:
    s3 = [st for st in statements if any(a.startswith("s3:") for a in _listed(st["Action"]))]
    for st in s3:
        actions, resources = set(_listed(st["Action"])), _listed(st["Resource"])
        bucket = actions == {"s3:ListBucket"} and resources == [BUCKET_ARN]
        objects = actions <= S3_OBJECT_ACTIONS and resources == [f"{BUCKET_ARN}/*"]
        assert bucket or objects, st
    granted = {a for st in s3 for a in _listed(st["Action"])}
    assert granted >= {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def test_aws_worker_policy_is_the_study_bucket_and_nothing_else() -> None:
    actions = _check_no_wildcard_actions("aws-worker-policy.json")
    assert all(a.startswith("s3:") for a in actions), "workers get no EC2 (or other) rights"
    _check_bucket_only(_statements("aws-worker-policy.json"))


def test_aws_head_policy_is_what_rays_autoscaler_calls_for_this_cluster() -> None:
    config = load("aws-gpu.yaml")
    region, cluster = config["provider"]["region"], config["cluster_name"]
    statements = _statements("aws-head-policy.json")
    actions = _check_no_wildcard_actions("aws-head-policy.json")
    assert {a for a in actions if a.startswith("ec2:")} == {
        "ec2:DescribeInstances", "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"}
    assert {a for a in actions if a.startswith("iam:")} == {"iam:PassRole"}
    _check_bucket_only(statements)
    for st in statements:
        resources = _listed(st["Resource"])
        if "*" in resources:
            assert _listed(st["Action"]) == ["ec2:DescribeInstances"], st
        for arn in resources:
            if arn.startswith(("arn:aws:ec2:", "arn:aws:ssm:")):
                assert arn.split(":")[3] == region, arn
        acts = set(_listed(st["Action"]))
        condition = st.get("Condition", {}).get("StringEquals", {})
        if "ec2:TerminateInstances" in acts:
            assert condition == {"aws:ResourceTag/ray-cluster-name": cluster}, st
        if "ec2:RunInstances" in acts and any(":instance/" in r for r in resources):
            assert condition == {"aws:RequestTag/ray-cluster-name": cluster}, st
        if "ec2:CreateTags" in acts:
            assert condition in ({"aws:ResourceTag/ray-cluster-name": cluster},
                                 {"ec2:CreateAction": "RunInstances"}), st
        if "iam:PassRole" in acts:
            assert resources == [f"arn:aws:iam::YOUR-ACCOUNT-ID:role/{AWS_WORKER_PROFILE}"]
            assert condition == {"iam:PassedToService": "ec2.amazonaws.com"}
        if any(a.startswith("ssm:") for a in acts):
            images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
            (image,) = images
            assert image.startswith("resolve:ssm:"), image
            assert resources == [f"arn:aws:ssm:{region}::parameter{image[len('resolve:ssm:'):]}"]
    trust = _statements("aws-ec2-trust-policy.json")
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                      "Action": "sts:AssumeRole"}]


def test_aws_nodes_get_the_least_privilege_profiles() -> None:
    config = load("aws-gpu.yaml")
    for key, node in config["available_node_types"].items():
        profile = node["node_config"]["IamInstanceProfile"]
        want = AWS_HEAD_PROFILE if key == config["head_node_type"] else AWS_WORKER_PROFILE
        assert profile == {"Name": want}, key  # never Ray's ray-autoscaler-v1 (EC2+S3 full)
    readme = (CLUSTER / "README.md").read_text()
    for needed in (AWS_HEAD_PROFILE, AWS_WORKER_PROFILE, "aws-head-policy.json",
                   "aws-worker-policy.json", "aws-ec2-trust-policy.json"):
        assert needed in readme, needed


def test_gcp_nodes_get_narrow_scopes_and_workers_their_own_account() -> None:
    config = load("gcp-gpu.yaml")
    project = config["provider"]["project_id"]
    storage = "https://www.googleapis.com/auth/devstorage.read_write"
    compute = "https://www.googleapis.com/auth/compute"
    for key, node in config["available_node_types"].items():
        (account,) = node["node_config"]["serviceAccounts"]
        scopes = set(account["scopes"])
        assert not any(s.endswith("/cloud-platform") for s in scopes), key
        if key == config["head_node_type"]:
            assert compute in scopes and scopes <= {compute, storage}, key
        else:
            assert scopes == {storage}, key
            assert account["email"] == f"attrsub-ray-worker@{project}.iam.gserviceaccount.com"


# --- a real autoscaling run on the fake multi-node provider -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class FakeCluster:
    """A head from cluster/local-fake.yaml in its own session on its own ports and temp dir,
    so teardown stops exactly this cluster (``ray stop`` would stop everyone's)."""

    temp: Path
    gcs: str
    dashboard: str
    sid: int

    def stop(self) -> None:
        """SIGTERM every process of the head's session (GCS, raylets of every fake node, their
        workers, the autoscaler), SIGKILL what is left after 10 s, remove the temp dir."""
        procs = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.sid:
                    procs.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """The head of cluster/local-fake.yaml on free ports; torn down even when the test fails."""
    if RAY_CLI is None:
        pytest.skip("the ray CLI is not installed")
    config = load("local-fake.yaml")
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    temp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))  # short: socket paths are capped
    ip = ray._private.services.get_node_ip_address()
    port, dash, client = _free_port(), _free_port(), _free_port()
    config["provider"]["gcs_address"] = f"{ip}:{port}"
    cfg = temp / "autoscaling.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [RAY_CLI, "start", "--head", f"--port={port}", f"--num-cpus={head['CPU']}",
           f"--num-gpus={head.get('GPU', 0)}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", "--dashboard-agent-listen-port=0",
           "--object-store-memory=200000000", f"--temp-dir={temp / 'ray'}",
           "--disable-usage-stats", f"--autoscaling-config={cfg}"]
    env = {**ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    cluster = FakeCluster(temp, f"{ip}:{port}", f"http://127.0.0.1:{dash}", proc.pid)
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        yield cluster
    finally:
        proc.kill()
        cluster.stop()


def _gpu_presets(path: Path) -> Path:
    """The smoke preset with every trial asking for one GPU: only fake GPU workers run it."""
    import yaml

    from sweeps.config import PRESETS

    smoke = yaml.safe_load(PRESETS.read_text())["smoke"]
    smoke["resources"] = {"mine": {"cpu": 1, "gpu": 1}, "finetune": {"cpu": 1, "gpu": 1}}
    path.write_text(yaml.safe_dump({"smoke": smoke}))
    return path


def _state(cluster: FakeCluster, what: str) -> list[Any]:
    """Ray's state API (through the head's dashboard), retried: two busy cores can stall it."""
    from ray.util import state
    from ray.util.state.exception import RayStateApiException

    for attempt in range(5):
        try:
            return getattr(state, f"list_{what}")(address=cluster.dashboard, detail=True,
                                                  limit=10000, raise_on_missing_output=False)
        except RayStateApiException:
            if attempt == 4:
                raise
            time.sleep(3)
    raise AssertionError("unreachable")


def _nodes(cluster: FakeCluster) -> list[Any]:
    return _state(cluster, "nodes")


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(1)
    return time.monotonic() - t0


@pytest.mark.slow
def test_fake_cluster_adds_gpu_workers_for_the_study_and_removes_them(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    from results.schema import read_table

    before = _nodes(fake_cluster)
    assert [n.is_head_node for n in before] == [True], "the cluster starts with no workers"
    (head,) = before
    assert head.resources_total.get("GPU", 0) == 0

    t0_ms = time.time() * 1000
    presets = _gpu_presets(tmp_path / "presets.yaml")
    run = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--presets", str(presets),
         "--preset", "smoke", "--storage", str(tmp_path / "store")],
        env={**ENV, "RAY_ADDRESS": fake_cluster.gcs}, cwd=REPO, capture_output=True,
        text=True, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_table(str(tmp_path / "store" / "smoke" / "trials.parquet"))
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows][:3]

    workers = [n for n in _nodes(fake_cluster) if not n.is_head_node]
    assert workers, "the autoscaler added no worker"
    assert all(n.resources_total.get("GPU", 0) >= 1 for n in workers)
    # Tune runs each trial in a placement group; its actor needs GPU (or GPU_group_*) there.
    worker_ids = {n.node_id for n in workers}
    groups = _state(fake_cluster, "placement_groups")
    gpu_bundles = [b for g in groups for b in g.bundles if b["unit_resources"].get("GPU")]
    assert gpu_bundles, "no trial reserved a GPU"
    assert {b["node_id"] for b in gpu_bundles if b.get("node_id")} <= worker_ids
    gpu_actors = [a for a in _state(fake_cluster, "actors")
                  if any(k.startswith("GPU") for k in a.required_resources)]
    placed = {a.node_id for a in gpu_actors if a.node_id}  # None: never placed (reuse)
    assert placed, "no trial actor ran on a GPU"
    assert placed <= worker_ids

    up_s = (min(n.start_time_ms for n in workers) - t0_ms) / 1000
    down_s = _wait("idle workers to be removed",
                   lambda: all(n.state == "DEAD" for n in _nodes(fake_cluster)
                               if not n.is_head_node), timeout=180)
    dead = [n for n in _nodes(fake_cluster) if not n.is_head_node]
    lifetimes = sorted(round((n.end_time_ms - n.start_time_ms) / 1000, 1) for n in dead)
    print(f"\nfake cluster: {len(workers)} worker node(s) "
          f"({sorted(int(n.resources_total['GPU']) for n in workers)} GPUs); first one up "
          f"{up_s:.1f} s after the driver started; {len(rows)} trials, "
          f"{len(gpu_actors)} GPU trial actors; all workers gone {down_s:.1f} s after the "
          f"study ended (idle timeout {load('local-fake.yaml')['idle_timeout_minutes']} min); "
          f"worker lifetimes {lifetimes} s")


def test_fake_cluster_config_names_only_fake_gpu_workers() -> None:
    """The head must lack GPUs, or GPU trials would never make the autoscaler add a node."""
    config = load("local-fake.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for k, t in types.items() if k != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 and t.get("min_workers", 0) == 0
                           for t in workers)
    assert config["provider"]["type"] == "fake_multinode"
