"""Presets and the study driver's checks: bad input fails before any trial (and before Ray)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import yaml

from attrsub.errors import ConfigError
from sweeps.ablation import main
from sweeps.config import PRESETS, from_dict, load_preset
from sweeps.finetune import finetune_jobs, longest_first


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(PRESETS.read_text())


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_shipped_presets_validate(name: str) -> None:
    p = load_preset(name)
    assert p.name == name and set(p.factors) <= {"texture", "geometry", "camera", "lighting"}


def test_unknown_preset_lists_valid() -> None:
    with pytest.raises(ConfigError, match="smoke, quick, paper"):
        load_preset("nope")


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("factors",), ["texture", "colour"], "colour"),
        (("downstream", "methods"), ["lora", "adalora"], "adalora"),
        (("downstream", "tasks"), ["nope"], "unknown task"),
        (("ablation", "ortho"), ["householder"], "householder"),
        (("ablation", "extraction"), ["pca"], "pca"),
        (("ablation", "subsets"), [["texture", "lighting"]], None),
        (("size",), 30, "patch size"),
        (("downstream", "rank"), 99, "exceeds"),
        (("mining", "stepz"), 3, "unknown key"),
        (("resources", "finetune", "gpu"), -1, "gpu"),
        (("resources", "mine", "gpu"), 1.5, "whole GPUs"),
        (("resources", "mine", "tpu"), 1, "unknown key"),
        (("extraction", "method"), "pca", "extraction method"),
        (("downstream", "lr_search"), {"span": 4}, "lacks 'trials'"),
        (("downstream", "lr_search"), {"trials": 0}, "trials must be a positive"),
        (("downstream", "lr_search"), {"trials": 3, "span": 1}, "span must be above 1"),
        (("downstream", "lr_search"), {"trials": 3, "sampler": "bohb"}, "bohb"),
        (("downstream", "lr_search"), {"trials": 3, "seed": 0}, "one of the study's seeds"),
        (("downstream", "lr_search"), {"trials": 3, "steps": 9}, "unknown key"),
        (("downstream", "lr_search"), None, None),
        (("downstream", "lr"), float("inf"), "positive finite"),
        (("mining", "init_scale"), 0, "init_scale must be a positive"),
        (("mining", "init_scale"), 0.01, None),
        (("ablation", "seeds"), [7], "not downstream seeds"),
        (("ablation", "seeds"), [0], None),
        (("ablation", "tasks"), ["cross_domain"], "ablation task"),
        (("ablation", "tasks"), ["print_attack"], None),
    ],
)
def test_bad_fields_are_named(raw: dict, path: tuple, value: object, match: str | None) -> None:
    cfg = copy.deepcopy(raw["smoke"])
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    if match is None:
        from_dict("x", cfg)
        return
    with pytest.raises(ConfigError, match=match):
        from_dict("x", cfg)


def test_lr_search_grid_spans_the_range_around_each_rate() -> None:
    cfg = load_preset("quick").downstream.lr_search
    assert cfg is not None and cfg.trials == 3
    assert cfg.rates(0.5) == [0.125, 0.5, 2.0]  # ends exactly, the preset's rate in the middle
    assert cfg.bounds(0.5) == (0.125, 2.0)
    five = dataclasses.replace(cfg, trials=5, span=10.0).rates(1.0)
    assert five[0] == 0.1 and five[-1] == 10.0 and five[2] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10 ** 0.5) for a, b in itertools.pairwise(five))


def test_subset_outside_study_factors_is_refused(raw: dict) -> None:
    cfg = copy.deepcopy(raw["smoke"])
    cfg["factors"] = ["texture", "geometry"]
    cfg["ablation"]["subsets"] = [["camera"]]
    with pytest.raises(ConfigError, match="camera"):
        from_dict("x", cfg)


def test_jobs_have_unique_ids_and_cover_axes() -> None:
    jobs = finetune_jobs(load_preset("quick"))
    ids = [j.trial_id for j in jobs]
    assert len(ids) == len(set(ids))
    assert {j.axis for j in jobs} == {"main", "ranks", "subsets", "ortho", "extraction"}
    assert all(j.method == "reduced" for j in jobs if j.axis != "main")


def test_ablation_variants_run_on_their_seeds_and_tasks_only() -> None:
    """The main comparison keeps every task and seed; the ablation axes only theirs."""
    p = load_preset("quick")
    jobs = finetune_jobs(p)
    main_jobs = [j for j in jobs if j.axis == "main"]
    assert {(j.task, j.seed) for j in main_jobs} == set(
        itertools.product(p.downstream.tasks, p.downstream.seeds))
    variants = [j for j in jobs if j.axis != "main"]
    assert variants and {j.task for j in variants} == set(p.ablation.tasks)
    assert {j.seed for j in variants} == set(p.ablation.seeds) < set(p.downstream.seeds)


def test_stage_two_starts_longest_trials_first() -> None:
    jobs = finetune_jobs(load_preset("quick"))
    order = longest_first(jobs)
    assert sorted(j.trial_id for j in order) == sorted(j.trial_id for j in jobs)
    methods = [j.method for j in order]
    n_full, n_none = methods.count("full"), methods.count("none")
    assert n_full and n_none
    assert set(methods[:n_full]) == {"full"} and set(methods[-n_none:]) == {"none"}
    rest = [j.trial_id for j in jobs if j.method not in ("full", "none")]
    assert [j.trial_id for j in order[n_full:-n_none]] == rest  # otherwise as given


def test_driver_rejects_bad_input_before_ray(tmp_path, capsys) -> None:
    assert main(["--preset", "nope", "--storage", str(tmp_path)]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--storage", str(tmp_path), "--study", "../x"]) == 2
    assert "plain folder name" in capsys.readouterr().err


def test_existing_study_needs_resume(tmp_path, capsys) -> None:
    from results.schema import write_record
    from sweeps.study import claim, open_study, study_parser

    st = open_study(study_parser("test", None).parse_args(["--preset", "smoke", "--storage",
                                                   str(tmp_path)]))
    write_record(st.record, claim(st))
    assert main(["--preset", "smoke", "--storage", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_rank_wider_than_a_layer_names_the_layer(raw: dict) -> None:
    cfg = copy.deepcopy(raw["smoke"])
    cfg["mining"]["rank"] = 4096
    cfg["extraction"]["rank"] = 4
    with pytest.raises(ConfigError, match=r"mining.rank = 4096 is larger than layer 'aggregator"):
        from_dict("x", cfg)


def test_unwritable_storage_and_bad_weights_fail_before_ray(tmp_path, capsys) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["--preset", "smoke", "--storage", str(blocked / "sub")]) == 2
    assert "--storage" in capsys.readouterr().err
    assert main(["--preset", "paper", "--storage", str(tmp_path)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["--preset", "paper", "--storage", str(tmp_path),
                 "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["--preset", "quick", "--storage", str(tmp_path), "--weights", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_own_presets_file(tmp_path, raw: dict) -> None:
    mine = copy.deepcopy(raw["smoke"])
    mine["resources"]["finetune"]["gpu"] = 0.25
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"tiny-gpu": mine}))
    assert load_preset("tiny-gpu", path).resources["finetune"] == {"cpu": 1.0, "gpu": 0.25}
    with pytest.raises(ConfigError, match="unknown preset 'smoke'; valid: tiny-gpu"):
        load_preset("smoke", path)
    path.write_text("smoke: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML: .* at line 1"):
        load_preset("smoke", path)
