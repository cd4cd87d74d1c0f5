"""Stage 1: the mining sweep. Ray Tune fans attrsub.subspace.mine.mine_adapter out over factors x
groups x adapter seeds; each finished adapter is handed to the study's subspace actor.

    python sweeps/mine.py --preset quick --study NAME    # stage 1 alone, then the bank

``sweeps/ablation.py`` runs this as its first stage; run alone, it mines, writes the
mining rows of ``trials.parquet`` and the persisted bank, and a later
``sweeps/ablation.py --study NAME --resume`` skips straight to stage 2.

A trial reports with ``ray.tune.report`` every ``report_every`` steps, attaching the
training checkpoint, so a retried trial resumes where it stopped; an adapter that already
exists is reported at once and never retrained (a resumed study skips finished work).
"""

from __future__ import annotations

import argparse
import sys

from sweeps.mining import mine_bank
from sweeps.session import drive, session
from sweeps.study import open_study, study_parser


def main(argv: list[str] | None = None) -> int:
    args = study_parser("mine", __doc__).parse_args(argv)
    return drive("mine", lambda: _mine(args), argv)


def _mine(args: argparse.Namespace) -> int:
    import ray

    st = open_study(args)
    p = st.preset
    with session(st, args.num_cpus) as handle:
        rows = mine_bank(st, handle, always=True)
        missing = ray.get(handle.missing.remote())
        bank = None if missing else ray.get(handle.bank_path.remote(p.extraction.method))
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    print(f"mined {len(rows) - len(failed)}/{len(rows)} adapters; trials: "
          f"{st.paths.table('trials')}")
    print(f"bank: {bank}" if bank else f"no bank: adapters missing {missing}; failed: {failed}")
    return 0 if bank else 1


if __name__ == "__main__":
    sys.exit(main())
