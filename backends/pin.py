"""Where PINs and passphrases come from, and how long the agent may keep one.

Sources are callables ``(what: str) -> str | None`` (:data:`backends.base.SecretSource`): the environment
(``KEYAGENT_PIN`` / ``KEYAGENT_PASSPHRASE``), a file (``--pin-file`` / ``--passphrase-file``), pinentry over the
Assuan protocol when a display or terminal exists, or the OS keyring when the user opted in. ``keyagent
unlock`` does not need a source: the daemon passes the PIN it received straight to ``Backend.unlock``.

A source is asked at most once per operation and the answer is never retried (a wrong PIN burns a token try).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from backends.base import SecretSource
from backends.errors import BackendConfigError, KeyringUnavailable

__all__ = [
    "PinCache",
    "env_source",
    "file_source",
    "chain_sources",
    "pinentry_available",
    "pinentry_source",
    "assuan_getpin",
    "keyring_source",
    "read_secret_file",
]

_MAX_SECRET = 1024


class PinCache:
    """One PIN, bound to the serial of the token it unlocked, forgotten after ``ttl`` seconds (monotonic clock).

    ``ttl <= 0`` keeps nothing. Binding to the serial enforces "never try one PIN on two tokens".
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._pin: str | None = None
        self._serial: str | None = None
        self._expires = 0.0

    def put(self, serial: str, pin: str) -> None:
        if self._ttl <= 0:
            self.clear()
            return
        self._pin, self._serial, self._expires = pin, serial, self._clock() + self._ttl

    def get(self, serial: str) -> str | None:
        if self._pin is None:
            return None
        if self._clock() >= self._expires:
            self.clear()
            return None
        return self._pin if serial == self._serial else None

    def clear(self) -> None:
        self._pin, self._serial, self._expires = None, None, 0.0


def read_secret_file(path: str) -> str:
    """A PIN/passphrase file: UTF-8, one trailing newline stripped; refuses group/world-readable files."""
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise BackendConfigError(f"{path} is readable by others; chmod 600 it")
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_SECRET + 1)
    except OSError as exc:
        raise BackendConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if len(raw) > _MAX_SECRET:
        raise BackendConfigError(f"secret file {path} is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BackendConfigError(f"secret file {path} is not UTF-8") from exc
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise BackendConfigError(f"secret file {path} is empty")
    return text


def env_source(var: str) -> SecretSource:
    """Read the secret from environment variable ``var`` (automation: ``KEYAGENT_PIN``, ``KEYAGENT_PASSPHRASE``)."""

    def source(what: str) -> str | None:
        return os.environ.get(var) or None

    return source


def file_source(path: str) -> SecretSource:
    """Read the secret from a 0600 file each time it is needed (so a rotated file is picked up)."""

    def source(what: str) -> str | None:
        return read_secret_file(path)

    return source


def chain_sources(*sources: SecretSource | None) -> SecretSource:
    """The first source that has an answer; each is asked once."""

    def source(what: str) -> str | None:
        for src in sources:
            if src is not None:
                got = src(what)
                if got is not None:
                    return got
        return None

    return source


def pinentry_available(program: str = "pinentry") -> bool:
    """pinentry makes sense only with a display or a terminal to draw on (and the program installed)."""
    from shutil import which

    if which(program) is None:
        return False
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("GPG_TTY")
                or sys.stdin.isatty())


def _assuan_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _assuan_unescape(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data):
            try:
                out.append(int(data[i + 1:i + 3], 16))
            except ValueError as exc:
                raise ValueError("bad Assuan escape") from exc
            i += 3
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def assuan_getpin(program: str, description: str, prompt: str = "PIN:", timeout: float = 120.0) -> str | None:
    """Ask ``program`` (a pinentry) for a secret over Assuan; None when the user cancels.

    Protocol: greeting ``OK``, then ``SETDESC``/``SETPROMPT``/``GETPIN``; the PIN comes back as ``D`` lines
    (percent-escaped) followed by ``OK``; ``ERR`` means cancelled or failed.
    """
    env = dict(os.environ)
    args = [program]
    tty = os.environ.get("GPG_TTY")
    if tty is None and sys.stdin.isatty():
        tty = os.ttyname(sys.stdin.fileno())
    if tty:
        args += ["--ttyname", tty]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env)
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout

    def read_reply() -> tuple[bool, bytes]:
        data = b""
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("pinentry timed out")
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise EOFError("pinentry closed the connection")
            line = line.rstrip(b"\r\n")
            if line.startswith(b"D "):
                data += _assuan_unescape(line[2:])
            elif line == b"OK" or line.startswith(b"OK "):
                return True, data
            elif line.startswith(b"ERR"):
                return False, b""
            # status (S), comments (#) and inquiries are ignored

    def command(cmd: str) -> tuple[bool, bytes]:
        proc.stdin.write(cmd.encode("utf-8") + b"\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return read_reply()

    try:
        ok, _ = read_reply()
        if not ok:
            return None
        command(f"SETDESC {_assuan_escape(description)}")
        command(f"SETPROMPT {_assuan_escape(prompt)}")
        ok, pin = command("GETPIN")
        try:
            command("BYE")
        except (EOFError, BrokenPipeError):
            pass
        if not ok:
            return None
        return pin.decode("utf-8")
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def pinentry_source(program: str = "pinentry") -> SecretSource:
    """Ask through pinentry; the description names the token (label and serial) so the user sees which."""

    def source(what: str) -> str | None:
        return assuan_getpin(program, f"keyagent needs the {what}", "PIN:")

    return source


def keyring_source(service: str, username: str, backend: str | None = None) -> SecretSource:
    """Read a PIN the user chose to keep in the OS keyring (opt-in only)."""

    def source(what: str) -> str | None:
        from backends.software import keyring_load

        kr = keyring_load(backend)
        try:
            got = kr.get_password(service, username)
        except Exception as exc:
            raise KeyringUnavailable(f"the keyring refused to give the PIN: {type(exc).__name__}") from exc
        return got if isinstance(got, str) and got else None

    return source
