"""Typed errors of the key backends, named for what the caller (the daemon, the CLI, a user) should do.

Every class carries a stable :class:`~agent.core.error_codes.ErrorCode` the daemon sends as its wire code; the codes
never change meaning.
None of these messages ever contains key material or a PIN.
"""

from __future__ import annotations

from agent.core.error_codes import CodedError, ErrorCode

__all__ = [
    "BackendError",
    "BackendConfigError",
    "TokenAbsent",
    "TokenError",
    "Locked",
    "PinRequired",
    "PinIncorrect",
    "PinLocked",
    "PinFinalTry",
    "PassphraseRequired",
    "PassphraseIncorrect",
    "KeyringUnavailable",
    "NothingToCheck",
    "KeyNotFound",
    "KeyExists",
    "KeyExtractable",
    "IdentityChanged",
    "KeyFileCorrupt",
    "MechanismUnsupported",
]


class BackendError(CodedError):
    """Base of every backend error; the backend's state is unchanged when one is raised."""

    code = ErrorCode.BACKEND_ERROR


class BackendConfigError(BackendError):
    """The home's config (or a command-line option) is missing, malformed or names something absent: fix it."""

    code = ErrorCode.BAD_CONFIG


class TokenAbsent(BackendError):
    """The token (or the p11-kit server in front of it) is gone: plug it back in; the backend reconnects by itself."""

    code = ErrorCode.TOKEN_ABSENT


class TokenError(BackendError):
    """The token refused an operation for a reason that is neither removal nor PIN (e.g. a rejected peer point)."""

    code = ErrorCode.TOKEN_ERROR


class Locked(BackendError):
    """Keys are locked: unlock (PIN or passphrase) before signing or deriving; public keys stay readable."""

    code = ErrorCode.LOCKED


class PinRequired(Locked):
    """The token needs its user PIN (``keyagent unlock``, pinentry, ``KEYAGENT_PIN`` or ``--pin-file``)."""

    code = ErrorCode.PIN_REQUIRED


class PinIncorrect(BackendError):
    """The token rejected the PIN. The agent never retries on its own; ``tries_left`` is its own counter."""

    code = ErrorCode.PIN_INCORRECT

    def __init__(self, message: str, *, tries_left: int | None = None) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class PinLocked(BackendError):
    """The PIN is locked, by the token or by the agent's own failure counter: unblock it with the SO PIN."""

    code = ErrorCode.PIN_LOCKED


class PinFinalTry(BackendError):
    """The token reports that the next wrong PIN locks it: the agent refuses unless the user forces the try."""

    code = ErrorCode.PIN_FINAL_TRY


class PassphraseRequired(Locked):
    """The software key file needs its passphrase (``KEYAGENT_PASSPHRASE``, ``--passphrase-file``, unlock)."""

    code = ErrorCode.PASSPHRASE_REQUIRED


class PassphraseIncorrect(BackendError):
    """The passphrase (or keyring secret) does not open the key file; the file is untouched."""

    code = ErrorCode.PASSPHRASE_INCORRECT


class KeyringUnavailable(BackendError):
    """The OS keyring is missing or refused: name a working backend; the agent never falls back to plaintext."""

    code = ErrorCode.KEYRING_UNAVAILABLE


class NothingToCheck(BackendError):
    """An unlock of a key that is already unlocked and has no secret to compare (a keyring-protected key file):
    answering "unlocked" would confirm whatever was typed, so it is refused; nothing changes, no failure counts."""

    code = ErrorCode.BAD_REQUEST


class KeyNotFound(BackendError):
    """No key with that id/label/version exists on the token or in the key file."""

    code = ErrorCode.KEY_NOT_FOUND


class KeyExists(BackendError):
    """A key with that id/label/version already exists; it is never overwritten."""

    code = ErrorCode.KEY_EXISTS


class KeyExtractable(BackendError):
    """The private key can leave the token (EXTRACTABLE or not SENSITIVE): refused unless the user forces it."""

    code = ErrorCode.KEY_EXTRACTABLE


class IdentityChanged(BackendError):
    """After a reconnect the token's identity key differs from the configured one: a different token was inserted."""

    code = ErrorCode.IDENTITY_CHANGED


class KeyFileCorrupt(BackendError):
    """The key file does not parse or fails authentication in a way no passphrase explains."""

    code = ErrorCode.KEY_FILE_CORRUPT


class MechanismUnsupported(BackendError):
    """The token (or the RPC layer in front of it) does not offer the mechanism, e.g. ECDH1_DERIVE through
    p11-kit 0.24's client, whose RPC cannot carry CK_ECDH1_DERIVE_PARAMS: use another token or p11-kit >= 0.25."""

    code = ErrorCode.UNSUPPORTED
