"""The one pinentry client (agent/pinentry.py) against real processes: a pinentry that never answers costs the
timeout, not forever."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.pinentry import PinentryError, getpin

HANGING = """#!{python}
import sys, time
sys.stdout.write("OK Pleased to meet you\\n"); sys.stdout.flush()
sys.stdin.readline()
time.sleep(30)
"""


def test_a_pinentry_that_never_answers_times_out(tmp_path: Path) -> None:
    prog = tmp_path / "pinentry-hang"
    prog.write_text(HANGING.format(python=sys.executable))
    prog.chmod(0o700)
    started = time.monotonic()
    with pytest.raises(PinentryError, match="timed out"):
        getpin(str(prog), description="d", prompt="PIN:", timeout=0.5)
    assert time.monotonic() - started < 10  # the 0.5 s deadline plus closing the process, never the 30 s sleep
