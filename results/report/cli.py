"""The study report: ``report.md`` plus PNG figures, written into a study folder.

``python -m results.report STUDY_DIR`` (or ``write_report(study_dir)`` from a driver) reads the
study's Parquet tables (``trials``, ``overlaps``, ``spectra``, ``evidence``; ``pareto`` and
``study.json`` when present) and writes what a researcher reads instead of raw Parquet: the
method x task tables, a verdict on each of the paper's four claims (``results.claims``) and
the seed-paired differences behind them, the paper's layout beside the paper's own figures,
task error versus basis rank and
versus trainable parameters, the reduced method's ablations (factor subsets,
orthogonalisation, extraction), the disentanglement of the factor subspaces against random
subspaces, and their singular spectra. An interrupted study still gets a report: every table,
column and figure that is missing is named in the report instead of failing it.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display,
no global state), so the report is safe to build inside a Ray driver or a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attrsub.cli import RATE, OneLineParser
from results.report.document import write_report
from results.report.load import load_study


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with one error line for a folder that is not a study or a damaged table:
    a report that said only "missing" there would hide the real fault."""
    parser = OneLineParser(prog="python -m results.report", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", help="a study folder (holding trials.parquet, ...)")
    parser.add_argument("--preset", help="the preset the study ran (overrides study.json)")
    parser.add_argument("--wall-s", type=RATE, help="the study's end-to-end wall time, s")
    args = parser.parse_args(argv)
    if not Path(args.study_dir).is_dir():
        print(f"{parser.prog}: error: {args.study_dir!r} is not a folder", file=sys.stderr)
        return 2
    if not any((Path(args.study_dir) / f).is_file() for f in ("trials.parquet", "study.json")):
        print(f"{parser.prog}: error: {args.study_dir!r} holds neither trials.parquet nor "
              f"study.json, so it is not a study folder (that is <storage>/<study>)",
              file=sys.stderr)
        return 2
    # a study still running may lack tables (the report says so); a damaged one is an error
    damaged = [m for m in load_study(args.study_dir).missing if "unreadable" in m]
    if damaged:
        said = " ".join("; ".join(damaged).replace("`", "").split())  # one line
        print(f"{parser.prog}: error: {said}", file=sys.stderr)
        return 2
    path = write_report(args.study_dir, preset=args.preset, wall_s=args.wall_s)
    print(f"report: {path}")
    return 0
