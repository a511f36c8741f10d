"""The PKCS#11 backend's connection on real SoftHSM2 tokens (fresh store and token per test): token selection,
the serial and identity checks before and after login, and the worker configuration."""

from __future__ import annotations

import pytest

from agent.core.hashing import keccak256
from backends.errors import BackendConfigError, IdentityChanged, TokenAbsent
from backends.home import load_config, open_backend, write_config
from backends.memory import MemoryKey
from backends.pkcs11.backend import Pkcs11Backend
from backends.pkcs11.lib import load_lib
from tests.backends.pkcs11.helpers import pkcs11_home as _home
from tests.helpers.softhsm import SoftHSMToken


def test_token_selectors(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    cfg = load_config(home)
    for sel in (f"pkcs11:token={softhsm_token.label}", f"pkcs11:serial={softhsm_token.serial}",
                f"serial:{softhsm_token.serial}", f"label:{softhsm_token.label}",
                f"pkcs11:model=SoftHSM%20v2;token={softhsm_token.label}"):
        cfg["pkcs11"]["token"] = sel
        b = open_backend(cfg, home=home)
        b.unlock(softhsm_token.pin)
        assert b.status().unlocked
        b.close()
    for sel in ("pkcs11:token=absent", "serial:0000"):
        cfg["pkcs11"]["token"] = sel
        b = open_backend(cfg, home=home)
        with pytest.raises(TokenAbsent):
            b.unlock(softhsm_token.pin)
        b.close()
    cfg["pkcs11"]["token"] = f"pkcs11:token={softhsm_token.label}?module-path=/tmp/evil.so"
    with pytest.raises(BackendConfigError):
        open_backend(cfg, home=home)


def test_two_tokens_same_label_is_ambiguous(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    softhsm_token.add_token(softhsm_token.label)
    load_lib(softhsm_token.module).reinitialize()  # a loaded module sees a new token only after C_Initialize
    cfg = load_config(home)
    b = open_backend(cfg, home=home)
    with pytest.raises(BackendConfigError):
        b.unlock(softhsm_token.pin)
    b.close()
    cfg["pkcs11"]["token"] = f"serial:{softhsm_token.serial}"
    b = open_backend(cfg, home=home)
    b.unlock(softhsm_token.pin)
    b.close()


def test_other_token_with_same_label_gets_no_pin(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    cfg = load_config(home)
    cfg["pkcs11"]["token_serial"] = "0123456789abcdef"  # as if a different token had been inserted
    asked: list[str] = []

    def source(what: str) -> str:
        asked.append(what)
        return softhsm_token.pin

    b = open_backend(cfg, home=home, pin_source=source)
    with pytest.raises(IdentityChanged):
        b.identity().sign(keccak256(b"x"))
    assert asked == []  # never try one PIN on two tokens
    b.close()


def test_identity_key_checked_after_login(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    cfg = load_config(home)
    cfg["identity_public_key"] = MemoryKey.generate().public_key().hex()
    write_config(home, cfg)
    b = open_backend(load_config(home), home=home)
    with pytest.raises(IdentityChanged):
        b.unlock(softhsm_token.pin)
    assert not b.status().unlocked
    b.close()


def test_many_workers_need_os_locking(softhsm_token: SoftHSMToken) -> None:
    with pytest.raises(BackendConfigError):
        Pkcs11Backend(softhsm_token.module, softhsm_token.label, namespace=b"\0" * 8, workers=2)
