"""Negotiated secret/key/topic, partitioned and contact-code topics against status-go's known answers."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.waku import topics
from backends.memory import MemoryKey
from tests.waku.helpers import CountingKey, h

# status-identity-facts.md §4.1/§4.2 (Python and status-go agree): the abandon…about chat key
ABANDON_CHAT_KEY = h(
    "041c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796"
    "6f0b3648e289857fe223ed0230f7383c420ec303b620f07503e1ac66beab0837"
)


def test_negotiated_matches_status_go(doc: dict[str, Any]) -> None:
    n = doc["status"]["negotiated"]
    me = CountingKey(h(n["a_priv"]))
    secret = topics.negotiated_secret(me, h(n["b_pub"]))
    assert me.dh_calls == 1
    assert secret == h(n["shared_x"])
    assert topics.negotiated_key(secret) == h(n["sym_key"])
    assert topics.topic_bytes(topics.negotiated_name(secret)) == h(n["topic"])
    assert topics.negotiated_topic(secret) == n["content_topic"]


def test_negotiated_secret_is_symmetric(doc: dict[str, Any]) -> None:
    a = MemoryKey(h(doc["keys"]["signer_priv"]))
    b = MemoryKey(h(doc["keys"]["recipient_priv"]))
    assert topics.negotiated_secret(a, b.public_key()) == topics.negotiated_secret(b, a.public_key())


def test_negotiated_iterations_are_65356_not_65536() -> None:
    import hashlib

    secret = bytes(range(32))
    wrong = hashlib.pbkdf2_hmac("sha256", secret.hex().encode(), b"", 65536, 32)
    assert topics.PBKDF2_ITERATIONS == 65356 and topics.negotiated_key(secret) != wrong


def test_negotiated_refuses_bad_peer_before_the_token() -> None:
    me = CountingKey(b"\x07" * 32)
    for bad in (b"", b"\x04" + b"\x00" * 64, b"\x02" + b"\xff" * 32, b"\x05" + b"\x01" * 64):
        with pytest.raises(MalformedKey):
            topics.negotiated_secret(me, bad)
    assert me.dh_calls == 0


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_negotiated_derivations_need_32_bytes(bad: object) -> None:
    with pytest.raises(MalformedKey):
        topics.negotiated_key(bad)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey):
        topics.negotiated_topic(bad)  # type: ignore[arg-type]


def test_partitioned_matches_status_go(doc: dict[str, Any]) -> None:
    p = doc["status"]["partitioned"]
    pub = h(p["recipient_pub"])
    assert topics.partitioned_name(pub) == p["topic_string"]
    assert topics.partitioned_topic(pub) == p["content_topic"]
    assert topics.partitioned_topic(secp256k1.compress(pub)) == p["content_topic"]
    assert topics.topic_bytes(p["topic_string"]) == h(p["topic"])


def test_identity_vector_topics() -> None:
    assert topics.partitioned_name(ABANDON_CHAT_KEY) == "contact-discovery-198"
    assert topics.partitioned_topic(ABANDON_CHAT_KEY) == "/waku/1/0xdda268c7/rfc26"
    assert topics.contact_code_name(ABANDON_CHAT_KEY) == "0x" + ABANDON_CHAT_KEY.hex() + "-contact-code"
    assert topics.contact_code_topic(secp256k1.compress(ABANDON_CHAT_KEY)) == "/waku/1/0x319bf251/rfc26"
    assert topics.contact_code_key(ABANDON_CHAT_KEY) == h(
        "8a664154ddf2e4c2b99762476ed579d7a8ba31c7c14a8830ce66beff5f33ba06"
    )


@pytest.mark.parametrize("bad", [b"", b"\x04" * 65, b"\x02" + b"\xff" * 32, b"\x01" * 33])
def test_topics_of_bad_keys(bad: bytes) -> None:
    for fn in (topics.partitioned_topic, topics.contact_code_topic, topics.contact_code_key):
        with pytest.raises(MalformedKey):
            fn(bad)
