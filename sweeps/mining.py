"""Stage 1, the mining sweep: Ray Tune fans attrsub.subspace.mine.mine_adapter out over
factors x groups x adapter seeds, and each finished adapter goes to the study's subspace
actor, which builds the bank from them."""

from __future__ import annotations

import dataclasses
from typing import Any

from results.schema import trials_schema, upsert_table
from sweeps.config import Preset
from sweeps.job import mining_jobs
from sweeps.rows import mine_row
from sweeps.study import Study, StudyPaths
from sweeps.trainables import mine_trial
from sweeps.tune_run import run_grid


def run_mining(
    preset: Preset, study: str, paths: StudyPaths, code_version: str, weights: str | None = None
) -> list[dict[str, Any]]:
    """Run stage 1; returns one trials-table row per adapter (failed ones included)."""
    jobs = mining_jobs(preset)
    params = {
        "model": preset.model, "weights": weights, "random_init": preset.random_init,
        "scenes": preset.scenes["mine"], "views": preset.views, "size": preset.size,
        **dataclasses.asdict(preset.mining),
    }
    return run_grid(
        mine_trial, jobs, resources=preset.resources["mine"], params=params, study=study,
        paths=paths, experiment=f"{study}-mine", desc="mining",
        row=lambda job, m, err: mine_row(preset, study, code_version, job, m, err),
    )


def mine_bank(st: Study, handle: Any, *, always: bool = False) -> list[dict[str, Any]]:
    """Stage 1 for a driver's session: mine through the study's subspace actor (``handle``,
    which ``session`` created) unless it already holds the main bank, and write the mining
    rows into the trials table. ``always``: mine even then (finished adapters report at
    once), so the rows say what the study holds. Returns the rows (none when skipped)."""
    import ray

    if not always and ray.get(handle.has_bank.remote(st.preset.extraction.method)):
        return []
    rows = run_mining(st.preset, st.name, st.paths, st.version, st.weights)
    upsert_table(rows, st.paths.table("trials"), trials_schema)
    return rows
