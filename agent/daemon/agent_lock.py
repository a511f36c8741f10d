"""The agent's lock: ``keyagent lock`` really locks, ``keyagent unlock`` restores, and guessing is slow.

Two ways to lock (ssh-agent ``-x`` and pivy-agent ``-x``):

* without a password, the backend forgets its PIN/passphrase (and the software key material); unlock then needs
  the PIN or passphrase again, which the backend verifies (the token's ``C_Login`` or the key file's KDF);
* with a lock password, the backend stays logged in but every secret-using request is refused; unlock needs that
  password. Only an scrypt hash of it is kept, compared with ``hmac.compare_digest`` (constant time).

Every failed unlock waits before answering, 0.1 s per consecutive failure up to 10 s (ssh-agent's schedule), and
attempts are serialised so parallel guesses queue behind the delay. After ``unlock_ttl`` seconds (monotonic clock)
the agent locks itself as if ``keyagent lock`` had been run without a password.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from typing import Callable

from agent.core.error_codes import CodedError, ErrorCode
from backends.base import Backend

__all__ = ["AgentLocked", "UnlockFailed", "LockManager", "failure_delay"]

_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}  # a lock password only guards a running agent; 16 MiB, ~30 ms


class AgentLocked(CodedError):
    """The agent is locked: run ``keyagent unlock``."""

    code = ErrorCode.LOCKED


class UnlockFailed(CodedError):
    """The lock password was wrong (the agent stays locked)."""

    code = ErrorCode.PASSPHRASE_INCORRECT


def failure_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th consecutive failed unlock."""
    return min(0.1 * failures, 10.0)


def _is_wrong_secret(exc: Exception) -> bool:
    return isinstance(exc, CodedError) and exc.code in (ErrorCode.PIN_INCORRECT, ErrorCode.PASSPHRASE_INCORRECT)


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)


class LockManager:
    """Lock state in front of one backend; thread-safe."""

    def __init__(
        self,
        backend: Backend,
        *,
        ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._backend = backend
        self._ttl = ttl
        self._clock = clock
        self._sleep = sleep
        self._mu = threading.Lock()  # guards the fields below
        self._attempt = threading.Lock()  # serialises unlock attempts (so the delay cannot be bypassed)
        self._password: tuple[bytes, bytes] | None = None  # (salt, scrypt hash)
        self._locked = False
        self._failures = 0
        self._deadline: float | None = None
        self.unlocked_now()

    # --- queries ------------------------------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        """True if secret-using requests are refused (by our lock; a backend without its PIN is separate)."""
        self.tick()
        with self._mu:
            return self._locked

    @property
    def failures(self) -> int:
        with self._mu:
            return self._failures

    def ttl_remaining(self) -> float:
        with self._mu:
            if self._deadline is None or self._locked:
                return 0.0
            return max(0.0, self._deadline - self._clock())

    def check(self) -> None:
        """Raise AgentLocked unless secret-using requests are allowed now."""
        if self._deadline is None and not self._locked:  # no TTL running, not locked: nothing to tick (the
            return  # usual case, asked by every request; each read is atomic, as the mutex would give it)
        if self.locked:
            raise AgentLocked("the agent is locked; run keyagent unlock")

    # --- transitions --------------------------------------------------------------------------------------------
    def unlocked_now(self) -> None:
        """Start the TTL clock (after start-up with a secret, or after an unlock)."""
        with self._mu:
            self._deadline = self._clock() + self._ttl if self._ttl > 0 else None

    def lock_due(self) -> bool:
        """True if the unlock TTL has run out and the next :meth:`tick` will lock (and call the backend)."""
        if self._deadline is None:  # no TTL running (every inline request asks)
            return False
        with self._mu:
            return self._deadline is not None and not self._locked and self._clock() >= self._deadline

    def tick(self) -> bool:
        """Lock if the TTL expired; True if this call locked. Called before requests and by a periodic timer."""
        with self._mu:
            expired = self._deadline is not None and not self._locked and self._clock() >= self._deadline
            if expired:
                self._deadline = None
        if expired:
            self.lock()
        return expired

    def lock(self, password: str = "") -> None:
        """Lock now. With a password only our gate closes; without, the backend also forgets its secret."""
        with self._mu:
            if password:
                salt = os.urandom(16)
                self._password = (salt, _hash(password, salt))
            else:
                self._password = None
            self._locked = True
            self._deadline = None
        if not password:
            self._backend.lock()

    def unlock(self, secret: str, *, force: bool = False) -> None:
        """Check ``secret`` against the lock password, else hand it to the backend (one attempt, never retried).

        Raises UnlockFailed or the backend's typed error after the escalating delay; the state is unchanged then.
        """
        with self._attempt:
            with self._mu:
                password = self._password
            try:
                if password is not None:
                    salt, expected = password
                    if not hmac.compare_digest(_hash(secret, salt), expected):
                        raise UnlockFailed("wrong lock password")
                else:
                    self._backend.unlock(secret, force=force)
            except Exception as exc:
                if not _is_wrong_secret(exc):
                    raise  # token absent, config errors...: not a guess, no delay
                with self._mu:
                    self._failures += 1
                    failures = self._failures
                self._sleep(failure_delay(failures))
                raise
            with self._mu:
                self._failures = 0
                self._password = None
                self._locked = False
            self.unlocked_now()
