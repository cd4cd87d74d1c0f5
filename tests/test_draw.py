"""The shared scene samplers: the draw order they promise, and pinned scenes of every generator.

The pins are spec hashes computed before the factor families and the tasks shared
``attrsub.scenes.draw`` (commit 3ad86e7): a failure here means every cached dataset key and
task split would change, which a refactor must never do.
"""

from __future__ import annotations

import numpy as np

from attrsub.scenes.draw import (
    Placer,
    TextureRanges,
    draw_material,
    integer,
    keyed_stream,
    log_uniform,
    uniform,
)
from attrsub.scenes.factors import CANONICAL, FACTORS, FactorSpec, sample_scenes
from attrsub.tasks import TaskSize, get_task

SMALL = TaskSize(train_scenes=6, eval_scenes=6, views=3, size=28)
FAMILY_PINS = {
    "texture": "712f7b4c7913b4dc36838b78941a6bdadb3ee41dc8b3d298dffe5476ddc043b1",
    "geometry": "1e80d63a9f7da761a71388188ca575dba12b8902788bc13dcc2da7337ea77e1a",
    "camera": "75f41a56718301eb8c589aab33f1f6ed430417e406d2a2640073472c74267ea1",
    "lighting": "9bb6d991f03de4182a9359de50835e0297a45e8554e36849021648f491a92151",
    "canonical": "1a89dc03f44d9cae18a3b874e4902df2679e30480de08a15d24ff53fa0ff181d",
}
TEXTURE = TextureRanges(("checker", "noise"), (0.8, 4.0), (2, 4), (0.2, 0.8), (0.25, 0.95),
                        (0.02, 0.2), (8.0, 64.0))


def test_factor_family_scenes_are_pinned() -> None:
    for factor in (*FACTORS, CANONICAL):
        scene = sample_scenes(FactorSpec(factor, scenes=1, views=4, seed=0))[0]
        assert scene.spec_hash() == FAMILY_PINS[factor], factor


def test_task_scenes_and_splits_are_pinned() -> None:
    pa = get_task("print_attack")
    assert [s.spec_hash() for s in pa.train_scenes(0, SMALL)[:2]] == [  # type: ignore[attr-defined]
        "851b0ae486ac2b20655602ec27a1ab73fba8111e0dd9573e83a287b67750c624",
        "07f07833244eec689ccda812ae756d8186743d3b69c7b634c78dbebbbee3d4a2",
    ]
    assert pa.eval_sets(0, SMALL)["test"][0].spec_hash() == (  # type: ignore[attr-defined]
        "510fd7ae1b68f8e63c728dee8190d4036bd8b611721fd26409097aec8d2b58d6"
    )
    sets = get_task("cross_domain").eval_sets(0, SMALL)  # type: ignore[attr-defined]
    assert sets["in_domain"][0].spec_hash() == (
        "157a37b6b4008d028f721752809f3c9bf0b61046bf058fbf01fa17f2a2922a11"
    )
    assert sets["cross_domain"][0].spec_hash() == (
        "f571bea69866b3483624c1fbfa771c5e6852e6f247fef5297841b3d9beacaa4f"
    )
    real = get_task("real")
    assert real.windows(0, SMALL) == {  # type: ignore[attr-defined]
        "test": [(0, 1, 2), (3, 4, 5), (6, 7, 8), (24, 25, 26), (27, 28, 29)],
        "train": [(9, 10, 11), (12, 13, 14), (15, 16, 17), (18, 19, 20), (21, 22, 23)],
    }
    assert real.chessboard_pairs(0, SMALL) == [0, 1, 2, 3, 9, 12]  # type: ignore[attr-defined]


def test_one_interval_costs_no_draw() -> None:
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert uniform(a, (1.0, 2.0)) == float(b.uniform(1.0, 2.0))
    assert integer(a, (2, 4)) == int(b.integers(2, 5))
    assert log_uniform(a, (0.5, 8.0)) == float(np.exp(b.uniform(np.log(0.5), np.log(8.0))))
    # Two tails: one draw picks the tail, then the value.
    a, b = np.random.default_rng(6), np.random.default_rng(6)
    lo, hi = ((0.0, 1.0), (5.0, 6.0))[int(b.integers(2))]
    assert uniform(a, ((0.0, 1.0), (5.0, 6.0))) == float(b.uniform(lo, hi))


def test_skin_draw_is_one_leading_draw_only_when_asked() -> None:
    plain = draw_material(np.random.default_rng(1), TEXTURE)
    shifted = np.random.default_rng(1)
    shifted.random()
    assert draw_material(np.random.default_rng(1), TEXTURE, skin_prob=0.0) == (
        draw_material(shifted, TEXTURE)
    )
    assert plain != draw_material(np.random.default_rng(1), TEXTURE, skin_prob=0.0)
    skin = draw_material(np.random.default_rng(1), TEXTURE, skin_prob=1.0)
    for colour in skin.texture.palette:
        assert colour[0] >= colour[2]  # warm: more red than blue


def test_keyed_streams_differ_by_every_key_part() -> None:
    base = keyed_stream(0, "t/train", 1, 0).random()
    assert keyed_stream(0, "t/train", 1, 0).random() == base
    for args in ((1, "t/train", 1, 0), (0, "t/test", 1, 0), (0, "t/train", 2, 0),
                 (0, "t/train", 1, 1)):
        assert keyed_stream(*args).random() != base


def test_placer_keeps_footprints_apart() -> None:
    spot = Placer(np.random.default_rng(3), 3.0).spot
    placed = [(*spot(0.3), 0.3) for _ in range(5)]
    for i, (x, y, r) in enumerate(placed):
        for px, py, pr in placed[:i]:
            assert np.hypot(x - px, y - py) > r + pr
