"""The study report: ``report.md`` plus PNG figures, written into a study folder.

``python -m results.report STUDY_DIR`` (``cli``) or ``write_report(study_dir)`` from a driver.
The package follows the report's own flow, one step per module:

- ``load``: the study's tables, with every missing table or column noted;
- ``names``: how metrics, methods, factors, layers and configurations are named and ordered;
- ``stats``: means and CIs over seeds, paired changes, ablation tables, the Pareto front;
- ``figures``: the eight figures;
- ``sections``: the Markdown sections and the paper's own tables;
- ``document``: the sections and figures put together and written.
"""

from results.report.cli import main
from results.report.document import REPORT_NAME, build_report, write_report
from results.report.figures import FIGURES
from results.report.load import StudyData, load_study
from results.report.stats import pareto_front

__all__ = [
    "FIGURES",
    "REPORT_NAME",
    "StudyData",
    "build_report",
    "load_study",
    "main",
    "pareto_front",
    "write_report",
]
