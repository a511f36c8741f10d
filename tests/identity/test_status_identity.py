"""Unit tests of agent/status_identity.py: the socket's identity-text rule, the whoami document and its text."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import BadIdentity, MalformedKey
from agent.core.identity import legacy_key, share_link, zq3_encode
from agent.status_identity import StatusRecord, identity_document, identity_text, identity_text_key

PUB = bytes.fromhex("031c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796")


def test_text_forms_give_the_key_and_raw_lengths_are_left_alone() -> None:
    for form in (legacy_key(PUB), "0x" + PUB.hex(), PUB.hex(), zq3_encode(PUB), share_link(PUB),
                 " " + zq3_encode(PUB) + "\n"):
        assert identity_text_key(form.encode()) == PUB
    assert identity_text_key(PUB) is None and identity_text_key(secp256k1.decompress(PUB)) is None
    assert identity_text_key(b"a" * 33) is None and identity_text_key(b"a" * 65) is None  # raw by length
    for not_text in (b"", b"   ", b"\n", b"\x02" * 32, b"zQ3\x00abc", "zQ3é".encode(), b"\xff" * 70):
        assert identity_text_key(not_text) is None


def test_bad_text_is_bad_identity_with_the_reason() -> None:
    good = zq3_encode(PUB)
    cases = [good[:-1], good + "1", good[:10] + ("2" if good[10] != "2" else "3") + good[11:], "zQ3", "hello",
             "https://status.app/u#" + good[:-1], "https://example.com/u#" + good, legacy_key(PUB)[:-2],
             "0x05" + legacy_key(PUB)[4:], good.replace("z", "Z", 1), "0x" + PUB.hex() + "00"]
    for bad in cases:
        with pytest.raises(BadIdentity) as ei:
            identity_text_key(bad.encode())
        assert ei.value.code == "BAD_IDENTITY" and str(ei.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_none_a_key_or_bad_identity(data: bytes) -> None:
    try:
        got = identity_text_key(data)
    except BadIdentity:
        return
    assert got is None or (len(got) == 33 and secp256k1.compress(got) == got)


def test_identity_document_fields_and_text() -> None:
    pub = coincurve.PrivateKey().public_key.format()
    uid = "0x" + hashlib.sha256(secp256k1.decompress(pub)).hexdigest()
    doc = identity_document(secp256k1.decompress(pub), StatusRecord(uid, "chat_key"), "inst-1")
    assert doc["identity"] == pub.hex() and doc["public_key"] == legacy_key(pub)
    assert len(str(doc["public_key"])) == 132 and str(doc["compressed_key"]).startswith("zQ3sh")
    assert doc["share_link"] == share_link(pub) and doc["installation_id"] == "inst-1"
    assert {"alias", "emoji_hash", "color_hash", "color_id", "contact_code_topic", "contact_code_key"} <= set(doc)
    assert "encryption_public_key" not in doc
    lean = identity_document(pub, StatusRecord(uid, "recovery_phrase", "0x04ab"), "", visual=False, contact=False)
    assert "alias" not in lean and "contact_code_topic" not in lean and lean["encryption_public_key"] == "0x04ab"
    text = identity_text(doc)
    assert "not imported from a recovery phrase" in text and "inst-1" in text
    assert "unknown" in identity_text(lean) and "not imported" not in identity_text(lean)
    with pytest.raises(MalformedKey):
        identity_document(pub[:-1], StatusRecord(uid, "chat_key"), "")
