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
    assert not path.exists()  # a clean release leaves no .sock.lock behind (issue 19)


def test_a_taker_that_opened_the_removed_file_locks_the_current_one(tmp_path: Path) -> None:
    """The race removal opens: B opened the old file before A released (and removed) it. B must not end up holding
    the removed inode while C holds the new file."""
    import fcntl

    path = tmp_path / "agent.sock.lock"
    a = FileLock.acquire(path)
    stale_fd = os.open(path, os.O_RDWR)  # B's open, before A releases
    a.release()
    c = FileLock.acquire(path)  # C creates and locks the new file
    fcntl.flock(stale_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # B's flock on the old inode succeeds...
    os.close(stale_fd)
    with pytest.raises(LockHeld):  # ...but acquire re-checks the path and meets C's lock
        FileLock.acquire(path)
    c.release()
