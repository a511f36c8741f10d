"""Recovery-phrase import (``init_from_phrase``, what ``keyagent init --from-phrase`` runs) into SoftHSM2 and into
the software key file: the same chat key, key UID, bundle identity, signatures and ECDH as the software derivation
of Status's vectors; the token shows the key sensitive but imported; failures leave nothing behind."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from typing import Any, Iterator

import coincurve
import pytest

from agent.core import secp256k1
from agent.core.bundle import sign_bundle, verify_bundle
from agent.core.hashing import keccak256
from agent.core.identity import derive_identity
from agent.identity.phrase_import import init_from_phrase
from agent.identity.record import IdentityMismatchError, read_status_record, record_phrase_identity
from agent.identity.whoami import offline_document
from backends.errors import KeyExists
from backends.home import load_config, open_backend
from backends.memory import MemoryKey
from tests.helpers.softhsm import SoftHSMToken

# A phrase whose checksum word is wrong (every word is in the list): Status derives from it anyway.
BAD_CHECKSUM = " ".join(["abandon"] * 12)


def _cases(vectors: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(mnemonic, key_uid or "", chat secret) of every vector with an empty passphrase and a chat private key."""
    out = []
    for v in vectors["identities"].values():
        if v["bip39_passphrase"] == "":
            out.append((v["mnemonic"], v["key_uid"], bytes.fromhex(v["derived"]["chat"]["private_key"][2:])))
    up = vectors["upstream"]["nim_status_bip32_chat_key"]
    out.append((up["mnemonic"], "", bytes.fromhex(up["m/43'/60'/1581'/0'/0"]["private_key"])))
    return out


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSMToken]:
    with SoftHSMToken() as tok:
        monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        yield tok


@pytest.fixture
def home() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="ka-imp-")
    try:
        yield os.path.join(root, "home")
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _stdin(phrase: str) -> io.BytesIO:
    return io.BytesIO(phrase.encode() + b"\n")


def _same_key(backend: Any, secret: bytes) -> None:
    """Bundle identity, signatures and ECDH of the backend's identity equal those of the derived secret."""
    soft = MemoryKey(secret)
    ik = backend.identity()
    assert ik.public_key() == soft.public_key()
    spk = coincurve.PrivateKey().public_key.format()
    bundle = sign_bundle(ik, {"dev-1": (spk, 1, 1)}, 1_700_000_000_000_000_000)
    assert verify_bundle(bundle) == soft.public_key()
    ref = sign_bundle(soft, {"dev-1": (spk, 1, 1)}, 1_700_000_000_000_000_000)
    assert bundle.identity == ref.identity and bundle.signed_pre_keys == ref.signed_pre_keys
    for i in range(3):
        digest = keccak256(b"import", bytes([i]))
        sig = ik.sign(digest)
        assert secp256k1.recover(digest, sig) == soft.public_key()  # token ECDSA uses its own nonce
        assert secp256k1.is_low_s(sig) and sig[64] in (0, 1)
    peer = coincurve.PrivateKey().public_key.format()
    assert ik.dh(peer) == soft.dh(peer)


def test_token_import_matches_the_software_derivation(vectors: dict[str, Any], token: SoftHSMToken,
                                                      home: str) -> None:
    for n, (mnemonic, uid, secret) in enumerate(_cases(vectors)):
        h = f"{home}-{n}"
        warned: list[str] = []
        res = init_from_phrase(h, "pkcs11", stdin=_stdin(mnemonic), mode="stdin", warn=warned.append,
                               module=token.module, token=f"label:{token.label}", pin=token.pin)
        assert warned == [] and res.problems == ()
        assert res.public_key == secp256k1.compress(MemoryKey(secret).public_key())
        if uid:
            assert res.key_uid == uid
        cfg = load_config(h)
        assert cfg["identity_public_key"] == res.public_key.hex()
        assert cfg["pkcs11"]["identity_origin"] == "imported" and cfg["pkcs11"]["allow_extractable"] is False
        assert cfg["status"]["key_uid"] == res.key_uid and cfg["status"]["key_uid_origin"] == "recovery_phrase"
        assert read_status_record(h, res.public_key).key_uid == res.key_uid
        backend = open_backend(cfg, home=h)
        try:
            backend.unlock(token.pin)
            _same_key(backend, secret)
        finally:
            backend.close()
        doc = offline_document(h)
        assert doc["key_uid"] == res.key_uid and doc["installation_id"] == ""
        assert doc["public_key"] == "0x" + secp256k1.decompress(res.public_key).hex()


def _private_key_blocks(listing: str) -> list[str]:
    """pkcs11-tool prints each object as an unindented header line followed by indented attribute lines."""
    return [b for b in re.split(r"\n(?=\S)", listing) if b.startswith("Private Key Object")]


def test_pkcs11_tool_shows_the_imported_key_sensitive_not_never_extractable(vectors: dict[str, Any],
                                                                            token: SoftHSMToken, home: str) -> None:
    mnemonic, _, _ = _cases(vectors)[0]
    init_from_phrase(home, "pkcs11", stdin=_stdin(mnemonic), mode="stdin",
                     module=token.module, token=f"label:{token.label}", pin=token.pin)
    label = load_config(home)["pkcs11"]["identity_label"]
    listing = token.pkcs11_tool("--list-objects", login=True)
    blocks = [b for b in _private_key_blocks(listing) if f"label:      {label}" in b]
    assert len(blocks) == 1, listing
    access = next(line for line in blocks[0].splitlines() if line.strip().startswith("Access:"))
    flags = {f.strip() for f in access.split(":", 1)[1].split(",")}
    assert "sensitive" in flags
    # imported: the token knows it was not born there, so it does not claim these
    assert "never extractable" not in flags and "local" not in flags and "extractable" not in flags
    # the first signed prekey was generated on the token: that one does claim them
    spk = [b for b in _private_key_blocks(listing) if f"label:      {label}" not in b]
    assert spk and "never extractable" in spk[0] and "local" in spk[0]


def test_software_import_matches_and_bad_checksum_warns_but_derives(vectors: dict[str, Any], home: str) -> None:
    mnemonic, uid, secret = _cases(vectors)[0]
    res = init_from_phrase(home, "software", stdin=_stdin(mnemonic), mode="stdin", passphrase="pw",
                           scrypt_n=1 << 10)
    assert res.key_uid == uid
    backend = open_backend(load_config(home), home=home)
    try:
        backend.unlock("pw")
        _same_key(backend, secret)
        digest = keccak256(b"deterministic")
        assert backend.identity().sign(digest) == MemoryKey(secret).sign(digest)  # RFC 6979 in software
    finally:
        backend.close()

    warned: list[str] = []
    h2 = home + "-bad"
    res2 = init_from_phrase(h2, "software", stdin=_stdin(BAD_CHECKSUM), mode="stdin", warn=warned.append,
                            passphrase="pw", scrypt_n=1 << 10)
    assert len(warned) == 1 and "checksum" in warned[0] and "abandon" not in warned[0]
    with pytest.warns(Warning):
        expected = derive_identity(BAD_CHECKSUM)
    assert res2.public_key == expected.chat_public_key and res2.key_uid == expected.key_uid
    expected.wipe()


def test_failures_leave_no_home_and_no_token_objects(vectors: dict[str, Any], token: SoftHSMToken,
                                                     home: str) -> None:
    mnemonic, _, _ = _cases(vectors)[0]
    with pytest.raises(Exception) as ei:
        init_from_phrase(home, "pkcs11", stdin=_stdin(mnemonic), mode="stdin",
                         module=token.module, token=f"label:{token.label}", pin="0000")
    assert "PIN" in type(ei.value).__name__ or "pin" in str(ei.value).lower()
    assert not os.path.exists(os.path.join(home, "config.json"))
    assert _private_key_blocks(token.pkcs11_tool("--list-objects", login=True)) == []
    for bad in ("", "   \n", "x" * 2000):  # nothing usable on stdin: refused before anything is created
        with pytest.raises(ValueError):
            init_from_phrase(home, "pkcs11", stdin=io.BytesIO(bad.encode()), mode="stdin",
                             module=token.module, token=f"label:{token.label}", pin=token.pin)
    assert _private_key_blocks(token.pkcs11_tool("--list-objects", login=True)) == []
    init_from_phrase(home, "pkcs11", stdin=_stdin(mnemonic), mode="stdin",
                     module=token.module, token=f"label:{token.label}", pin=token.pin)
    before = open(os.path.join(home, "config.json"), "rb").read()
    consumed = _stdin(mnemonic)
    with pytest.raises(KeyExists):  # a provisioned home is refused before the phrase is even read
        init_from_phrase(home, "pkcs11", stdin=consumed, mode="stdin",
                         module=token.module, token=f"label:{token.label}", pin=token.pin)
    assert consumed.tell() == 0
    assert open(os.path.join(home, "config.json"), "rb").read() == before
    assert len(_private_key_blocks(token.pkcs11_tool("--list-objects", login=True))) == 2  # IK + SPK 1


def test_record_refuses_another_identity_and_ignores_foreign_sections(vectors: dict[str, Any], home: str) -> None:
    mnemonic, _, _ = _cases(vectors)[0]
    init_from_phrase(home, "software", stdin=_stdin(mnemonic), mode="stdin", passphrase="pw", scrypt_n=1 << 10)
    path = os.path.join(home, "config.json")
    before = open(path, "rb").read()
    with pytest.warns(Warning):
        other = derive_identity(BAD_CHECKSUM)
    with pytest.raises(IdentityMismatchError):
        record_phrase_identity(home, other)
    assert open(path, "rb").read() == before
    # a status section is only believed for the key it was written with
    rec = read_status_record(home, other.chat_public_key)
    assert rec.key_uid_origin == "chat_key" and rec.key_uid != other.key_uid
    other.wipe()
    cfg = json.loads(before)
    for junk in ({"key_uid": "0x12"}, {"key_uid": 5}, "nope", {"key_uid": cfg["status"]["key_uid"].upper()}):
        cfg["status"] = junk
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        pub = bytes.fromhex(cfg["identity_public_key"])
        assert read_status_record(home, pub).key_uid_origin == "chat_key"


def test_migrating_a_phrase_home_to_the_token_keeps_its_key_uid(vectors: dict[str, Any], token: SoftHSMToken,
                                                                home: str) -> None:
    from backends.home import migrate_to_token

    mnemonic, uid, secret = _cases(vectors)[0]
    init_from_phrase(home, "software", stdin=_stdin(mnemonic), mode="stdin", passphrase="pw", scrypt_n=1 << 10)
    cfg = migrate_to_token(home, module=token.module, token=f"label:{token.label}", pin=token.pin,
                           passphrase_source=lambda what: "pw", remove_software_key=True)
    assert cfg["backend"] == "pkcs11" and cfg["status"]["key_uid"] == uid
    assert offline_document(home)["key_uid"] == uid
    backend = open_backend(load_config(home), home=home)
    try:
        backend.unlock(token.pin)
        _same_key(backend, secret)
    finally:
        backend.close()
