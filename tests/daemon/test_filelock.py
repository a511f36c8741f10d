"""agent/daemon/filelock.py: one holder at a time, never waiting, free again once released."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Callable

import pytest

from agent.daemon import filelock
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


class _Interleave:
    """``fcntl`` as agent.daemon.filelock sees it, running ``before`` once between acquire's open and its flock:
    the window in which another agent can release (and remove) the file the taker just opened. The locks are real
    flocks on real files; only the order of events is forced."""

    LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

    def __init__(self, before: Callable[[], None]) -> None:
        self._before: Callable[[], None] | None = before

    def flock(self, fd: int, op: int) -> None:
        if self._before is not None:
            run, self._before = self._before, None
            run()
        fcntl.flock(fd, op)


def test_a_taker_that_opened_the_removed_file_does_not_hold_a_lock_beside_the_new_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B opens the lock file; A releases (removes it); C takes the new file; B's flock then succeeds on the removed
    inode. Without acquire's re-check B would return holding a lock nobody else can see: two agents on one
    socket. With it, B looks again, meets C's lock and is refused."""
    path = tmp_path / "agent.sock.lock"
    a = FileLock.acquire(path)
    holders: list[FileLock] = []

    def a_releases_and_c_takes() -> None:
        a.release()
        holders.append(FileLock.acquire(path))  # C (the real fcntl: the patch is only on B's call)

    monkeypatch.setattr(filelock, "fcntl", _Interleave(a_releases_and_c_takes))
    with pytest.raises(LockHeld):
        FileLock.acquire(path)  # B
    monkeypatch.undo()
    assert len(holders) == 1 and path.exists()
    with pytest.raises(LockHeld):  # C still holds the file the path names
        FileLock.acquire(path)
    holders[0].release()


def test_a_taker_that_opened_the_removed_file_locks_the_new_one_when_free(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same window with no C: B must end up holding the file the path names (not the removed inode), so a
    later taker is refused."""
    path = tmp_path / "agent.sock.lock"
    a = FileLock.acquire(path)
    monkeypatch.setattr(filelock, "fcntl", _Interleave(a.release))
    b = FileLock.acquire(path)
    monkeypatch.undo()
    assert path.exists() and os.stat(path).st_ino == os.fstat(b._fd).st_ino
    with pytest.raises(LockHeld):
        FileLock.acquire(path)
    b.release()
