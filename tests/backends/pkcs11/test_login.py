"""PKCS#11 login on real SoftHSM2 tokens (fresh store and token per test).

PIN lockout: SoftHSM 2.6.1 never sets USER_PIN_FINAL_TRY / USER_PIN_LOCKED and never returns CKR_PIN_LOCKED
(probe §9), so those token states come from a FAULT-INJECTING STAND-IN (:class:`FaultyLib`): the real SoftHSM
module wrapped so that the token reports extra flags or a login fails with a chosen error. Everything else here
(wrong PINs, the agent's own counter, the leaked session, PIN sources) is the real module.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import pkcs11.exceptions as px
import pytest
from pkcs11 import TokenFlag

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import PinFinalTry, PinIncorrect, PinLocked, PinRequired
from backends.home import load_config, open_backend
from backends.pkcs11.backend import Pkcs11Backend
from backends.pkcs11.keys import identity_key_ref
from backends.pkcs11.lib import load_lib
from tests.backends.pkcs11.helpers import pkcs11_home as _home
from tests.helpers.softhsm import SoftHSMToken


def test_wrong_pin_counts_and_agent_refuses_after_limit(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    b = open_backend(load_config(home), home=home)
    tries = []
    for _ in range(3):
        with pytest.raises(PinIncorrect) as ei:
            b.unlock("0000")
        tries.append(ei.value.tries_left)
    assert tries == [2, 1, 0]
    assert b.status().pin_failures == 3
    with pytest.raises(PinLocked):  # the agent's own limit: SoftHSM would accept unlimited tries
        b.unlock(softhsm_token.pin)
    b.unlock(softhsm_token.pin, force=True)
    assert b.status().pin_failures == 0 and b.status().unlocked
    b.close()


def test_pin_source_asked_once_never_retried(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    asked: list[str] = []

    def source(what: str) -> str:
        asked.append(what)
        return "9999"

    b = open_backend(load_config(home), home=home, pin_source=source)
    with pytest.raises(PinIncorrect):
        b.identity().sign(keccak256(b"x"))
    assert len(asked) == 1 and softhsm_token.serial in asked[0]
    b.close()
    b = open_backend(load_config(home), home=home)  # no source: a typed "PIN required", no prompt
    with pytest.raises(PinRequired):
        b.identity().sign(keccak256(b"x"))
    b.close()


def _probe_handles(so: str, first: int, count: int) -> list[int]:
    """C_CloseSession on each handle: 0 means it was open (a leak), 0xB3 means invalid (nothing leaked)."""
    dll = ctypes.CDLL(so)
    return [dll.C_CloseSession(ctypes.c_ulong(h)) for h in range(first, first + count)]


def test_failed_login_leaves_no_session_behind(softhsm_token: SoftHSMToken) -> None:
    lib = load_lib(softhsm_token.module)
    lib.reinitialize()
    tok = lib.get_token(token_label=softhsm_token.label)
    # control: python-pkcs11 itself leaks the session of a failed login
    probe = tok.open()
    base = probe.handle
    probe.close()
    with pytest.raises(px.PinIncorrect):
        tok.open(rw=True, user_pin="0000")
    assert 0 in _probe_handles(softhsm_token.module, base, 8)
    # the backend closes it
    home = _home(softhsm_token)
    b = open_backend(load_config(home), home=home)
    b.status()  # connect
    probe = tok.open()
    base = probe.handle
    probe.close()
    with pytest.raises(PinIncorrect):
        b.unlock("0000")
    assert 0 not in _probe_handles(softhsm_token.module, base, 8)
    b.unlock(softhsm_token.pin)  # and the correct PIN still works afterwards
    assert b.status().unlocked
    b.close()


# ----- fault-injecting stand-in for PIN states SoftHSM never reaches ---------------------------------------------
class Faults:
    def __init__(self) -> None:
        self.flags = 0
        self.login_error: type[Exception] | None = None
        self.login_attempts = 0


class FaultyToken:
    def __init__(self, real: Any, faults: Faults) -> None:
        self._real, self._faults = real, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def flags(self) -> int:
        return int(self._real.flags) | self._faults.flags

    @property
    def slot(self) -> "FaultySlot":
        return FaultySlot(self._real.slot, self._faults)

    def open(self, **kw: Any) -> Any:
        if kw.get("user_pin") is not None:
            self._faults.login_attempts += 1
            if self._faults.login_error is not None:
                raise self._faults.login_error()
        return self._real.open(**kw)


class FaultySlot:
    def __init__(self, real: Any, faults: Faults) -> None:
        self._real, self._faults = real, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_token(self) -> FaultyToken:
        return FaultyToken(self._real.get_token(), self._faults)


class FaultyLib:
    def __init__(self, real: Any, faults: Faults) -> None:
        self._real, self._faults = real, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_slots(self, token_present: bool = False) -> list[FaultySlot]:
        return [FaultySlot(s, self._faults) for s in self._real.get_slots(token_present=token_present)]


def _faulty_backend(tok: SoftHSMToken, faults: Faults) -> Pkcs11Backend:
    cfg = load_config(_home(tok))
    p = cfg["pkcs11"]
    return Pkcs11Backend(
        p["module"], p["token"], namespace=bytes.fromhex(p["namespace"]),
        identity=identity_key_ref(bytes.fromhex(p["namespace"])),
        identity_public_key=bytes.fromhex(cfg["identity_public_key"]), token_serial=p["token_serial"],
        lib_loader=lambda module, locking: FaultyLib(load_lib(module, locking), faults),
    )


def test_final_try_refused_unless_forced_stand_in(softhsm_token: SoftHSMToken) -> None:
    faults = Faults()
    faults.flags = int(TokenFlag.USER_PIN_FINAL_TRY)
    b = _faulty_backend(softhsm_token, faults)
    with pytest.raises(PinFinalTry):
        b.unlock(softhsm_token.pin)
    assert faults.login_attempts == 0  # refused before C_Login
    b.unlock(softhsm_token.pin, force=True)
    assert faults.login_attempts == 1 and b.status().unlocked
    b.close()


def test_locked_pin_never_tried_stand_in(softhsm_token: SoftHSMToken) -> None:
    faults = Faults()
    faults.flags = int(TokenFlag.USER_PIN_LOCKED)
    b = _faulty_backend(softhsm_token, faults)
    for force in (False, True):
        with pytest.raises(PinLocked):
            b.unlock(softhsm_token.pin, force=force)
    assert faults.login_attempts == 0
    b.close()


def test_token_locks_during_login_stand_in(softhsm_token: SoftHSMToken) -> None:
    faults = Faults()
    faults.login_error = px.PinLocked
    b = _faulty_backend(softhsm_token, faults)
    with pytest.raises(PinLocked):
        b.unlock(softhsm_token.pin)
    assert faults.login_attempts == 1 and not b.status().unlocked
    b.close()


def test_pin_in_keyring_opt_in(softhsm_token: SoftHSMToken, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    name = "keyrings.alt.file.PlaintextKeyring"
    home = _home(softhsm_token, store_pin_in_keyring=True, keyring_backend=name)
    cfg = load_config(home)
    assert cfg["pkcs11"]["pin_keyring"] == {"service": "keyagent-pin", "username": softhsm_token.serial,
                                            "backend": name}
    b = open_backend(cfg, home=home)  # no PIN source given: the keyring answers
    digest = keccak256(b"kr")
    secp256k1.verify(digest, b.identity().sign(digest), b.identity().public_key())
    b.close()
    from backends.errors import KeyringUnavailable

    with pytest.raises(KeyringUnavailable):
        _home(softhsm_token, store_pin_in_keyring=True, keyring_backend="keyring.backends.fail.Keyring")


def test_pin_source_may_call_back_into_the_backend(softhsm_token: SoftHSMToken) -> None:
    """A daemon's PIN source that asks the backend for its status must not deadlock the worker."""
    home = _home(softhsm_token)
    holder: dict[str, Any] = {}

    def source(what: str) -> str:
        holder["status"] = holder["b"].status()
        return softhsm_token.pin

    b = open_backend(load_config(home), home=home, pin_source=source)
    holder["b"] = b
    digest = keccak256(b"reentrant")
    secp256k1.verify(digest, b.identity().sign(digest), b.identity().public_key())
    assert holder["status"].present and not holder["status"].unlocked
    b.close()


def test_pin_failure_count_survives_a_restart(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    b = open_backend(load_config(home), home=home)
    for _ in range(3):
        with pytest.raises(PinIncorrect):
            b.unlock("0000")
    b.close()
    assert json.load(open(os.path.join(home, "pin-failures.json"))) == {"serial": softhsm_token.serial,
                                                                          "failures": 3}
    b = open_backend(load_config(home), home=home)  # "restarted agent"
    with pytest.raises(PinLocked):
        b.unlock(softhsm_token.pin)
    b.unlock(softhsm_token.pin, force=True)
    b.close()
    assert json.load(open(os.path.join(home, "pin-failures.json")))["failures"] == 0
    with open(os.path.join(home, "pin-failures.json"), "w") as fh:
        fh.write("{broken")
    b = open_backend(load_config(home), home=home)
    with pytest.raises(PinLocked):  # an unreadable count fails closed
        b.unlock(softhsm_token.pin)
    b.close()
