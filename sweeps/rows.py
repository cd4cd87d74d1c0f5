"""The trials-table rows the stages write (results/README.md), one builder per kind of trial.

A row is built from a job and what its trial last reported, for a finished trial as for a
failed one (``error``), so every job the driver started has a row.
"""

from __future__ import annotations

from typing import Any

from results.schema import TRIAL_COLUMNS
from sweeps.config import Preset
from sweeps.job import Job, mining_trial_id

# Keys Tune adds to every result, and the trainables' bookkeeping: never trials columns.
TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id",
             "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
             "time_since_restore", "iterations_since_restore", "config", "status", "error",
             "trial_wall_s", "experiment_tag", "step", "loss"}
# What a search trial measured besides its metrics (which are numbers outside TRIAL_COLUMNS).
_MEASURED = {"steps", "trainable_params", "final_loss", "main", "base_hash", "total_rank",
             "resumed_step"}
_NO_REPORT = "trial ended without its final report"


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def trial_row(preset: Preset, study: str, version: str, stage: str, job: Job,
              metrics: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
    """The trials-table row of one fine-tuning trial, failed or not.

    ``stage`` "finetune" (the ablation's grid): a trial without its final report failed,
    and the row keeps everything it reported. ``stage`` "search" (a search, the
    learning-rate tuning): such a trial was stopped by ASHA (``steps``: the last step it
    reported), and the row keeps only what it measured, so a stopped trial's training loss
    never becomes a column.
    """
    m = dict(metrics or {})
    if stage == "finetune":
        status = m.get("status") if error is None else "failed"
        message = m.get("error") or (_message(error) if error is not None else None)
        if status is None:
            status, message = "failed", message or _NO_REPORT
    elif error is not None:
        status, message = "failed", _message(error)
    elif m.get("status") in ("ok", "failed"):
        status, message = m["status"], m.get("error")
    else:
        status, message = "stopped", None
    row: dict[str, Any] = {
        "trial_id": job.trial_id, "study": study, "stage": stage, "axis": job.axis,
        "task": job.task, "method": job.method, "factors": "+".join(job.factors),
        "rank": job.rank, "ortho": job.ortho, "extraction": job.extraction,
        "seed": job.seed, "lr": job.lr, "wall_s": m.get("trial_wall_s"),
        "base": preset.model, "code_version": version,
        **{f"rank_{a}": r for a, r in job.factor_ranks.items()},
    }
    for k, v in m.items():  # what the trial measured; Tune's own keys (its trial_id) stay out
        if k in TUNE_KEYS:
            continue
        if stage == "finetune" or k in _MEASURED or (
                k not in TRIAL_COLUMNS and isinstance(v, (int, float))
                and not isinstance(v, bool)):
            row[k] = v
    row.update(status=status, error=message or None, steps=m.get("steps", m.get("step")))
    return row


def mine_row(preset: Preset, study: str, version: str, job: dict[str, Any],
             metrics: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
    """The trials-table row of one mining trial, failed or not."""
    m = metrics or {}
    ok = error is None and m.get("done") is True
    return {
        "trial_id": mining_trial_id(job), "study": study, "stage": "mine", "axis": "mine",
        "method": "lora", "factors": job["factor"], "group": job["group"],
        "rank": preset.mining.rank, "seed": job["seed"], "lr": preset.mining.lr,
        "steps": m.get("step"), "final_loss": m.get("final_loss"),
        "wall_s": m.get("trial_wall_s"), "status": "ok" if ok else "failed",
        "error": None if ok else _message(error) if error is not None else _NO_REPORT,
        "base": preset.model, "base_hash": m.get("base_hash"),
        "resumed_step": m.get("resumed_step"), "lora_a_change": m.get("lora_a_change"),
        "update_norm": m.get("update_norm"), "code_version": version,
    }
