"""Contact-code filter and whoami fields: forms of the same key agree, bad inputs are refused."""

from __future__ import annotations

import hashlib

import pytest

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.hashing import keccak256
from agent.core.identity import contact_code, whoami_fields
from agent.core.identity.contact_code import SYMKEY_PBKDF2_ITERATIONS, content_topic, symmetric_key

PUB = bytes.fromhex("031c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796")
UID = "0x16f5b9c7657df5e0b45016292d852a36622fb39b63c28017ccf21633270858f1"


def test_contact_code_is_the_same_for_both_sec1_forms() -> None:
    a, b = contact_code(PUB), contact_code(secp256k1.decompress(PUB))
    assert a == b
    assert a.chat_id.endswith("-contact-code") and a.chat_id.startswith("0x04") and len(a.chat_id) == 145
    assert a.pubsub_topic == ""


def test_topic_and_key_formulas() -> None:
    name = "some-public-chat"
    assert content_topic(name) == "/waku/1/0x" + keccak256(name.encode())[:4].hex() + "/rfc26"
    assert SYMKEY_PBKDF2_ITERATIONS == 65356  # not 65536: the value status-go and Whisper use
    assert symmetric_key(name) == hashlib.pbkdf2_hmac("sha256", name.encode(), b"", 65356, 32)
    assert symmetric_key(name) != hashlib.pbkdf2_hmac("sha256", name.encode(), b"", 65536, 32)


def test_contact_code_rejects_bad_keys() -> None:
    for bad in (b"", PUB[:-1], b"\x05" + PUB[1:], bytes(65)):
        with pytest.raises(MalformedKey):
            contact_code(bad)


def test_whoami_fields_refuse_bad_inputs() -> None:
    ok = whoami_fields(PUB, UID, "a1b2")
    assert set(ok) == {"public_key", "compressed_key", "key_uid", "installation_id", "share_link"}
    for uid in ("", UID[2:], UID.upper(), UID[:-1], UID + "0", "0x" + "g" * 64):
        with pytest.raises(MalformedKey):
            whoami_fields(PUB, uid, "a1b2")
    with pytest.raises(MalformedKey):
        whoami_fields(PUB, UID, "")
    with pytest.raises(MalformedKey):
        whoami_fields(PUB[:-1], UID, "a1b2")


def test_whoami_text_lists_every_field_once() -> None:
    from agent.core.identity import whoami_text

    fields = whoami_fields(PUB, UID, "a1b2")
    text = whoami_text(fields)
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("Chat key:") and lines[0].endswith(fields["compressed_key"])
    for value in fields.values():
        assert sum(value in line for line in lines) >= 1


def test_whoami_text_with_visual_fields() -> None:
    from agent.core.identity import visual_fields, whoami_text

    fields: dict[str, object] = {**whoami_fields(PUB, UID, "a1b2"), **visual_fields(PUB)}
    lines = whoami_text(fields).splitlines()
    assert lines[0] == "Name:         Darkviolet Overcooked Bittern"  # the shared vector's alias
    assert lines[1].startswith("Emoji hash:") and len(lines) == 7
