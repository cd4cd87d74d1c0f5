"""Put the repo root on sys.path so tests import ``sweeps`` and ``results`` (not packaged)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
