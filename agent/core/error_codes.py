"""The one base of every error that reaches a client as ``Error{code}``, and the names those codes go by.

It lives in the core, the lowest layer, so that core, backend and daemon errors all derive from it; the daemon
turns :attr:`CodedError.code` into the wire ``Error.Code`` (``agent.daemon.service.error_code``) and anything
else into INTERNAL.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = ["ErrorCode", "CodedError"]


class ErrorCode(StrEnum):
    """The stable name of an error (``keyagent`` prints it, scripts match it) and the wire code it travels as.

    Each name is an ``Error.Code`` of proto/keyagent/agent.proto and travels as itself, except the finer names at
    the end, which declare the wire code that carries them in ``wire``: the wire list and its numbers are fixed
    (clients in other languages compiled them in), the names are not part of it.
    """

    wire: str  #: the ``Error.Code`` name this error is sent as

    def __new__(cls, name: str, wire: str | None = None) -> ErrorCode:
        member = str.__new__(cls, name)
        member._value_ = name
        member.wire = wire or name
        return member

    INTERNAL = "INTERNAL"
    BAD_REQUEST = "BAD_REQUEST"
    UNSUPPORTED = "UNSUPPORTED"
    DENIED = "DENIED"
    LOCKED = "LOCKED"
    PIN_REQUIRED = "PIN_REQUIRED"
    PASSPHRASE_REQUIRED = "PASSPHRASE_REQUIRED"
    TOKEN_ABSENT = "TOKEN_ABSENT"
    TOKEN_ERROR = "TOKEN_ERROR"
    PIN_INCORRECT = "PIN_INCORRECT"
    PIN_LOCKED = "PIN_LOCKED"
    PIN_FINAL_TRY = "PIN_FINAL_TRY"
    PASSPHRASE_INCORRECT = "PASSPHRASE_INCORRECT"
    NO_SESSION = "NO_SESSION"
    DECRYPT_FAILED = "DECRYPT_FAILED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    BAD_IDENTITY = "BAD_IDENTITY"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    IDENTITY_CHANGED = "IDENTITY_CHANGED"
    STATE_ERROR = "STATE_ERROR"
    TIMEOUT = "TIMEOUT"
    BUSY = "BUSY"
    NOT_READY = "NOT_READY"
    BAD_CONFIG = "BAD_CONFIG"
    KEYRING_UNAVAILABLE = "KEYRING_UNAVAILABLE"
    KEY_FILE_CORRUPT = "KEY_FILE_CORRUPT"
    REFUSED_PAYLOAD = "REFUSED_PAYLOAD"
    RATE_LIMITED = "RATE_LIMITED"
    BAD_BUNDLE = "BAD_BUNDLE"
    SUPERSEDED = "SUPERSEDED"
    # finer names without a wire code of their own
    BACKEND_ERROR = "BACKEND_ERROR", "INTERNAL"  # an unexpected backend failure: a bug to report
    KEY_EXISTS = "KEY_EXISTS", "BAD_REQUEST"  # the caller asked to create what exists
    KEY_EXTRACTABLE = "KEY_EXTRACTABLE", "TOKEN_ERROR"  # the token's key fails our policy
    # start-up refusals printed by ``keyagent start``: no request can raise them (INTERNAL if one ever did)
    UNSAFE_SOCKET_DIR = "UNSAFE_SOCKET_DIR", "INTERNAL"
    AGENT_RUNNING = "AGENT_RUNNING", "INTERNAL"
    UNSAFE_HOME = "UNSAFE_HOME", "INTERNAL"  # the home can be changed by another user (agent/home_trust.py)


class CodedError(Exception):
    """Base of every error a client may see as ``Error{code}``; anything else is reported as INTERNAL."""

    code: ClassVar[ErrorCode]
