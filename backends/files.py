"""The small files a home holds (config.json, PIN files, anchors): read without trusting their size, written
atomically.

A file the agent reads whole is read at most ``limit + 1`` bytes, so a huge or endless file (``/dev/zero`` named
as a PIN file, a corrupted config) costs a bounded read and a clear error instead of the agent's memory.
"""

from __future__ import annotations

import os
import secrets

from agent.home_trust import open_nofollow

__all__ = ["FileTooLarge", "read_capped", "write_atomic"]


class FileTooLarge(ValueError):
    """The file holds more than its limit: it is not the file the agent expects (point at the right one)."""


def read_capped(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole file if it holds at most ``limit`` bytes; FileTooLarge otherwise, OSError as open/read raise it.

    Opened with O_NOFOLLOW: these files are trusted, so a symlink in their place is refused (UnsafeHome)."""
    with open(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise FileTooLarge(f"{os.fspath(path)} is larger than {limit} bytes")
    return raw


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600: temp file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
