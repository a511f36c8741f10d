"""Bounded logs: what a client or a remote peer sends can neither grow ``agent.log``/``audit.log`` without bound
nor forge a line in them.

Three pieces, used by the audit log and the daemon's logging:

* :func:`clip` caps one field's length (a 200 KB installation id from a remote peer becomes 256 characters and a
  note of how much was cut) and, for the text log, escapes control characters, so an executable path holding a
  newline stays on its own line (``\\x0a``); backslashes are escaped too, so an escape in a field is unambiguous.
* :class:`CappedFile` appends whole lines to a file of at most ``max_bytes``, rotating it to ``NAME.1`` ..
  ``NAME.<backups>`` (the oldest is dropped), so a home never holds more than ``max_bytes * (backups + 1)`` of
  each log. Opened with ``O_NOFOLLOW`` and mode 0600: a planted symlink is refused, not written through.
* :class:`LineFormatter` and :func:`configure_daemon_logging` give the daemon's log one escaped, capped line per
  record; traceback lines follow indented with ``"  | "``, so no continuation line can pass for a record.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["FIELD_CAP", "MESSAGE_CAP", "cap", "clip", "CappedFile", "CappedLogHandler", "LineFormatter",
           "configure_daemon_logging"]

#: Characters kept of one client- or peer-controlled field (an exe path, an installation id, an error detail).
FIELD_CAP = 256
#: Characters kept of one log record's message (after escaping).
MESSAGE_CAP = 2048
#: Characters kept of one record's traceback text.
_TRACEBACK_CAP = 16384

# C0 controls, DEL, the C1 NEL and the Unicode line/paragraph separators all end a line for some reader.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85]}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", ord("\\"): "\\\\"})


def cap(text: str, limit: int = FIELD_CAP) -> str:
    """``text`` cut to ``limit`` characters, with a note of how many were cut (JSON escapes the rest)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def clip(value: object, limit: int = FIELD_CAP) -> str:
    """``value`` as one escaped line of at most ``limit`` characters of content (plus a cut note)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    escaped = text[:limit].translate(_ESCAPES) if cut > 0 else text.translate(_ESCAPES)
    if len(escaped) > limit:  # escaping grew it: cap the escaped form too (never mid-escape matters little)
        cut += len(escaped) - limit
        escaped = escaped[:limit]
    return f"{escaped}...(+{cut} chars)" if cut > 0 else escaped


class CappedFile:
    """Appends lines to ``path``, rotating it before it would pass ``max_bytes``; thread-safe.

    With a ``follow_fd`` (another descriptor writing to the same file: the daemon's stderr, see
    :func:`configure_daemon_logging`) the size is taken from the open file (``fstat``) before each write, so those
    bytes count too; without one (the audit log, a line per request) this descriptor is the only writer and the
    size is counted as it writes, saving a system call per line. On rotation, ``follow_fd`` (if it pointed at
    the old file) is moved to the new one with ``dup2``.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int, follow_fd: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._follow_fd = follow_fd
        self._mu = threading.Lock()
        self._fd = self._open()
        self._size: int | None = None  # counted bytes (only without follow_fd); None: ask the file

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def write(self, data: bytes) -> None:
        """Append ``data`` (one or more whole lines); a line longer than the file cap is cut to fit."""
        if len(data) > self.max_bytes:
            data = data[: self.max_bytes - 1] + b"\n"
        with self._mu:
            if self._fd < 0:
                return
            size = self._size
            if size is None:
                size = os.fstat(self._fd).st_size
            if size and size + len(data) > self.max_bytes:
                self._rotate()
                size = 0
            self._size = None  # until this write is known to have happened whole
            written = os.write(self._fd, data)
            if self._follow_fd is None:
                self._size = size + written

    def _rotate(self) -> None:
        old = os.fstat(self._fd)
        if self.backups == 0:
            os.ftruncate(self._fd, 0)  # O_APPEND: the next write starts at the new end, 0
            return
        for i in range(self.backups - 1, 0, -1):
            try:
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        os.replace(self.path, f"{self.path}.1")
        fd = self._open()
        follow = self._follow_fd
        if follow is not None:
            try:
                st = os.fstat(follow)
                if (st.st_dev, st.st_ino) == (old.st_dev, old.st_ino):
                    os.dup2(fd, follow, inheritable=True)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        with self._mu:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class LineFormatter(logging.Formatter):
    """``TIME keyagent[PID] LEVEL LOGGER: MESSAGE``, the message escaped and capped; traceback lines indented."""

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in our own code must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = (f"{when},{int(record.msecs):03d} keyagent[{record.process}] {record.levelname} {record.name}: "
                f"{clip(message, MESSAGE_CAP)}")
        extra = ""
        if record.exc_info:
            extra = self.formatException(record.exc_info)
        if record.stack_info:
            extra += "\n" + record.stack_info
        if extra:
            line += "".join(f"\n  | {clip(part, MESSAGE_CAP)}" for part in extra[:_TRACEBACK_CAP].splitlines())
        return line


class CappedLogHandler(logging.Handler):
    """A logging handler writing each formatted record as one line to a :class:`CappedFile`."""

    def __init__(self, file: CappedFile) -> None:
        super().__init__()
        self.file = file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.file.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.file.close()
        super().close()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def configure_daemon_logging(log_path: Path, *, level: int, max_bytes: int, backups: int) -> None:
    """Route the daemon's logging: to the capped ``log_path`` when our stderr already is that file (``keyagent
    start`` in the background), else to stderr (foreground, systemd: the journal rotates it). Either way each
    record is one escaped line."""
    handler: logging.Handler
    if _same_file(2, log_path):
        handler = CappedLogHandler(CappedFile(log_path, max_bytes=max_bytes, backups=backups, follow_fd=2))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
