"""agent/daemon/filelock.py: one holder at a time, never waiting, free again once released."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.daemon.filelock import FileLock, LockHeld


def test_second_taker_is_refused_until_release(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock.lock"
    first = FileLock.acquire(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(LockHeld) as held:
        FileLock.acquire(path)  # flock conflicts between two open file descriptions, even in one process
    assert str(path) in str(held.value)
    first.release()
    second = FileLock.acquire(path)
    second.release()
    assert path.exists()  # the lock file stays: removing it would let a second agent lock a new inode
