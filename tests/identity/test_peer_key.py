"""Unit tests of agent/identity/peer_key.py: the socket's identity-text rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import BadIdentity
from agent.core.identity import legacy_key, share_link, zq3_encode
from agent.identity.peer_key import identity_text_key

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
