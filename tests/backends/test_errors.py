"""Backend error codes are part of the wire contract: pinned here so a rename cannot slip through."""

from __future__ import annotations

import backends.errors as E

EXPECTED = {
    "BackendError": "BACKEND_ERROR", "BackendConfigError": "BAD_CONFIG", "TokenAbsent": "TOKEN_ABSENT",
    "TokenError": "TOKEN_ERROR", "Locked": "LOCKED", "PinRequired": "PIN_REQUIRED",
    "PinIncorrect": "PIN_INCORRECT", "PinLocked": "PIN_LOCKED", "PinFinalTry": "PIN_FINAL_TRY",
    "PassphraseRequired": "PASSPHRASE_REQUIRED", "PassphraseIncorrect": "PASSPHRASE_INCORRECT",
    "KeyringUnavailable": "KEYRING_UNAVAILABLE", "NothingToCheck": "BAD_REQUEST", "KeyNotFound": "KEY_NOT_FOUND", "KeyExists": "KEY_EXISTS",
    "KeyExtractable": "KEY_EXTRACTABLE", "IdentityChanged": "IDENTITY_CHANGED", "KeyFileCorrupt": "KEY_FILE_CORRUPT",
    "MechanismUnsupported": "UNSUPPORTED",
}


def test_codes_pinned() -> None:
    assert {name: getattr(E, name).code for name in E.__all__} == EXPECTED


def test_all_are_backend_errors_and_locked_family() -> None:
    for name in E.__all__:
        assert issubclass(getattr(E, name), E.BackendError)
    assert issubclass(E.PinRequired, E.Locked) and issubclass(E.PassphraseRequired, E.Locked)
    assert E.PinIncorrect("x", tries_left=2).tries_left == 2
