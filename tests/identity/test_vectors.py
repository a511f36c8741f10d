"""Every shared Status identity vector: upstream ones (status-go, nim-status) and the fully derived identity."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from agent.core import secp256k1
from agent.core.hashing import keccak256
from agent.core.identity import (
    PATHS,
    PhraseProblem,
    contact_code,
    derive_identity,
    derive_path,
    derive_secrets,
    key_uid,
    legacy_key,
    master_key,
    parse_peer_identity,
    parse_share_link,
    phrase_to_seed,
    share_link,
    zq3_decode,
    zq3_encode,
)
from agent.identity.record import StatusRecord
from agent.identity.whoami import identity_document


def eip55(addr20: bytes) -> str:
    """EIP-55 mixed-case checksum address (test helper; the vectors write addresses this way)."""
    h = addr20.hex()
    digest = keccak256(h.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(h))


def priv_hex(secret: bytearray) -> str:
    return bytes(secret).hex()


def pub_of(secret: bytes | bytearray) -> bytes:
    import coincurve

    return bytes(coincurve.PrivateKey(bytes(secret)).public_key.format(compressed=False))


def unhex(s: str) -> bytes:
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


def test_paths_match_the_vector_table(vectors: dict[str, Any]) -> None:
    assert PATHS == vectors["paths"]


def test_status_go_trezor_vector(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["status_go_generator_test_TREZOR"]
    seed = phrase_to_seed(v["mnemonic"], v["bip39_passphrase"])
    master = master_key(seed)
    assert master.xprv() == v["extendedMasterKey"]
    k0 = derive_path(master, "m/44'/60'/0'/0/0")
    assert "0x" + priv_hex(k0.secret) == v["m/44'/60'/0'/0/0"]["private_key"]
    assert "0x" + k0.public_key(False).hex() == v["m/44'/60'/0'/0/0"]["public_key"]
    assert eip55(secp256k1.address(k0.public_key())) == v["m/44'/60'/0'/0/0"]["address"]
    k1 = derive_path(master, "m/44'/60'/0'/0/1")
    assert eip55(secp256k1.address(k1.public_key())) == v["m/44'/60'/0'/0/1"]["address"]


def test_nim_status_chat_key_vector(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["nim_status_bip32_chat_key"]
    _, secrets = derive_secrets(
        v["mnemonic"], {"w": "m/44'/60'/0'/0/0", "c": "m/43'/60'/1581'/0'/0"}, v["bip39_passphrase"]
    )
    assert priv_hex(secrets["w"]) == v["m/44'/60'/0'/0/0"]["private_key"]
    assert priv_hex(secrets["c"]) == v["m/43'/60'/1581'/0'/0"]["private_key"]
    assert pub_of(secrets["c"]).hex() == v["m/43'/60'/1581'/0'/0"]["public_key"]
    ident = derive_identity(v["mnemonic"])
    assert priv_hex(ident.chat_secret) == v["m/43'/60'/1581'/0'/0"]["private_key"]
    assert ident.problems == ()
    # further values for this phrase from the facts note §1.7 (Go and Python agreed)
    assert ident.key_uid == "0x2e3a8410bdc374d2e9961c1edbb1df6bd91b8ce3d38cd13d8f4bcf4ddd1aefc1"
    assert zq3_encode(ident.chat_public_key) == "zQ3shrEu6961ypGZQ7vXSqtWxbsURELpvGdA7yLGgZANqSQAZ"


def test_key_uid_of_imported_key(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["nim_status_keyuid_of_imported_key"]
    assert key_uid(unhex(v["public_key"])) == v["key_uid"]
    assert key_uid(secp256k1.compress(unhex(v["public_key"]))) == v["key_uid"]  # either SEC1 form


def test_multiformat_cases(vectors: dict[str, Any]) -> None:
    cases = vectors["upstream"]["multiformat"]["cases"]
    assert cases
    for case in cases:
        pub = unhex(case["public_key"])
        assert zq3_encode(pub) == case["zQ3"]
        assert zq3_decode(case["zQ3"]) == secp256k1.compress(pub)
        assert parse_peer_identity(case["public_key"]) == secp256k1.compress(pub)
        if "multibase_hex" in case:
            assert "f" + (b"\xe7\x01" + secp256k1.compress(pub)).hex() == case["multibase_hex"]


def test_share_urls(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["share_urls"]
    pub = unhex(v["fragment_public_key"])
    assert share_link(pub) == v["user_url_with_chat_key"]
    assert parse_share_link(v["user_url_with_chat_key"]) == secp256k1.compress(pub)
    assert parse_share_link(v["user_url_with_data"]) == secp256k1.compress(pub)
    assert parse_peer_identity(v["user_url_with_data"]) == secp256k1.compress(pub)


@pytest.mark.parametrize("name", ["abandon_about_empty"])
def test_fully_derived_identity(vectors: dict[str, Any], name: str) -> None:
    ident_v = vectors["identities"][name]
    check_identity(ident_v)


def check_identity(v: dict[str, Any]) -> None:
    seed = phrase_to_seed(v["mnemonic"], v["bip39_passphrase"])
    assert bytes(seed).hex() == v["seed"]
    master = master_key(seed)
    assert master.xprv() == v["master_xprv"]
    assert "0x" + master.public_key(False).hex() == v["master_public_key"]
    assert key_uid(master.public_key()) == v["key_uid"]
    assert eip55(secp256k1.address(master.public_key())) == v["master_address"]
    for name, d in v["derived"].items():
        assert PATHS[name] == d["path"]
        k = derive_path(master, d["path"])
        assert "0x" + priv_hex(k.secret) == d["private_key"], name
        assert "0x" + k.public_key(False).hex() == d["public_key"], name
        assert eip55(secp256k1.address(k.public_key())) == d["address"], name

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid phrase must not warn
        ident = derive_identity(v["mnemonic"], v["bip39_passphrase"])
    c = v["chat"]
    assert "0x" + priv_hex(ident.chat_secret) == v["derived"]["chat"]["private_key"]
    assert "0x" + ident.encryption_public_key.hex() == v["derived"]["encryption"]["public_key"]
    assert "0x" + ident.master_public_key.hex() == v["master_public_key"]
    assert ident.key_uid == v["key_uid"]
    assert ident.problems == ()
    pub = ident.chat_public_key
    assert legacy_key(pub) == c["public_key_uncompressed"]
    assert "0x" + pub.hex() == c["public_key_compressed"]
    assert zq3_encode(pub) == c["compressed_key_zQ3"]
    assert share_link(pub) == c["share_url_with_chat_key"]
    cc = contact_code(pub)
    assert cc.chat_id == c["contact_code_chat_id"]
    assert cc.content_topic == c["contact_code_content_topic"]
    assert cc.sym_key.hex() == c["contact_code_symkey"]
    doc = identity_document(pub, StatusRecord(ident.key_uid, "recovery_phrase"), "inst-1", visual=False, contact=False)
    fields = {k: doc[k] for k in ("public_key", "compressed_key", "key_uid", "installation_id", "share_link")}
    assert fields == {
        "public_key": c["public_key_uncompressed"],
        "compressed_key": c["compressed_key_zQ3"],
        "key_uid": v["key_uid"],
        "installation_id": "inst-1",
        "share_link": c["share_url_with_chat_key"],
    }
    for form in (c["public_key_uncompressed"], c["public_key_compressed"], c["compressed_key_zQ3"],
                 c["share_url_with_chat_key"]):
        assert parse_peer_identity(form) == pub


def test_bad_checksum_phrase_derives_with_a_warning() -> None:
    # facts note §1.7: status-go derives from this invalid phrase; Go and Python agree on these values
    phrase = "test test test test test test test test test test test test"
    with pytest.warns(UserWarning) as rec:
        ident = derive_identity(phrase)
    assert ident.problems == (PhraseProblem.BAD_CHECKSUM,)
    assert len(rec) == 1 and "checksum" in str(rec[0].message) and "test test" not in str(rec[0].message)
    assert ident.key_uid == "0x18b32060da04bd2a226c67cdd65f7d623f2309a1851f64a4f8ddff9390bcae38"
    assert legacy_key(ident.chat_public_key) == (
        "0x042ef464bca2a68b9d64642b59fdd49506b62a76fc4bfabbb89ca1e85eca6324237d5aa00a250867e491dda3068760ab"
        "a8d3e166063c3e205cfecbda32ef7ac6d8"
    )


def test_leading_zero_regression() -> None:
    # facts note §1.2: status-go once dropped a leading zero byte of a child key; this phrase exercises it
    phrase = "radar blur cabbage chef fix engine embark joy scheme fiction master release"
    _, s = derive_secrets(phrase, {"w": "m/44'/60'/0'/0/0"})
    assert len(s["w"]) == 32
    assert eip55(secp256k1.address(pub_of(s["w"]))) == "0xaC39b311DCEb2A4b2f5d8461c1cdaF756F4F7Ae9"
