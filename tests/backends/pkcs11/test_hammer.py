"""Several threads hammer one PKCS#11 backend (sign, dh, list, SPK create/destroy) on real SoftHSM2.

Without the backend's single owner thread, python-pkcs11 + SoftHSM crash (SIGSEGV, heap corruption) or livelock
when two threads call the token at once (probe §8). The hammer runs in a subprocess with a timeout, so a crash
or a hang fails this test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.softhsm import SoftHSMToken

THREADS, OPS = 6, 30
ROOT = str(Path(__file__).resolve().parents[3])


@pytest.mark.parametrize("locking,workers", [("0", "1"), ("1", "3")])
def test_threads_hammer_one_backend(softhsm_token: SoftHSMToken, locking: str, workers: str) -> None:
    home = tempfile.mkdtemp(dir=softhsm_token.dir)
    res = subprocess.run(
        [sys.executable, "-m", "tests.backends.pkcs11.hammer", softhsm_token.module, softhsm_token.label,
         softhsm_token.pin, home, str(THREADS), str(OPS), locking, workers],
        env=softhsm_token.env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["spks_left"] == [1]
    assert sum(out["counts"].values()) == THREADS * OPS
    assert all(n > 0 for n in out["counts"].values())
