"""The shared training loop on the real tiny model and real renders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.errors import ConfigError, DataError, DivergenceError
from attrsub.model import build
from attrsub.train.loop import StepInfo, TrainConfig, lr_lambda, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SceneDataset:
    root = tmp_path_factory.mktemp("data")
    return SceneDataset(
        render_factor_dataset(DatasetSpec("canonical", scenes=4, views=3, size=56), root)
    )


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("vggt-tiny")


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = lr_lambda(warmup_steps=4, total=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.5)
    assert f(20) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_resume_from_checkpoint_equals_an_uninterrupted_run(
    dataset: SceneDataset, tmp_path: Path
) -> None:
    cfg = TrainConfig(steps=4, lr=1e-3, batch_size=1, checkpoint_every=2, log_every=1, seed=3)
    whole = _model()
    train(whole, dataset, cfg, progress=False)

    part = _model()
    stops: list[int] = []

    def stop_at_two(info: StepInfo) -> bool:
        stops.append(info.step)
        return info.step == 2

    first = train(part, dataset, cfg, checkpoint_dir=tmp_path, callback=stop_at_two,
                  progress=False)
    assert first.stopped_early and first.steps == 2 and stops == [1, 2]
    assert first.resumed_from == 0
    resumed = _model()
    with torch.no_grad():  # the checkpoint, not the init, must set the trained weights
        for name, p in resumed.named_parameters():
            if not name.startswith("aggregator.patch_embed"):
                p.add_(0.1)
    second = train(resumed, dataset, cfg, checkpoint_dir=tmp_path, progress=False)
    assert second.steps == 4 and [h["step"] for h in second.history] == [1, 2, 3, 4]
    assert second.resumed_from == 2
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-5), name


def test_frozen_patch_encoder_does_not_move(dataset: SceneDataset) -> None:
    model = _model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    train(model, dataset, TrainConfig(steps=2, lr=1e-3, batch_size=1), progress=False)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("aggregator.patch_embed") for n in moved)
    with pytest.raises(ConfigError, match="freeze prefix 'encoder' matches no parameter"):
        train(_model(), dataset, TrainConfig(steps=1, freeze=("encoder",)), progress=False)


def test_nan_loss_stops_at_once(dataset: SceneDataset) -> None:
    model = _model()
    with torch.no_grad():  # a diverged weight, as a too-high learning rate leaves behind
        model.depth_head.scratch.output_conv2[-1].bias.fill_(math.inf)
    seen: list[int] = []
    with pytest.raises(DivergenceError, match="at step 0") as err:
        train(model, dataset, TrainConfig(steps=5, batch_size=1), progress=False,
              callback=lambda info: seen.append(info.step))
    assert err.value.step == 0 and seen == []


def test_checkpoint_from_another_setup_is_refused(dataset: SceneDataset, tmp_path: Path) -> None:
    train(_model(), dataset, TrainConfig(steps=1, batch_size=1), checkpoint_dir=tmp_path,
          progress=False)
    with pytest.raises(DataError, match="different trainable parameters"):
        train(_model(), dataset, TrainConfig(steps=2, batch_size=1, freeze=()),
              checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"warmup": 1.5}, "warmup is a fraction"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"frames": 1}, "frames must be None"),
    ],
)
def test_bad_train_config(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**kwargs)
