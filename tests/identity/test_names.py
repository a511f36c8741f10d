"""Alias, emoji hash, colour hash and colour id against status-go's tests and the shared vectors."""

from __future__ import annotations

from typing import Any

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.identity import names
from agent.core.identity.names import alias, alias_from_seed, color_hash, color_id, emoji_hash


def unhex(s: str) -> bytes:
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


def test_data_files_have_the_documented_sizes() -> None:
    assert len(names._adjectives()) == 1389 and len(names._animals()) == 1704
    assert len(names._lines("emojis.txt")) == 2800 and len(names._emojis()) == 2757
    assert names._emojis()[0] == "\U0001f600"
    assert len(set(names._emojis())) == 2757  # distinct symbols, or the hash would be ambiguous


def test_upstream_alias_vectors(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["alias"]
    assert alias_from_seed(42) == v["seed_42"]
    assert alias(unhex(v["public_key"])) == v["alias"]
    assert alias(secp256k1.compress(unhex(v["public_key"]))) == v["alias"]


def test_upstream_emoji_and_color_vectors(vectors: dict[str, Any]) -> None:
    v = vectors["upstream"]["emoji_and_color_hash"]
    pub = unhex(v["public_key"])
    assert emoji_hash(pub) == v["emoji_hash"]
    assert color_hash(pub) == v["color_hash"]


def test_identity_vectors(vectors: dict[str, Any]) -> None:
    for ident in vectors["identities"].values():
        c = ident["chat"]
        pub = unhex(c["public_key_uncompressed"])
        assert alias(pub) == c["alias"]
        assert emoji_hash(pub) == c["emoji_hash"]
        assert color_hash(pub) == c["color_hash"]
        assert color_id(pub) == c["color_id"]


def test_more_aliases_from_the_facts_note() -> None:
    # facts note §1.7 (Go and Python agreed): the nim-status chat key and the bad-checksum phrase's key
    nim = "04ac5a45f2a90052cee10b22b74832f2deb814d58e35aa3f01a249160615a238aef3a34ba86e1817fc8c5a6e93e3c5f159f6c46e922c85d47bafc4b78e07718279"
    assert alias(unhex(nim)) == "Standard Thorny Blacknorwegianelkhound"
    bad = (
        "042ef464bca2a68b9d64642b59fdd49506b62a76fc4bfabbb89ca1e85eca6324237d5aa00a250867e491dda3068760aba8d3e166"
        "063c3e205cfecbda32ef7ac6d8"
    )
    assert alias(unhex(bad)) == "Curly Precious Oropendula"


@pytest.mark.parametrize(
    ("pub", "last"),
    [  # status-go emojihash_test.go edge keys: 13 × index 0, then index 0, 1, 2
        ("0400000000000000000000000000000000000000000000000000000000000000014218F20AE6C646B363DB68605822FB14264CA8D2587FDD6FBC750D587E76A7EE", 0),
        ("04000000000000000000000000000000000000000010000000000000000000000033600332D373318ECC2F212A30A5750D2EAC827B6A32B33D326CCF369B12B1BE", 1),
        ("040000000000000000000000000000000000000000200000000000000000000000353050BFE33B724E60A0C600FBA565A9B62217B1BD35BF9848F2AB847C598B30", 2),
    ],
)
def test_emoji_hash_edge_keys(pub: str, last: int) -> None:
    e = names._emojis()
    assert emoji_hash(unhex(pub)) == [e[0]] * 13 + [e[last]]


def test_base_conversion_and_small_color_alphabet() -> None:
    # status-go identity/utils_test.go TestToBigBase and colorhash_test.go TestColorHash (4 units × 4 colours)
    assert names._to_base(15, 16) == [15]
    assert names._to_base(495, 16) == [1, 14, 15]
    assert names._to_base(495, 30) == [16, 15]
    assert names._to_base(495, 1024) == [495]
    assert names._to_base(2048, 1024) == [2, 0]
    assert names._to_base(0, 7) == [0]
    assert names._to_base(0xFFFFFFFFFFFFFF, 2**28) == [2**28 - 1, 2**28 - 1]
    assert len(names._to_base(2**160 - 1, 2757)) == 14 and len(names._to_base(2**160 - 1, 2756)) == 15
    cases = {0x0: [[1, 0]], 0x1: [[1, 1]], 0x4: [[2, 0]], 0xF: [[4, 3]], 0xFF: [[4, 3], [4, 0]],
             0xFC: [[4, 3], [4, 0]], 0xFFFF: [[4, 3], [4, 0], [4, 3], [4, 0]]}
    for value, want in cases.items():
        assert names._color_hash(value, 4, 4) == want


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x01" * 65, unhex("0x04425da6994ea2dc4ac70727e07eca153ae92bf7609db7befb7ebdceaad348f4fc55bbe90abf9501176301db5aa103fc0eb3bc3750272a26c424a10887db2a7ea8")],
)
def test_invalid_keys_are_refused(bad: bytes) -> None:
    for fn in (alias, emoji_hash, color_hash, color_id):
        with pytest.raises(MalformedKey):
            fn(bad)


def test_alias_seed_range() -> None:
    assert alias_from_seed(0) and alias_from_seed(2**64 - 1)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            alias_from_seed(bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=secp256k1.CURVE_ORDER - 1))
def test_properties_on_random_keys(d: int) -> None:
    pub = coincurve.PrivateKey(d.to_bytes(32, "big")).public_key.format(compressed=True)
    words = alias(pub).split(" ")
    assert len(words) == 3 and words[0] in names._adjectives() and words[2] in names._animals()
    eh = emoji_hash(pub)
    assert len(eh) == 14 and all(x in names._emojis() for x in eh)
    ch = color_hash(pub)
    assert 1 <= len(ch) <= 11
    assert all(1 <= n <= 5 and 0 <= c < 32 for n, c in ch)
    assert all(a[1] != b[1] for a, b in zip(ch, ch[1:]))  # neighbouring segments never share a colour
    assert 0 <= color_id(pub) < 11
    assert (alias(pub), eh, ch, color_id(pub)) == (alias(secp256k1.decompress(pub)), emoji_hash(
        secp256k1.decompress(pub)), color_hash(secp256k1.decompress(pub)), color_id(secp256k1.decompress(pub)))
