"""``python -m results.report STUDY_DIR``: write a study's report (``results.report.cli``)."""

import sys

from results.report.cli import main

sys.exit(main())
