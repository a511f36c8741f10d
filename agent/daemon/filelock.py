"""An exclusive ``flock`` on a lock file, held for as long as the daemon runs.

Not :mod:`agent.daemon.lock` (the agent lock a user sets on a running agent): this is the file lock that keeps
two agents from claiming one socket at once. ``flock`` locks die with the process (also on a crash), so a stale
lock file is harmless; the file itself is never removed (removing it would let a second agent lock a new inode
while the first still holds the old one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["LockHeld", "FileLock"]


class LockHeld(RuntimeError):
    """Another process holds the lock: another agent is starting or running (do not start a second one)."""


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (created 0600); :meth:`release` drops it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> FileLock:
        """Take the lock now or raise LockHeld; never waits (a second agent must fail, not queue)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(f"another process holds {path}") from exc
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (closing the descriptor is what releases a ``flock``)."""
        os.close(self._fd)
