"""PKCS#11 key pairs on real SoftHSM2 tokens (fresh store and token per test): generated, imported and adopted
keys, their protection attributes, destruction, and the raw mechanisms the backend relies on."""

from __future__ import annotations

import os
import tempfile

import pkcs11.exceptions as px
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import KeyExtractable, KeyNotFound
from backends.home import load_config, open_backend, provision_identity
from backends.memory import MemoryKey
from backends.pkcs11.backend import Pkcs11Backend
from backends.pkcs11.lib import load_lib
from tests.backends.pkcs11.helpers import pkcs11_home as _home
from tests.helpers.softhsm import SoftHSMToken


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
