"""An exclusive ``flock`` on a lock file, held for as long as the daemon runs.

Not :mod:`agent.daemon.lock` (the agent lock a user sets on a running agent): this is the file lock that keeps
two agents from claiming one socket at once. ``flock`` locks die with the process (also on a crash), so a stale
lock file is harmless. A clean release removes the file (no ``.sock.lock`` left behind) while still holding the
lock; to keep that safe, :meth:`FileLock.acquire` checks after locking that the path still names the inode it
locked and starts again if not (else a second agent could lock a fresh file while the first holds the old one).
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
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = os.fstat(fd)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockHeld(f"another process holds {path}") from exc
                raise
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return cls(path, fd)
            os.close(fd)  # the holder removed this file as it released it: lock the one the path names now
        raise LockHeld(f"{path} keeps being replaced")

    def release(self) -> None:
        """Remove the file while still holding the lock, then drop the lock (closing the descriptor does)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
