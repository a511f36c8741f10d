"""Contact-code filter: forms of the same key agree, bad inputs are refused."""

from __future__ import annotations

import hashlib

import pytest

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.hashing import keccak256
from agent.core.identity import contact_code
from agent.core.identity.contact_code import SYMKEY_PBKDF2_ITERATIONS, content_topic, symmetric_key

PUB = bytes.fromhex("031c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796")


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
