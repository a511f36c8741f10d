"""The one pinentry client: just enough of the Assuan protocol to ask a person for one secret.

Used by phrase import (agent/identity/phrase_input.py) and by the PIN and passphrase prompts (backends/pin.py).
Protocol: the greeting ``OK``, then ``SETDESC``/``SETPROMPT``/``GETPIN``; the secret comes back as ``D`` lines
(percent-escaped) followed by ``OK``; ``ERR`` on GETPIN means the person cancelled. Status (``S``) and comment
(``#``) lines are skipped.

The answer is percent-decoded straight into a ``bytearray`` the caller zeroes, and the response buffer is zeroed
after every response, so no ``str`` or ``bytes`` copy of the secret is left behind here. Every read waits at most
until one deadline for the whole exchange: a pinentry that hangs (no display, a dead terminal) costs the caller
``timeout`` seconds, never forever.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

__all__ = ["PinentryError", "getpin", "DEFAULT_TIMEOUT"]

#: Seconds a person gets to answer (pinentry's own default timeout is off).
DEFAULT_TIMEOUT = 120.0
_MAX_RESPONSE = 16 * 1024


class PinentryError(RuntimeError):
    """pinentry could not be started or broke off (not a cancel): fix or replace the pinentry program."""


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _hexval(c: int) -> int:
    """Value of one ASCII hex digit, -1 if it is not one (no temporary bytes objects)."""
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x41 <= c <= 0x46 or 0x61 <= c <= 0x66:
        return (c | 0x20) - 0x61 + 10
    return -1


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


class _Session:
    """One pinentry process and its Assuan conversation."""

    def __init__(self, program: str, ttyname: str | None, timeout: float) -> None:
        argv = [program] + (["--ttyname", ttyname] if ttyname else [])
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
            )
        except OSError as exc:
            raise PinentryError(f"cannot start pinentry ({program}): {exc.strerror}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.fd = self.proc.stdout.fileno()
        self.buf = bytearray(_MAX_RESPONSE)
        self.deadline = time.monotonic() + timeout
        self.hung = False

    def _wait_readable(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            self.hung = True
            raise PinentryError("pinentry timed out")

    def response(self) -> tuple[int, bool]:
        """Read until a line starting OK or ERR ends the response; return (bytes in self.buf, ok)."""
        n = 0
        view = memoryview(self.buf)
        try:
            while True:
                if n == len(self.buf):
                    raise PinentryError("pinentry response is too long")
                self._wait_readable()
                got = os.readv(self.fd, [view[n:]])
                if got == 0:
                    raise PinentryError("pinentry exited without an answer")
                n += got
                if self.buf[n - 1] != 0x0A:
                    continue
                last = self.buf.rfind(b"\n", 0, n - 1) + 1
                if self.buf.startswith(b"OK", last):
                    return n, True
                if self.buf.startswith(b"ERR", last):
                    return n, False
        finally:
            view.release()

    def command(self, line: str) -> bool:
        self.stdin.write(line.encode("utf-8") + b"\n")
        n, ok = self.response()
        _zero(self.buf)
        return ok

    def getpin(self) -> bytearray | None:
        """Send GETPIN and percent-decode the ``D`` lines straight into a new bytearray; None when cancelled."""
        self.stdin.write(b"GETPIN\n")
        n, ok = self.response()
        try:
            if not ok:
                return None
            out = bytearray()
            pos = 0
            while pos < n:
                end = self.buf.find(b"\n", pos, n)
                end = n if end < 0 else end
                if self.buf.startswith(b"D ", pos, end):
                    i = pos + 2
                    while i < end:
                        c = self.buf[i]
                        if c == 0x25:  # %XX escape (Assuan escapes %, CR and LF)
                            hi = _hexval(self.buf[i + 1]) if i + 1 < end else -1
                            lo = _hexval(self.buf[i + 2]) if i + 2 < end else -1
                            if hi < 0 or lo < 0:
                                _zero(out)
                                raise PinentryError("pinentry sent a malformed escape")
                            out.append(hi * 16 + lo)
                            i += 3
                        else:
                            out.append(c)
                            i += 1
                pos = end + 1
            return out
        finally:
            _zero(self.buf)

    def close(self) -> None:
        if self.hung:  # it did not answer within the deadline: it will not answer BYE either
            self.proc.kill()
        try:
            self.stdin.write(b"BYE\n")
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def getpin(program: str, *, description: str, prompt: str, title: str | None = None, ttyname: str | None = None,
           ttytype: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> bytearray | None:
    """Ask ``program`` (a pinentry) for one secret; the raw UTF-8 bytes (the caller zeroes them), None if cancelled.

    ``ttyname``/``ttytype``: the terminal a curses pinentry draws on. Raises :class:`PinentryError` when pinentry
    cannot be started, does not greet, breaks the protocol, exits early or does not answer within ``timeout``.
    """
    session = _Session(program, ttyname, timeout)
    try:
        _, ok = session.response()
        _zero(session.buf)
        if not ok:
            raise PinentryError("pinentry did not greet with OK")
        if ttytype:
            session.command(f"OPTION ttytype={ttytype}")  # pinentry-curses needs it; an ERR here is harmless
        if title:
            session.command("SETTITLE " + _escape(title))
        session.command("SETDESC " + _escape(description))
        session.command("SETPROMPT " + _escape(prompt))
        return session.getpin()
    except BrokenPipeError:
        raise PinentryError("pinentry exited early") from None
    finally:
        session.close()
