"""Where PINs and passphrases come from, and how long the agent may keep one.

Sources are callables ``(what: str) -> str | None`` (:data:`backends.base.SecretSource`): the environment
(``KEYAGENT_PIN`` / ``KEYAGENT_PASSPHRASE``), a file (``--pin-file`` / ``--passphrase-file``), or the OS keyring
when the user opted in; the CLI asks pinentry (:func:`ask_pinentry`) when a display or terminal exists. ``keyagent
unlock`` does not need a source: the daemon passes the PIN it received straight to ``Backend.unlock``.

A source is asked at most once per operation and the answer is never retried (a wrong PIN burns a token try).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from agent.pinentry import DEFAULT_TIMEOUT, PinentryError, getpin
from backends.base import SecretSource
from backends.errors import BackendConfigError, KeyringUnavailable
from backends.files import FileTooLarge, read_capped

__all__ = [
    "PinCache",
    "env_source",
    "file_source",
    "chain_sources",
    "pinentry_available",
    "ask_pinentry",
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
        raw = read_capped(path, _MAX_SECRET)
    except OSError as exc:
        raise BackendConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc
    except FileTooLarge as exc:
        raise BackendConfigError(f"secret file {path} is too large") from exc
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


def ask_pinentry(program: str, description: str, prompt: str = "PIN:", timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Ask a pinentry (agent/pinentry.py) for a PIN or passphrase; None when the user cancels.

    The terminal is ``$GPG_TTY`` (gpg-agent's convention), else our standard input when it is one.
    """
    tty = os.environ.get("GPG_TTY")
    if tty is None and sys.stdin.isatty():
        tty = os.ttyname(sys.stdin.fileno())
    try:
        secret = getpin(program, description=description, prompt=prompt, ttyname=tty, timeout=timeout)
    except PinentryError as exc:
        raise BackendConfigError(f"no secret from pinentry: {exc}") from None
    if secret is None:
        return None
    try:
        return secret.decode("utf-8")
    finally:
        secret[:] = bytes(len(secret))


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
