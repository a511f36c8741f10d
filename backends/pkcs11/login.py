"""Logging in to the token: the checks before a PIN is sent, the one C_Login, and the agent's own failure count.

Token quirks handled here (measured on SoftHSM 2.6.1 / p11-kit 0.24, see pkcs11-probe.md):

* SoftHSM never locks a PIN; the agent keeps its own count of consecutive wrong PINs, persisted in a small JSON
  file so that restarting the agent does not reset it.
* ``Token.open(user_pin=wrong)`` leaks the session it opened; it is closed with ``C_CloseAllSessions`` (the
  backend holds no session while logging in).
* A token reporting USER_PIN_LOCKED gets no PIN; one reporting USER_PIN_FINAL_TRY gets one only when forced.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pkcs11.exceptions as px
from pkcs11 import TokenFlag

from backends.errors import PinFinalTry, PinIncorrect, PinLocked
from backends.pkcs11.lib import close_all_sessions

__all__ = ["FailureCounter", "check_before_login", "open_login_session"]


class FailureCounter:
    """Consecutive wrong PINs for the token with ``serial``, persisted in ``path`` when one is given.

    Args:
        path: the JSON file (``{"serial": ..., "failures": n}``); None keeps the count in memory only.
        limit: the agent's own limit on consecutive wrong PINs (SoftHSM has none).
        pinned_serial: the configured token serial; an unreadable file charges the full limit to it.
    """

    def __init__(self, path: str | None, limit: int, pinned_serial: str | None) -> None:
        self.path, self.limit, self._pinned_serial = path, limit, pinned_serial
        self.count = 0
        self.serial = ""
        self._load()

    def _load(self) -> None:
        """The persisted count, so restarting the agent does not reset its PIN guard (SoftHSM has none)."""
        if not self.path:
            return
        try:
            with open(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
                doc = json.loads(fh.read(4096))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            doc = None
        if (isinstance(doc, dict) and isinstance(doc.get("serial"), str) and isinstance(doc.get("failures"), int)
                and not isinstance(doc.get("failures"), bool) and doc["failures"] >= 0):
            self.count, self.serial = doc["failures"], doc["serial"]
        else:  # unreadable: fail closed (the user can still force one try)
            self.count, self.serial = self.limit, self._pinned_serial or ""

    def set(self, n: int, serial: str) -> None:
        changed = n != self.count or self.serial != serial
        self.count, self.serial = n, serial
        if self.path and changed:
            from backends.files import write_atomic

            write_atomic(self.path, json.dumps({"serial": serial, "failures": n}).encode())


def check_before_login(flags: int, counter: FailureCounter, serial: str, label: str, *, force: bool,
                       from_cache: bool) -> None:
    """Refuse before any PIN is sent: the token's own lock flags first, then the agent's count for this token."""
    if flags & TokenFlag.USER_PIN_LOCKED:
        raise PinLocked(f"the user PIN of token {label} is locked; unblock it with the SO PIN")
    if flags & TokenFlag.USER_PIN_FINAL_TRY and not force:
        raise PinFinalTry(f"token {label} reports that a wrong PIN now locks it; if you are sure of the PIN, run "
                          "`keyagent unlock --force`")
    if counter.serial != serial:  # a count belongs to one token
        counter.set(0, serial)
    if counter.count >= counter.limit and not force and not from_cache:
        raise PinLocked(
            f"{counter.count} wrong PINs in a row for token {label}: the agent refuses more tries without force "
            "(the token itself may not count them); run `keyagent unlock --force` to try one more PIN")


def open_login_session(lib: Any, token: Any, slot_id: int, pin: str, counter: FailureCounter, serial: str,
                       label: str) -> tuple[Any, bool]:
    """One C_Login attempt (never retried); the session and whether it is the one that logged in.

    The caller must hold no session of its own, so that the one python-pkcs11 leaks on failure can be closed.
    """
    try:
        session = token.open(rw=True, user_pin=pin)
    except px.PinIncorrect as exc:
        counter.set(counter.count + 1, serial)
        close_all_sessions(lib, slot_id)
        raise PinIncorrect(
            f"wrong PIN for token {label}", tries_left=max(counter.limit - counter.count, 0)
        ) from exc
    except (px.PinLocked, px.PinExpired) as exc:
        close_all_sessions(lib, slot_id)
        raise PinLocked(f"token {label} refuses the PIN: {type(exc).__name__}") from exc
    except (px.PinLenRange, px.PinInvalid) as exc:
        close_all_sessions(lib, slot_id)
        raise PinIncorrect(f"the token rejects this PIN's format: {type(exc).__name__}") from exc
    except px.UserAlreadyLoggedIn:
        # Someone else in this process logged in already (login is per process and token): share it.
        # The session the failed C_Login leaked stays open: closing all sessions would log the other out.
        return token.open(rw=True), False
    return session, True
