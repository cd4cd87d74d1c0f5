"""Downstream tasks: registry, deterministic splits, print-attack geometry and spoof rule,
disjoint cross-domain families, and a full evaluate() on a random tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attrsub.errors import ConfigError
from attrsub.eval.evaluate import run_split
from attrsub.model import build
from attrsub.scenes.render import render
from attrsub.tasks import (
    MAX_MICRO_DEG,
    TASKS,
    CrossDomainTask,
    PrintAttackTask,
    RealTask,
    SceneTask,
    TaskSize,
    get_task,
    is_print,
    planarity,
    plane_fit_residual,
    scene_shapes,
    scene_textures,
    select_threshold,
    spoof_accuracy,
)

SMALL = TaskSize(train_scenes=6, eval_scenes=6, views=3, size=28)
# Tasks rendered from scene specs; the real-data task is tested in test_real.py.
SCENE_TASKS = sorted(n for n, t in TASKS.items() if isinstance(t, SceneTask))


def _print_task() -> PrintAttackTask:
    task = get_task("print_attack")
    assert isinstance(task, PrintAttackTask)
    return task


def test_registry_and_errors(tmp_path: Path) -> None:
    assert set(TASKS) == {"print_attack", "cross_domain", "real"}
    assert SCENE_TASKS == ["cross_domain", "print_attack"]
    assert isinstance(TASKS["real"], RealTask)
    for name, task in TASKS.items():
        assert get_task(name) is task and task.name == name and task.lower_is_better
    with pytest.raises(ConfigError, match=r"'nope'.*cross_domain, print_attack, real"):
        get_task("nope")
    for bad in (
        {"views": 1},
        {"size": 30},
        {"train_scenes": 0},
        {"eval_scenes": True},
        {"views": 2.0},
    ):
        with pytest.raises(ConfigError):
            TaskSize(**bad)  # type: ignore[arg-type]
    task = _print_task()
    with pytest.raises(ConfigError, match="at least 2"):
        task.train_data(tmp_path, TaskSize(1, 2, 2, 28))
    with pytest.raises(ConfigError, match="seed"):
        task.eval_data(tmp_path, SMALL, seed=-1)
    with pytest.raises(ConfigError, match="TaskSize"):
        task.train_data(tmp_path, 28)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nn.Module"):
        task.evaluate("model", tmp_path, SMALL)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="device"):
        task.evaluate(torch.nn.Linear(1, 1), tmp_path, SMALL, device="warp-drive")
    assert not list(tmp_path.iterdir()), "bad input must fail before any rendering"


@pytest.mark.parametrize("name", SCENE_TASKS)
def test_splits_are_deterministic_and_disjoint(name: str) -> None:
    task = get_task(name)

    def hashes(seed: int) -> dict[str, list[str]]:
        sets = {"train": task.train_scenes(seed, SMALL), **task.eval_sets(seed, SMALL)}
        return {k: [s.spec_hash() for s in v] for k, v in sets.items()}

    a, b, c = hashes(0), hashes(0), hashes(1)
    assert a == b
    assert all(len(v) == 6 for v in a.values())
    every = [h for v in a.values() for h in v]
    assert len(set(every)) == len(every), "splits must not share scenes"
    assert not set(every) & {h for v in c.values() for h in v}


def _rotation_deg(extrinsics: torch.Tensor) -> list[float]:
    rots = extrinsics[:, :, :3].double()
    cos = [((r @ rots[0].T).trace() - 1) / 2 for r in rots]
    return [math.degrees(math.acos(float(c.clamp(-1, 1)))) for c in cos]


def test_print_attack_prints_are_planar_and_cameras_micro() -> None:
    task = _print_task()
    scenes = task.train_scenes(3, SMALL)
    labels = [is_print(s) for s in scenes]
    assert sum(labels) == 3
    out = render(scenes, SMALL.size)
    for i, (scene, printed) in enumerate(zip(scenes, labels, strict=True)):
        assert scene.camera.trajectory == "micro"
        assert max(_rotation_deg(out["extrinsics"][i])) <= MAX_MICRO_DEG
        valid = out["valid"][i]
        residual = plane_fit_residual(out["world_points"][i][valid])
        if printed:
            assert bool(valid.all()), "a print fills every view"
            assert residual < 1e-4
        else:
            assert residual > 1e-2


def test_spoof_rule_on_ground_truth_depth_is_perfect() -> None:
    task = _print_task()
    size = TaskSize(12, 12, 3, 56)
    scores: dict[str, list[float]] = {}
    labels: dict[str, list[bool]] = {}
    for split, scenes in {"train": task.train_scenes(0, size), **task.eval_sets(0, size)}.items():
        out = render(scenes, size.size)
        scores[split] = [planarity(d, v) for d, v in zip(out["depths"], out["valid"], strict=True)]
        labels[split] = task.labels(0, split, size)
        assert labels[split] == [is_print(s) for s in scenes]
    threshold = select_threshold(scores["train"], labels["train"])
    assert spoof_accuracy(scores["train"], labels["train"], threshold) == 1.0
    assert spoof_accuracy(scores["test"], labels["test"], threshold) == 1.0
    prints = [s for s, y in zip(scores["test"], labels["test"], strict=True) if y]
    assert max(prints) < 1e-5


def test_threshold_selection() -> None:
    scores = [1e-6, 2e-6, 0.5, 1e-2, 3e-2, float("nan")]
    prints = [True, True, True, False, False, False]
    t = select_threshold(scores, prints)
    assert 2e-6 < t < 1e-2
    assert spoof_accuracy(scores, prints, t) == pytest.approx(5 / 6)
    assert select_threshold([1.0, 2.0], [False, False]) < 1.0
    with pytest.raises(ConfigError):
        select_threshold([1.0], [True, False])
    flat = torch.full((2, 6, 6), 3.0)
    assert planarity(flat, torch.ones(2, 6, 6, dtype=torch.bool)) < 1e-12
    assert planarity(flat, torch.zeros(2, 6, 6, dtype=torch.bool)) == math.inf
    bowl = 3.0 + torch.from_numpy(np.add.outer(np.arange(6.0) ** 2, np.arange(6.0) ** 2)) / 20
    assert planarity(bowl, torch.ones(6, 6, dtype=torch.bool)) > 1e-2


def test_cross_domain_families_are_disjoint() -> None:
    task = get_task("cross_domain")
    assert isinstance(task, CrossDomainTask)
    sets = {"train": task.train_scenes(0, SMALL), **task.eval_sets(0, SMALL)}
    assert set(sets) == {"train", "in_domain", "cross_domain"}

    def union(split: str, fn: object) -> set[str]:
        return set().union(*(fn(s) for s in sets[split]))  # type: ignore[operator]

    source = union("train", scene_shapes) | union("in_domain", scene_shapes)
    target = union("cross_domain", scene_shapes)
    assert source <= {"box", "cylinder"} and target <= {"sphere", "heightfield"}
    src_tex = union("train", scene_textures) | union("in_domain", scene_textures)
    assert src_tex <= {"checker", "stripes"}
    assert union("cross_domain", scene_textures) <= {"noise", "patchwork"}
    assert all(len(s.lighting.lights) == 1 for s in sets["in_domain"])
    assert all(len(s.lighting.lights) >= 2 for s in sets["cross_domain"])


@pytest.mark.parametrize("name", SCENE_TASKS)
def test_evaluate_random_model_gives_finite_metrics(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("vggt-tiny")
    size = TaskSize(train_scenes=4, eval_scenes=4, views=3, size=28)
    task = get_task(name)
    out = task.evaluate(model, tmp_path, size)
    assert out["main"] == out[task.main_metric]
    assert all(math.isfinite(v) for v in out.values()), out
    splits = sorted(task.eval_data(tmp_path, size))
    for split in splits:
        for metric in ("pc_acc", "pc_comp", "pc_nc", "depth_absrel", "depth_delta1", "cam_auc30"):
            assert f"{split}/{metric}" in out
    if name == "print_attack":
        assert {"spoof_threshold", "train/spoof_acc", "test/spoof_acc"} <= set(out)
    else:
        assert splits == ["cross_domain", "in_domain"] and "gap/pc_acc" in out
    folders = {p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()}
    used = {*splits, "train"} if name == "print_attack" else set(splits)
    assert folders == {f"task-{name}-{s}" for s in used}


def test_batched_evaluation_equals_one_scene_at_a_time(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenes are evaluated EVAL_BATCH per forward; every per-scene number is the same."""
    import attrsub.eval.evaluate as loop

    torch.manual_seed(0)
    model = build("vggt-tiny")
    task = _print_task()
    data = task.eval_data(tmp_path, SMALL)["test"]
    batched, stats = run_split(model, data, torch.device("cpu"), task.sample_stats)
    monkeypatch.setattr(loop, "EVAL_BATCH", 1)
    single, stats1 = run_split(model, data, torch.device("cpu"), task.sample_stats)
    assert batched.keys() == single.keys()
    for k in batched:
        assert batched[k] == pytest.approx(single[k], rel=1e-4, abs=1e-6), k
    assert [s["planarity"] for s in stats] == pytest.approx(
        [s["planarity"] for s in stats1], rel=1e-4)
