"""The plaintext envelope: byte-exact against js-waku's vectors, size/padding rules at every boundary, and
nothing but typed errors for any input."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import BadSignature, IdentityMismatch, MalformedEnvelope, MalformedMessage
from agent.core.hashing import keccak256
from agent.core.waku import envelope as E
from backends.memory import MemoryKey
from tests.waku.helpers import CountingKey, HighSKey, draws, h

SIGNER = MemoryKey(keccak256(b"waku-test/signer"))


def _payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def _pad(n: int) -> bytes:
    return bytes((i * 7 + 1) & 0xFF for i in range(n))


def _expected_size_len(n: int) -> int:
    return 1 if n < 256 else 2 if n < 65536 else 3


# --- known answers ---------------------------------------------------------------------------------------------


def test_every_vector_envelope_is_reproduced_and_decoded(doc: dict[str, Any]) -> None:
    signer = MemoryKey(h(doc["keys"]["signer_priv"]))
    for v in doc["vectors"]:
        pad = h(v["random_draws"]["padding"][0])
        got = E.encode_envelope(h(v["payload"]), signer=signer if v["signed"] else None, padding=draws(pad))
        assert got == h(v["plaintext_envelope"]), v["id"]
        opened = E.decode_envelope(got)
        assert opened.payload == h(v["payload"]) and opened.padding == pad
        if v["signed"]:
            assert opened.signer_pub == h(doc["keys"]["signer_pub"])
            assert opened.signature == h(v["envelope"]["signature"])
            opened.require_signer(h(doc["keys"]["signer_pub"]))
        else:
            assert opened.signer_pub is None and opened.signature is None


@pytest.mark.parametrize(
    ("payload_len", "signed", "env_len", "pad_len"),
    # waku-payload-facts.md §7
    [(0, False, 256, 254), (0, True, 256, 189), (254, False, 512, 256), (254, True, 512, 191),
     (256, False, 512, 253), (256, True, 512, 188), (1000, False, 1024, 21), (1000, True, 1280, 212),
     (70000, True, 70144, 75), (70000, False, 70144, 140)],
)  # fmt: skip
def test_size_table_from_the_facts(payload_len: int, signed: bool, env_len: int, pad_len: int) -> None:
    assert E.padding_len(payload_len, signed) == pad_len
    assert E.envelope_len(payload_len, signed) == env_len


def test_70000_bytes_use_a_three_byte_size_field() -> None:
    env = E.encode_envelope(_payload(70000), signer=SIGNER, padding=_pad)
    assert env[0] == 0x07 and env[1:4] == bytes.fromhex("701101")
    assert len(env) == 70144


# --- properties ------------------------------------------------------------------------------------------------

BOUNDARIES = [0, 1, 2, 186, 187, 188, 189, 190, 252, 253, 254, 255, 256, 257, 258, 511, 512, 513,
              65534, 65535, 65536, 65537, 69999, 70000]  # fmt: skip


@pytest.mark.parametrize("n", BOUNDARIES)
@pytest.mark.parametrize("signed", [False, True])
def test_boundaries_round_trip(n: int, signed: bool) -> None:
    _check_round_trip(n, signed, seed=1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 70000), signed=st.booleans(), seed=st.integers(0, 2**16))
def test_any_size_round_trips(n: int, signed: bool, seed: int) -> None:
    _check_round_trip(n, signed, seed)


def _check_round_trip(n: int, signed: bool, seed: int) -> None:
    payload = _payload(n, seed)
    asked: list[int] = []

    def pad(k: int) -> bytes:
        asked.append(k)
        return _pad(k)

    env = E.encode_envelope(payload, signer=SIGNER if signed else None, padding=pad)
    size_len = _expected_size_len(n)
    assert env[0] == size_len | (0x04 if signed else 0)
    assert env[1 : 1 + size_len] == n.to_bytes(size_len, "little")
    assert len(env) % 256 == 0
    assert asked == [E.padding_len(n, signed)] and 1 <= asked[0] <= 256
    assert len(env) == 1 + size_len + n + asked[0] + (65 if signed else 0)
    opened = E.decode_envelope(env)
    assert opened.payload == payload and opened.padding == _pad(asked[0])
    if signed:
        assert opened.signer_pub == secp256k1.decompress(SIGNER.public_key())
        assert secp256k1.is_low_s(env[-65:]) and env[-1] in (0, 1)
    else:
        assert opened.signer_pub is None


def test_size_field_switches() -> None:
    assert [E.size_field_len(n) for n in (0, 255, 256, 65535, 65536, E.MAX_PAYLOAD)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(MalformedEnvelope):
        E.size_field_len(E.MAX_PAYLOAD + 1)
    with pytest.raises(MalformedEnvelope):
        E.size_field_len(-1)


def test_padding_is_never_empty() -> None:
    for n in range(0, 1200):
        for signed in (False, True):
            assert 1 <= E.padding_len(n, signed) <= 256


# --- signing through KeyOps -------------------------------------------------------------------------------------


def test_token_style_high_s_signature_is_normalised() -> None:
    key = HighSKey(keccak256(b"waku-test/token"))
    env = E.encode_envelope(b"hello", signer=key, padding=_pad)
    assert key.sign_calls == 1 and key.dh_calls == 0
    assert secp256k1.is_low_s(env[-65:])
    assert E.decode_envelope(env).signer_pub == secp256k1.decompress(key.public_key())
    # and it is the same canonical signature the in-memory key produces
    assert env == E.encode_envelope(b"hello", signer=key.inner, padding=_pad)


def test_a_signature_by_another_key_is_refused_at_encode() -> None:
    class Liar(CountingKey):
        def public_key(self) -> bytes:
            return SIGNER.public_key()

    with pytest.raises(BadSignature):
        E.encode_envelope(b"x", signer=Liar(keccak256(b"other")), padding=_pad)


def test_padding_source_must_return_the_exact_length() -> None:
    with pytest.raises(ValueError):
        E.encode_envelope(b"x", signer=None, padding=lambda n: b"\x00" * (n - 1))


def test_non_bytes_payload_is_refused() -> None:
    with pytest.raises(MalformedEnvelope):
        E.encode_envelope("text", signer=None, padding=_pad)  # type: ignore[arg-type]


def test_require_signer() -> None:
    env = E.encode_envelope(b"x", signer=SIGNER, padding=_pad)
    opened = E.decode_envelope(env)
    opened.require_signer(SIGNER.public_key())
    opened.require_signer(secp256k1.decompress(SIGNER.public_key()))
    with pytest.raises(IdentityMismatch):
        opened.require_signer(MemoryKey(keccak256(b"someone")).public_key())
    with pytest.raises(BadSignature):
        E.decode_envelope(E.encode_envelope(b"x", signer=None, padding=_pad)).require_signer(SIGNER.public_key())


# --- negatives ----------------------------------------------------------------------------------------------------


def _signed_256() -> bytes:
    return E.encode_envelope(_payload(256), signer=SIGNER, padding=_pad)


def test_size_overflow_is_rejected_like_go_waku(doc: dict[str, Any]) -> None:
    neg = next(n for n in doc["negatives"] if n["id"] == "neg-asym-size-overflow")
    with pytest.raises(MalformedEnvelope):
        E.decode_envelope(h(neg["plaintext_envelope"]))


def test_v27_is_rejected(doc: dict[str, Any]) -> None:
    neg = next(n for n in doc["negatives"] if n["id"] == "neg-asym-sig-v27")
    with pytest.raises(BadSignature):
        E.decode_envelope(h(neg["plaintext_envelope"]))


def test_cleared_flag_is_unsigned_with_the_signature_as_padding() -> None:
    env = bytearray(_signed_256())
    env[0] &= ~0x04
    opened = E.decode_envelope(bytes(env))
    assert opened.signer_pub is None and opened.padding.endswith(env[-65:])


def test_every_single_bit_flip_in_signed_data_changes_or_breaks_the_signer() -> None:
    env = _signed_256()
    want = secp256k1.decompress(SIGNER.public_key())
    for pos in list(range(0, 8)) + list(range(250, 270)) + list(range(len(env) - 70, len(env))):
        for bit in (0, 7):
            bad = bytearray(env)
            bad[pos] ^= 1 << bit
            try:
                opened = E.decode_envelope(bytes(bad))
            except (MalformedEnvelope, BadSignature):
                continue
            assert opened.signer_pub != want, (pos, bit)


def test_every_truncation_is_typed() -> None:
    env = _signed_256()
    want = secp256k1.decompress(SIGNER.public_key())
    for cut in range(len(env)):
        try:
            opened = E.decode_envelope(env[:cut])
        except (MalformedEnvelope, BadSignature):
            continue
        assert opened.signer_pub != want


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x02\x00", b"\x03\x00\x00", b"\x01\x05abcd", b"\x04" + b"\x00" * 65, b"\x05" + b"\x00" * 65,
     b"\x05\x00" + b"\x00" * 65, b"\x07\xff\xff\xff" + b"\x00" * 100],
)  # fmt: skip
def test_short_and_inconsistent_envelopes(data: bytes) -> None:
    with pytest.raises((MalformedEnvelope, BadSignature)):
        E.decode_envelope(data)


def test_no_size_field_means_empty_payload_like_go() -> None:
    opened = E.decode_envelope(b"\x00" + b"\xaa" * 10)
    assert opened.payload == b"" and opened.padding == b"\xaa" * 10


@pytest.mark.parametrize("data", [None, 5, "05", [1, 2], object()])
def test_wrong_types(data: object) -> None:
    with pytest.raises(MalformedEnvelope):
        E.decode_envelope(data)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_random_bytes_only_typed_errors(data: bytes) -> None:
    try:
        opened = E.decode_envelope(data)
    except (MalformedEnvelope, BadSignature) as exc:
        assert isinstance(exc, MalformedMessage) or isinstance(exc, BadSignature)
        return
    assert len(opened.payload) + len(opened.padding) < len(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 1000), st.integers(0, 255))
def test_fuzz_mutated_real_envelopes(payload: bytes, pos: int, value: int) -> None:
    env = bytearray(E.encode_envelope(payload, signer=SIGNER, padding=_pad))
    env[pos % len(env)] = value
    try:
        opened = E.decode_envelope(bytes(env))
    except (MalformedEnvelope, BadSignature):
        return
    if bytes(env) != E.encode_envelope(payload, signer=SIGNER, padding=_pad):
        assert opened.signer_pub != secp256k1.decompress(SIGNER.public_key())
