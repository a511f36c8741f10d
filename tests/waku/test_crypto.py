"""ECIES and AES-GCM wires: js-waku's vectors byte for byte, every negative at its stage, and no ECDH spent on
what can be rejected without one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import (
    BadEphemeralKey,
    DecryptFailed,
    MalformedKey,
    WireTooShort,
)
from agent.core.hashing import keccak256
from agent.core.waku import ecies, symmetric
from backends.memory import MemoryKey
from tests.waku.helpers import CountingKey, h


def _vec(doc: dict[str, Any], vid: str) -> dict[str, Any]:
    v: dict[str, Any] = next(x for x in doc["vectors"] if x["id"] == vid)
    return v


def _neg(doc: dict[str, Any], nid: str) -> dict[str, Any]:
    n: dict[str, Any] = next(x for x in doc["negatives"] if x["id"] == nid)
    return n


# --- ECIES ---------------------------------------------------------------------------------------------------------


def test_ecies_vectors_open_and_reseal_byte_exact(doc: dict[str, Any]) -> None:
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    for v in (x for x in doc["vectors"] if x["mode"] == "asymmetric"):
        wire = h(v["wire"])
        assert ecies.open_asymmetric(wire, me) == h(v["plaintext_envelope"]), v["id"]
        e = v["ecies"]
        again = ecies.seal_asymmetric(
            h(v["plaintext_envelope"]), h(doc["keys"]["recipient_pub"]), ephemeral_secret=h(e["ephemeral_priv"]),
            iv=h(e["iv"]),
        )  # fmt: skip
        assert again == wire, v["id"]
        keys = ecies.kdf(h(e["shared_x"]))
        assert (keys.kdf_out, keys.ke, keys.km) == (h(e["kdf_out"]), h(e["ke"]), h(e["mac_key"]))
        assert len(wire) == len(v["plaintext_envelope"]) // 2 + ecies.OVERHEAD
    assert me.dh_calls == 12 and me.sign_calls == 0


def test_ecies_accepts_a_compressed_recipient_key(doc: dict[str, Any]) -> None:
    v = _vec(doc, "asym-signed-1")
    e = v["ecies"]
    pub = secp256k1.compress(h(doc["keys"]["recipient_pub"]))
    wire = ecies.seal_asymmetric(h(v["plaintext_envelope"]), pub, ephemeral_secret=h(e["ephemeral_priv"]), iv=h(e["iv"]))
    assert wire == h(v["wire"])


@pytest.mark.parametrize(
    "nid", ["neg-asym-ct-bitflip", "neg-asym-mac-bitflip", "neg-asym-iv-bitflip", "neg-asym-other-ephemeral",
            "neg-asym-other-recipient"],
)  # fmt: skip
def test_ecies_mac_failures_cost_exactly_one_dh(doc: dict[str, Any], nid: str) -> None:
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    with pytest.raises(DecryptFailed):
        ecies.open_asymmetric(h(_neg(doc, nid)["wire"]), me)
    assert me.dh_calls == 1


@pytest.mark.parametrize(
    ("nid", "error"),
    [("neg-asym-R-off-curve", BadEphemeralKey), ("neg-asym-R-bad-prefix", BadEphemeralKey),
     ("neg-asym-truncated", WireTooShort)],
)  # fmt: skip
def test_ecies_cheap_rejections_spend_no_dh(doc: dict[str, Any], nid: str, error: type[Exception]) -> None:
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    with pytest.raises(error):
        ecies.open_asymmetric(h(_neg(doc, nid)["wire"]), me)
    assert me.dh_calls == 0


def test_other_recipient_opens_with_its_own_key(doc: dict[str, Any]) -> None:
    wire = h(_neg(doc, "neg-asym-other-recipient")["wire"])
    env = ecies.open_asymmetric(wire, MemoryKey(h(doc["keys"]["other_recipient_priv"])))
    assert env[0] & 0x04 and len(env) % 256 == 0


@pytest.mark.parametrize("prefix", [0x00, 0x02, 0x03, 0x05, 0x06, 0x07, 0xFF])
def test_every_non_04_prefix_is_rejected_before_dh(doc: dict[str, Any], prefix: int) -> None:
    wire = bytearray(h(_vec(doc, "asym-signed-0")["wire"]))
    wire[0] = prefix
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    with pytest.raises(BadEphemeralKey):
        ecies.open_asymmetric(bytes(wire), me)
    assert me.dh_calls == 0


def test_every_truncation_of_an_ecies_wire_is_typed(doc: dict[str, Any]) -> None:
    wire = h(_vec(doc, "asym-signed-0")["wire"])
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    for cut in range(len(wire)):
        with pytest.raises((WireTooShort, DecryptFailed)):
            ecies.open_asymmetric(wire[:cut], me)
    assert me.dh_calls == len(wire) - ecies.OVERHEAD - 1  # only lengths with a ciphertext reached the ECDH


@pytest.mark.parametrize("bad", [None, "04ab", 17, [4]])
def test_ecies_wrong_types(doc: dict[str, Any], bad: object) -> None:
    me = CountingKey(h(doc["keys"]["recipient_priv"]))
    with pytest.raises(WireTooShort):
        ecies.open_asymmetric(bad, me)  # type: ignore[arg-type]
    assert me.dh_calls == 0


def test_ecies_seal_rejects_bad_inputs(doc: dict[str, Any]) -> None:
    pub = h(doc["keys"]["recipient_pub"])
    with pytest.raises(MalformedKey):
        ecies.seal_asymmetric(b"x" * 256, pub[:-1] + bytes([pub[-1] ^ 1]), ephemeral_secret=b"\x01" * 32, iv=b"\x00" * 16)
    with pytest.raises(MalformedKey):
        ecies.seal_asymmetric(b"x" * 256, pub, ephemeral_secret=b"\x00" * 32, iv=b"\x00" * 16)
    with pytest.raises(MalformedKey):
        ecies.seal_asymmetric(b"x" * 256, pub, ephemeral_secret=b"\xff" * 32, iv=b"\x00" * 16)
    with pytest.raises(ValueError):
        ecies.seal_asymmetric(b"x" * 256, pub, ephemeral_secret=b"\x01" * 32, iv=b"\x00" * 15)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=114, max_size=600))
def test_ecies_fuzz_only_typed_errors(data: bytes) -> None:
    me = CountingKey(keccak256(b"waku-test/fuzz"))
    with pytest.raises((WireTooShort, BadEphemeralKey, DecryptFailed)):
        ecies.open_asymmetric(data, me)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.binary(min_size=16, max_size=16))
def test_ecies_fuzz_with_a_valid_R(tail: bytes, iv: bytes) -> None:
    me = CountingKey(keccak256(b"waku-test/fuzz"))
    r = MemoryKey(keccak256(tail)).public_key()
    wire = secp256k1.decompress(r) + iv + tail + b"\x00" * 32
    with pytest.raises(DecryptFailed):
        ecies.open_asymmetric(wire, me)
    assert me.dh_calls == 1


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_ecies_round_trip(envelope: bytes) -> None:
    me = MemoryKey(keccak256(b"waku-test/me"))
    wire = ecies.seal_asymmetric(envelope or b"\x00", me.public_key(), ephemeral_secret=keccak256(envelope), iv=b"\x11" * 16)
    assert ecies.open_asymmetric(wire, me) == (envelope or b"\x00")


def test_backend_errors_from_dh_propagate_unchanged(doc: dict[str, Any]) -> None:
    class Gone(RuntimeError):
        pass

    class Absent(CountingKey):
        def dh(self, peer_public: bytes) -> bytes:
            raise Gone("token removed")

    with pytest.raises(Gone):
        ecies.open_asymmetric(h(_vec(doc, "asym-signed-0")["wire"]), Absent(b"\x01" * 32))


# --- AES-GCM -------------------------------------------------------------------------------------------------------


def test_gcm_vectors_open_and_reseal_byte_exact(doc: dict[str, Any]) -> None:
    key = h(doc["keys"]["sym_key"])
    for v in (x for x in doc["vectors"] if x["mode"] == "symmetric"):
        wire = h(v["wire"])
        assert symmetric.open_symmetric(wire, key) == h(v["plaintext_envelope"]), v["id"]
        assert symmetric.seal_symmetric(h(v["plaintext_envelope"]), key, nonce=h(v["gcm"]["iv"])) == wire
        assert wire[-12:] == h(v["gcm"]["iv"]) and wire[-28:-12] == h(v["gcm"]["tag"])


@pytest.mark.parametrize(
    ("nid", "error"),
    [("neg-sym-ct-bitflip", DecryptFailed), ("neg-sym-tag-bitflip", DecryptFailed),
     ("neg-sym-iv-bitflip", DecryptFailed), ("neg-sym-truncated", WireTooShort)],
)  # fmt: skip
def test_gcm_negatives(doc: dict[str, Any], nid: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        symmetric.open_symmetric(h(_neg(doc, nid)["wire"]), h(doc["keys"]["sym_key"]))


def test_gcm_wrong_key(doc: dict[str, Any]) -> None:
    n = _neg(doc, "neg-sym-wrong-key")
    with pytest.raises(DecryptFailed):
        symmetric.open_symmetric(h(n["wire"]), h(n["wrong_sym_key"]))
    assert symmetric.open_symmetric(h(n["wire"]), h(doc["keys"]["sym_key"]))  # the same wire opens with the key


def test_gcm_every_bit_flip_and_truncation(doc: dict[str, Any]) -> None:
    key = h(doc["keys"]["sym_key"])
    wire = h(_vec(doc, "sym-signed-0")["wire"])
    for pos in range(len(wire)):
        bad = bytearray(wire)
        bad[pos] ^= 0x80
        with pytest.raises(DecryptFailed):
            symmetric.open_symmetric(bytes(bad), key)
    for cut in range(len(wire)):
        with pytest.raises((WireTooShort, DecryptFailed)):
            symmetric.open_symmetric(wire[:cut], key)


@pytest.mark.parametrize("key", [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_gcm_key_must_be_32_bytes(key: object) -> None:
    with pytest.raises(MalformedKey):
        symmetric.open_symmetric(b"\x00" * 300, key)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey):
        symmetric.seal_symmetric(b"\x00" * 256, key, nonce=b"\x00" * 12)  # type: ignore[arg-type]


def test_gcm_nonce_must_be_12_bytes() -> None:
    with pytest.raises(ValueError):
        symmetric.seal_symmetric(b"\x00" * 256, b"\x00" * 32, nonce=b"\x00" * 16)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_gcm_fuzz_is_decrypt_failed_or_too_short(data: bytes) -> None:
    try:
        symmetric.open_symmetric(data, b"\x42" * 32)
    except (WireTooShort, DecryptFailed):
        return
    raise AssertionError("random bytes authenticated under AES-GCM")


def test_mac_is_compared_in_constant_time(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The tag check goes through hmac.compare_digest (no early-exit ==), for good and bad tags alike."""
    import hmac as _hmac

    calls: list[tuple[bytes, bytes]] = []
    real = _hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_hmac, "compare_digest", spy)
    me = MemoryKey(h(doc["keys"]["recipient_priv"]))
    ecies.open_asymmetric(h(_vec(doc, "asym-signed-0")["wire"]), me)
    with pytest.raises(DecryptFailed):
        ecies.open_asymmetric(h(_neg(doc, "neg-asym-mac-bitflip")["wire"]), me)
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)
