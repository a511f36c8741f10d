"""PKCS#11 backend on real SoftHSM2 tokens (fresh store and token per test).

PIN lockout: SoftHSM 2.6.1 never sets USER_PIN_FINAL_TRY / USER_PIN_LOCKED and never returns CKR_PIN_LOCKED
(probe §9), so those token states come from a FAULT-INJECTING STAND-IN (:class:`FaultyLib`): the real SoftHSM
module wrapped so that the token reports extra flags or a login fails with a chosen error. Everything else here
(wrong PINs, the agent's own counter, the leaked session, selection, adoption, import) is the real module.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from typing import Any


import pkcs11.exceptions as px
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import (
    BackendConfigError,
    IdentityChanged,
    KeyExtractable,
    KeyNotFound,
    PinFinalTry,
    PinIncorrect,
    PinLocked,
    PinRequired,
    TokenAbsent,
)
from backends.home import load_config, open_backend, provision_identity, write_config
from backends.memory import MemoryKey
from backends.pkcs11.backend import Pkcs11Backend
from backends.pkcs11.keys import identity_key_ref
from backends.pkcs11.lib import load_lib
from tests.helpers.softhsm import SoftHSMToken


def _home(tok: SoftHSMToken, **kw: Any) -> str:
    home = tempfile.mkdtemp(prefix="home-", dir=tok.dir)
    provision_identity(home, "pkcs11", module=tok.module, token=tok.label, pin=tok.pin, **kw)
    return home


def _access_lines(listing: str) -> dict[str, str]:
    """label -> 'Access:' line of each private key in ``pkcs11-tool --list-objects`` output."""
    out: dict[str, str] = {}
    for block in listing.split("Private Key Object")[1:]:
        label = access = ""
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("label:"):
                label = line.split(":", 1)[1].strip()
            if line.startswith("Access:"):
                access = line.split(":", 1)[1].strip()
            if line.startswith("Public Key Object"):
                break
        out[label] = access
    return out


def test_generated_keys_are_sensitive_non_extractable(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    cfg = load_config(home)
    b = open_backend(cfg, home=home)
    b.unlock(softhsm_token.pin)
    assert isinstance(b, Pkcs11Backend)
    attrs = b.private_key_attributes()
    assert attrs == {"TOKEN": True, "PRIVATE": True, "SENSITIVE": True, "EXTRACTABLE": False,
                     "ALWAYS_SENSITIVE": True, "NEVER_EXTRACTABLE": True, "LOCAL": True, "SIGN": True,
                     "DERIVE": True}
    b.close()
    access = _access_lines(softhsm_token.pkcs11_tool("--list-objects", "--type", "privkey", login=True))
    ns = cfg["pkcs11"]["namespace"]
    assert set(access) == {f"keyagent-ik-{ns}", f"keyagent-spk1-{ns}"}
    for line in access.values():
        assert line == "sensitive, always sensitive, never extractable, local"
    assert cfg["pkcs11"]["identity_origin"] == "generated"


def test_value_cannot_be_read(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    lib = load_lib(softhsm_token.module)
    tok = lib.get_token(token_label=softhsm_token.label)
    with tok.open(user_pin=softhsm_token.pin) as s:
        key = s.get_key(object_class=ObjectClass.PRIVATE_KEY,
                        id=bytes.fromhex(load_config(home)["pkcs11"]["identity_id"]))
        with pytest.raises(px.AttributeSensitive):
            key[Attribute.VALUE]


def test_adopt_pkcs11_tool_key_by_id_and_label(softhsm_token: SoftHSMToken) -> None:
    softhsm_token.pkcs11_tool("--keypairgen", "--key-type", "EC:secp256k1", "--label", "mine", "--id", "a1",
                              login=True)
    for kw in ({"adopt_id": bytes.fromhex("a1")}, {"adopt_label": "mine"}):
        home = _home(softhsm_token, **kw)
        cfg = load_config(home)
        assert cfg["pkcs11"]["identity_id"] == "a1" and cfg["pkcs11"]["identity_origin"] == "adopted"
        b = open_backend(cfg, home=home, pin_source=lambda what: softhsm_token.pin)
        ik = b.identity()
        digest = keccak256(b"adopted")
        secp256k1.verify(digest, ik.sign(digest), ik.public_key())
        peer = MemoryKey.generate()
        assert ik.dh(peer.public_key()) == peer.dh(ik.public_key())
        b.close()
    # the key pkcs11-tool printed is the one we use
    listing = softhsm_token.pkcs11_tool("--list-objects", "--type", "pubkey")
    block = next(b for b in listing.split("Public Key Object")[1:] if "ID:         a1" in b)
    point = next(line.split(":", 1)[1].strip() for line in block.splitlines() if "EC_POINT:" in line)
    assert secp256k1.compress(bytes.fromhex(point)[2:]).hex() == cfg["identity_public_key"]


def test_adopt_extractable_key_refused_unless_forced(softhsm_token: SoftHSMToken) -> None:
    softhsm_token.pkcs11_tool("--keypairgen", "--key-type", "EC:secp256k1", "--label", "weak", "--id", "b2",
                              "--extractable", login=True)
    home = tempfile.mkdtemp(dir=softhsm_token.dir)
    with pytest.raises(KeyExtractable):
        provision_identity(home, "pkcs11", module=softhsm_token.module, token=softhsm_token.label,
                           pin=softhsm_token.pin, adopt_id=bytes.fromhex("b2"))
    assert not os.path.exists(os.path.join(home, "config.json"))
    cfg = provision_identity(home, "pkcs11", module=softhsm_token.module, token=softhsm_token.label,
                             pin=softhsm_token.pin, adopt_id=bytes.fromhex("b2"), force=True)
    assert cfg["pkcs11"]["allow_extractable"] is True
    # the same key under a config without the user's force is refused when it is loaded
    cfg["pkcs11"]["allow_extractable"] = False
    b = open_backend(cfg, home=home)
    with pytest.raises(KeyExtractable):
        b.unlock(softhsm_token.pin)
    b.close()


def test_adopt_missing_key(softhsm_token: SoftHSMToken) -> None:
    home = tempfile.mkdtemp(dir=softhsm_token.dir)
    with pytest.raises(KeyNotFound):
        provision_identity(home, "pkcs11", module=softhsm_token.module, token=softhsm_token.label,
                           pin=softhsm_token.pin, adopt_label="nothing")
    assert not os.listdir(home)


def test_import_is_protected_but_not_never_extractable(softhsm_token: SoftHSMToken) -> None:
    sw = MemoryKey.generate()
    home = _home(softhsm_token, import_secret=sw.secret_for_export())
    cfg = load_config(home)
    assert cfg["identity_public_key"] == sw.public_key().hex() and cfg["pkcs11"]["identity_origin"] == "imported"
    b = open_backend(cfg, home=home)
    b.unlock(softhsm_token.pin)
    assert isinstance(b, Pkcs11Backend)
    attrs = b.private_key_attributes()
    assert attrs["SENSITIVE"] and not attrs["EXTRACTABLE"]
    assert not attrs["NEVER_EXTRACTABLE"] and not attrs["ALWAYS_SENSITIVE"] and not attrs["LOCAL"]
    digest = keccak256(b"imported")
    assert b.identity().sign(digest)[:64] != b""  # signs
    secp256k1.verify(digest, b.identity().sign(digest), sw.public_key())
    b.close()
    access = _access_lines(softhsm_token.pkcs11_tool("--list-objects", "--type", "privkey", login=True))
    assert access[f"keyagent-ik-{cfg['pkcs11']['namespace']}"] == "sensitive"


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


# ----- selection and identity checks -----------------------------------------------------------------------------
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


def test_provision_twice_refused_and_nothing_left_on_failure(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    from backends.errors import KeyExists

    with pytest.raises(KeyExists):
        _home_again = provision_identity(home, "pkcs11", module=softhsm_token.module, token=softhsm_token.label,
                                         pin=softhsm_token.pin)
    before = softhsm_token.pkcs11_tool("--list-objects", login=True)
    home2 = tempfile.mkdtemp(dir=softhsm_token.dir)
    with pytest.raises(PinIncorrect):
        provision_identity(home2, "pkcs11", module=softhsm_token.module, token=softhsm_token.label, pin="0000")
    assert softhsm_token.pkcs11_tool("--list-objects", login=True) == before
    assert not os.listdir(home2)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("pkcs11"),
        lambda c: c["pkcs11"].__setitem__("namespace", "zz"),
        lambda c: c["pkcs11"].__setitem__("workers", 0),
        lambda c: c["pkcs11"].__setitem__("os_locking", "yes"),
        lambda c: c["pkcs11"].__setitem__("pin_ttl", -1),
        lambda c: c.__setitem__("backend", "tpm"),
        lambda c: c.__setitem__("identity_public_key", "02" + "00" * 32),  # x=0 is not on the curve
        lambda c: c.__setitem__("version", 2),
    ],
)
def test_bad_config_rejected(softhsm_token: SoftHSMToken, mutate: Any) -> None:
    home = _home(softhsm_token)
    path = os.path.join(home, "config.json")
    cfg = json.load(open(path))
    mutate(cfg)
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    with pytest.raises(BackendConfigError):
        load_config(home)


def test_many_workers_need_os_locking(softhsm_token: SoftHSMToken) -> None:
    with pytest.raises(BackendConfigError):
        Pkcs11Backend(softhsm_token.module, softhsm_token.label, namespace=b"\0" * 8, workers=2)


def test_destroyed_spk_is_gone_from_token(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    cfg = load_config(home)
    b = open_backend(cfg, home=home, pin_source=lambda what: softhsm_token.pin)
    b.create_signed_prekey(2)
    b.destroy_signed_prekey(1)
    b.close()
    listing = softhsm_token.pkcs11_tool("--list-objects", login=True)
    ns = cfg["pkcs11"]["namespace"]
    assert f"keyagent-spk1-{ns}" not in listing and f"keyagent-spk2-{ns}" in listing


def test_cli_init_and_migrate(softhsm_token: SoftHSMToken, tmp_path: Any) -> None:
    env = dict(softhsm_token.env, KEYAGENT_PASSPHRASE="pass phrase", KEYAGENT_PIN=softhsm_token.pin)
    home = str(tmp_path / "home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args, "--home", home], env=env,
                              capture_output=True, text=True)

    r = run("init", "--backend", "software", "--scrypt-n", "1024")
    assert r.returncode == 0, r.stderr
    sw_pub = load_config(home)["identity_public_key"]
    assert stat_mode(os.path.join(home, "config.json")) == 0o600
    r = run("init", "--backend", "software", "--scrypt-n", "1024")
    assert r.returncode != 0 and "KeyExists" in r.stderr
    pinfile = tmp_path / "pin"
    pinfile.write_text(softhsm_token.pin + "\n")
    pinfile.chmod(0o600)
    env.pop("KEYAGENT_PIN")
    r = run("migrate", "--module", softhsm_token.module, "--token", softhsm_token.label, "--pin-file", str(pinfile))
    assert r.returncode == 0, r.stderr
    assert "not 'never extractable'" in r.stdout
    cfg = load_config(home)
    assert cfg["backend"] == "pkcs11" and cfg["identity_public_key"] == sw_pub
    b = open_backend(cfg, home=home)
    b.unlock(softhsm_token.pin)
    digest = keccak256(b"migrated")
    secp256k1.verify(digest, b.identity().sign(digest), bytes.fromhex(sw_pub))
    assert [i.version for i in b.list_signed_prekeys()] == [1]
    b.close()
    # pkcs11 init through the CLI on a fresh home, PIN from a file
    home2 = str(tmp_path / "home2")
    r = subprocess.run([sys.executable, "-m", "agent", "init", "--backend", "pkcs11", "--module",
                        softhsm_token.module, "--token", f"pkcs11:token={softhsm_token.label}", "--pin-file",
                        str(pinfile), "--home", home2], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_config(home2)["pkcs11"]["token_serial"] == softhsm_token.serial
    pinfile.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "agent", "init", "--backend", "pkcs11", "--module",
                        softhsm_token.module, "--token", softhsm_token.label, "--pin-file", str(pinfile),
                        "--home", str(tmp_path / "home3")], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "readable by others" in r.stderr


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_raw_sign_needs_mechanism_ecdsa(softhsm_token: SoftHSMToken) -> None:
    """The quirk the backend works around: python-pkcs11's default EC mechanism is refused by SoftHSM."""
    lib = load_lib(softhsm_token.module)
    lib.reinitialize()
    tok = lib.get_token(token_label=softhsm_token.label)
    with tok.open(rw=True, user_pin=softhsm_token.pin) as s:
        from pkcs11.util.ec import encode_named_curve_parameters

        _pub, priv = s.generate_keypair(KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, public_template={
            Attribute.EC_PARAMS: encode_named_curve_parameters("secp256k1")})
        with pytest.raises(px.MechanismInvalid):
            priv.sign(b"\x01" * 32)
        assert len(priv.sign(b"\x01" * 32, mechanism=Mechanism.ECDSA)) == 64


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


def test_dh_leaves_no_secret_object(softhsm_token: SoftHSMToken) -> None:
    """The derived x is read and the secret object destroyed at once: none remains, on the token or in session."""
    home = _home(softhsm_token)
    b = open_backend(load_config(home), home=home, pin_source=lambda what: softhsm_token.pin)
    for _ in range(10):
        peer = MemoryKey.generate()
        assert b.identity().dh(peer.public_key()) == peer.dh(b.identity().public_key())
    # same process (session objects of all our sessions are visible to it), after the worker is idle
    tok = load_lib(softhsm_token.module).get_token(token_label=softhsm_token.label)
    with tok.open() as s:
        assert list(s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})) == []
    b.close()
    assert "Secret Key Object" not in softhsm_token.pkcs11_tool("--list-objects", login=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "pkcs11", "--token", "x"], "needs --module"),
        (["--backend", "pkcs11", "--module", "/nonexistent.so", "--token", "x", "--adopt-id", "zz"], "hex"),
        (["--backend", "software", "--adopt-label", "x"], "needs --backend pkcs11"),
        (["--backend", "pkcs11", "--module", "/nonexistent.so", "--token", "x"], "cannot load PKCS#11 module"),
    ],
)
def test_cli_init_refusals(tmp_path: Any, args: list[str], message: str) -> None:
    env = dict(os.environ, KEYAGENT_PIN="1234", KEYAGENT_PASSPHRASE="p")
    r = subprocess.run([sys.executable, "-m", "agent", "init", *args, "--home", str(tmp_path / "h")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "h" / "config.json").exists()


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
