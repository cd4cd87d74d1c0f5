"""Put the repo root on sys.path so tests import ``sweeps`` and ``results`` (not packaged),
and make every Ray the tests start a secured one: token authentication on, with a token of
this test session (so no test touches ~/.ray), and servers on the loopback interface only."""

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # = sweeps.runtime.LOCAL_ONLY_ENV


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Single-threaded torch for a module: with the cores shared, OpenMP threads spin-wait
    (up to 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
