"""The README's first command: ``keyagent demo`` really runs the main job, on a token and on the software backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.softhsm import SOFTHSM_MODULE


@pytest.mark.parametrize("backend", ["token", "software"])
def test_demo_runs_end_to_end(backend: str) -> None:
    if backend == "token":
        assert os.path.exists(SOFTHSM_MODULE), "SoftHSM2 must be installed by .ci/setup"
    args = [sys.executable, "-m", "agent", "demo"] + (["--software"] if backend == "software" else [])
    cp = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "Bob reads:  Hello Bob, this is Alice's notes app" in out
    assert "app #2 reads: Hi Alice! Got it, answering your chat app" in out
    assert "Bob reads:  Second message, sent by app #2" in out
    if backend == "token":
        assert "never extractable" in out and "backend: pkcs11" in out
    else:
        assert "backend: software" in out
    leftover = [line for line in out.splitlines() if line.startswith("kept:")]
    assert not leftover
