"""The study, end to end: mine adapters (stage 1), then the ablation trials (stage 2).

    python sweeps/ablation.py                      # the quick preset on a local Ray
    python sweeps/ablation.py --preset smoke --storage /tmp/s
    ray job submit --working-dir . -- python sweeps/ablation.py --preset paper --storage s3://b/p

Stage 1 is skipped when the study's bank already exists. Stage 2 runs every method x task x
seed, plus the reduced method's ablation axes (ranks, factor subsets, orthogonalisation,
extraction), each one attrsub.methods.finetune call in its own Tune trial; the reduced
trials get their bank from the study's shared subspace actor. Failed trials are recorded
with their error, never dropped. Tables land in ``<storage>/<study>/`` (results/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any

from results.schema import (
    EVIDENCE_SCHEMA,
    OVERLAPS_SCHEMA,
    SPECTRA_SCHEMA,
    read_record,
    read_table,
    trials_schema,
    upsert_table,
    write_record,
    write_table,
)
from sweeps.finetune import finetune_jobs, run_finetune, with_lrs
from sweeps.lr_tuning import tune_lrs
from sweeps.mining import mine_bank
from sweeps.session import drive, session
from sweeps.study import ensure_task_data, open_study, publish_report, study_parser


def summary(rows: list[dict[str, Any]]) -> str:
    """Per task: method -> main metric (mean ± 95% CI over seeds), trainable parameters,
    learning rate (tuned, with lr_search), wall time; then the reduced method's ablation
    axes, one line per variant; then the main-axis methods' differences paired on the seed
    (results.claims.paired_differences), which separate methods the seed spread hides.
    Learning-rate search trials (stage search) are not listed."""
    import pandas as pd

    from attrsub.methods import METHODS
    from attrsub.tasks import get_task
    from results.claims import PAIR_NEEDED, fmt_difference, mean_ci, paired_differences

    ok = [r for r in rows if r["stage"] == "finetune" and r["status"] == "ok"]
    frame = pd.DataFrame(rows)
    pairable = all(c in frame.columns for c in PAIR_NEEDED)
    lines: list[str] = []
    for task in sorted({r["task"] for r in ok}):
        t = get_task(task)
        better = "lower" if t.lower_is_better else "higher"
        lines += [f"\n{task}: main = {t.main_metric} ({better} is better), mean ± 95% CI "
                  f"over seeds",
                  f"  {'method':<34}{'main':>9} {'± CI':<8}{'n':>3}{'trainable':>11}"
                  f"{'lr':>10}{'wall_s':>8}"]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in ok:
            if r["task"] == task:
                label = r["method"] if r["axis"] == "main" else (
                    f"reduced {r['axis']}=" + {
                        "ranks": str(r["rank"]), "subsets": r["factors"],
                        "ortho": str(r["ortho"]), "extraction": str(r["extraction"]),
                    }[r["axis"]])
                groups.setdefault(label, []).append(r)
        order = {m: i for i, m in enumerate(METHODS)}
        for label, rs in sorted(groups.items(),
                                key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            mean, ci, _ = mean_ci([r["main"] for r in rs if r.get("main") is not None])
            wall = statistics.fmean(r["wall_s"] or 0.0 for r in rs)
            lr = f"{rs[0]['lr']:.3g}" if rs[0].get("lr") is not None else "-"
            lines.append(f"  {label:<34}{mean:>9.4f} {ci:<8.4f}{len(rs):>3}"
                         f"{rs[0].get('trainable_params') or 0:>11}{lr:>10}{wall:>8.1f}")
        pairs = paired_differences(frame, task) if pairable else pd.DataFrame()
        if len(pairs):
            lines.append("  paired on seeds, a - b (mean ± 95% CI):")
        for _, p in pairs.iterrows():
            n = int(p["n"])
            lines.append(f"  {p['a'] + ' - ' + p['b']:<17}{fmt_difference(p['mean'], p['ci'])} "
                         f"(n {n}, better on {int(p['wins'])}/{n})")
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    if failed:
        lines.append(f"\n{len(failed)} trial(s) not ok: {', '.join(failed[:10])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything, then stage 1 (unless its bank exists), stage 2, the tables."""
    import ray

    t0 = time.perf_counter()

    st = open_study(args)
    preset, study, paths, version, weights = st.preset, st.name, st.paths, st.version, st.weights
    for task in preset.downstream.tasks:  # data a task cannot make (real captures), or stop
        ensure_task_data(task, paths.cache, paths.real_data)
    trials_path = paths.table("trials")
    jobs = finetune_jobs(preset)
    with session(st, args.num_cpus) as handle:
        main_ext = preset.extraction.method
        mine_bank(st, handle)
        tuned = {}
        if preset.downstream.lr_search is not None:  # each method at its best rate, same budget
            tuned = tune_lrs(preset, study, paths, version, weights)
            jobs = with_lrs(jobs, tuned)
        done = {r["trial_id"] for r in read_table(trials_path) if r["status"] == "ok"}
        todo = [j for j in jobs if j.trial_id not in done]
        missing = ray.get(handle.missing.remote())
        if missing:
            print(f"ablation: mining incomplete ({missing}); reduced trials will fail",
                  file=sys.stderr)
        else:
            ray.get(handle.bank_path.remote(main_ext))
        upsert_table(run_finetune(preset, study, paths, version, todo, weights), trials_path,
                     trials_schema)
        analysis: dict[str, list[dict[str, Any]]] = {"overlaps": [], "spectra": [],
                                                     "evidence": []}
        if not missing:
            for ext in dict.fromkeys([main_ext, *preset.ablation.extraction]):
                rows = ray.get(handle.analysis.remote(ext, study, version, preset.adapter_seeds[0]))
                for name, table in analysis.items():
                    table += rows[name]
        for name, schema in (("overlaps", OVERLAPS_SCHEMA), ("spectra", SPECTRA_SCHEMA),
                             ("evidence", EVIDENCE_SCHEMA)):
            write_table(analysis[name], schema, paths.table(name))
        actor_stats = ray.get(handle.stats.remote())
    wall = time.perf_counter() - t0
    write_record(st.record, {
        **(read_record(st.record) or {}),
        "study": study, "preset": preset.name, "seeds": list(preset.downstream.seeds),
        "adapter_seeds": list(preset.adapter_seeds), "wall_s": wall,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "storage": paths.storage, "command": " ".join(sys.argv), "code_version": version,
        "tuned_lr": {f"{t}/{m}": lr for (t, m), lr in sorted(tuned.items())},
    })
    report = publish_report(paths, preset.name, wall)
    return {
        "study": study,
        "tables": {n: paths.table(n) for n in ("trials", "overlaps", "spectra", "evidence")},
        "rows": read_table(trials_path), "actor": actor_stats, "wall_s": wall, "report": report,
        "tuned_lr": tuned,
    }


def main(argv: list[str] | None = None) -> int:
    args = study_parser("ablation", __doc__).parse_args(argv)
    return drive("ablation", lambda: _report(run(args)), argv)


def _report(out: dict[str, Any]) -> int:
    """What a finished study prints: the summary, the actor's counters, where things are."""
    print(summary(out["rows"]))
    print(f"\nstudy {out['study']}: {len(out['rows'])} trials in {out['wall_s']:.1f} s")
    print(f"subspace actor: {json.dumps(out['actor'], sort_keys=True)}")
    for name, path in out["tables"].items():
        print(f"{name}: {path}")
    print(f"report: {out['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
