"""Bundles, X3DH and the DH fallback reproduce status-go's bytes (reference/status-go-facts.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core import bundle as bnd
from agent.core import fallback, wire, x3dh
from agent.core.errors import BadSignature, DecryptFailed, EmptyBundle, IdentityMismatch, MalformedKey
from agent.core.hashing import keccak256
from agent.core.keys import public_from_secret
from backends.memory import MemoryKey

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def key(ch: str) -> MemoryKey:
    return MemoryKey(ch.encode() * 32)


ALICE_IK, ALICE_EK, BOB_IK, BOB_SPK, BOB_R1, ALICE_SPK = key("0"), key("1"), key("2"), key("3"), key("5"), key("A")
SK = "a4e923d0af8fe78a056363be20e71c0a58e569ea8fc1f79289eca10d9f68133a"
BOB_BUNDLE = (
    "0a210290999dbbf43034bffb1dd53eac1eb4c33a4ea1c4f48ba585cfde3830840f055512370a0c626f622d6465766963652d3112270a21"
    "023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1100118012241b4d0811e364f2249b98aaf5c33368de1"
    "f517b2578d49a484e79d08a5b11e637e739bead02c2ccc4041df98644a00ce0c2b8bc7a6eb52257508e761cb63f918d500288080a8b1e3"
    "9fe7cb17"
)
TWO_DEVICE = (
    "0a210290999dbbf43034bffb1dd53eac1eb4c33a4ea1c4f48ba585cfde3830840f055512310a08612d64657669636512250a21023c72ad"
    "db4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1100312330a08622d64657669636512270a2102b21db47a75ceee"
    "5c010f69f66d48d5a017e4e2f46b47b496ddf03498c26e1cec100c180122412f7d04eb16919d51267217df7752c2d5212bd25e9844a7c3"
    "018e2b814bfa571172a0b21b8bcd8c03cf68e4315bc6cb9c12937749b507274474aaae965e55c1a401"
)


def test_bob_bundle_is_byte_exact() -> None:
    b = bnd.sign_bundle(BOB_IK, {"bob-device-1": (BOB_SPK.public_key(), 1, 1)}, 1700000000000000000)
    assert bnd.signature_material(b) == b"bob-device-1" + BOB_SPK.public_key() + b"1" + b"1700000000000000000"
    assert keccak256(bnd.signature_material(b)).hex() == "1c9ee18d85634d314ed92c0354490c070404e7950a48b37e786e198645875b68"
    assert wire.encode_bundle(b).hex() == BOB_BUNDLE
    assert bnd.verify_bundle(b) == BOB_IK.public_key()


def test_two_device_bundle_sorted_ids_and_zero_timestamp() -> None:
    spks = {"b-device": (BOB_R1.public_key(), 12, 1), "a-device": (BOB_SPK.public_key(), 3, 0)}
    b = bnd.sign_bundle(BOB_IK, spks, 0)
    assert bnd.signature_material(b) == (
        b"a-device" + BOB_SPK.public_key() + b"3" + b"b-device" + BOB_R1.public_key() + b"12"
    )
    assert wire.encode_bundle(b).hex() == TWO_DEVICE
    assert bnd.verify_bundle(wire.decode_bundle(bytes.fromhex(TWO_DEVICE))) == BOB_IK.public_key()


def test_protocol_version_is_not_signed() -> None:
    b = wire.decode_bundle(bytes.fromhex(BOB_BUNDLE))
    b.signed_pre_keys["bob-device-1"].protocol_version = 7
    assert bnd.verify_bundle(b) == BOB_IK.public_key()


def test_shared_vector_bundle_verifies() -> None:
    data = json.loads((VECTORS / "x3dh_examples.json").read_text())
    for case in data["bundles"]:
        b = wire.pb.Bundle(identity=bytes.fromhex(case["identity"]), timestamp=case["timestamp"],
                           signature=bytes.fromhex(case["signature"]))
        for inst, spk in case["signed_pre_keys"].items():
            e = b.signed_pre_keys[inst]
            e.signed_pre_key, e.version = bytes.fromhex(spk["signed_pre_key"]), spk["version"]
            e.protocol_version = spk["protocol_version"]
        assert bnd.signature_material(b).hex() == case["signature_material"]
        assert bnd.verify_bundle(b).hex() == case["extract_identity_recovered_pub_compressed"]


def _bob() -> wire.pb.Bundle:
    return wire.decode_bundle(bytes.fromhex(BOB_BUNDLE))


def test_verify_rejects_every_field_change() -> None:
    b = _bob()
    b.timestamp += 1
    with pytest.raises(IdentityMismatch):
        bnd.verify_bundle(b)
    b = _bob()
    b.signed_pre_keys["bob-device-1"].version = 2
    with pytest.raises(BadSignature):
        bnd.verify_bundle(b)
    b = _bob()
    b.identity = ALICE_IK.public_key()
    with pytest.raises(IdentityMismatch):
        bnd.verify_bundle(b)
    b = _bob()
    b.signature = b.signature[:64] + bytes([27])
    with pytest.raises(BadSignature):
        bnd.verify_bundle(b)
    b = _bob()
    b.signature = b.signature[:64]
    with pytest.raises(BadSignature):
        bnd.verify_bundle(b)


def test_verify_rejects_empty_and_malformed_keys() -> None:
    b = _bob()
    del b.signed_pre_keys["bob-device-1"]
    with pytest.raises(EmptyBundle):
        bnd.verify_bundle(b)
    b = _bob()
    b.identity = BOB_IK.public_key()[1:]
    with pytest.raises(MalformedKey):
        bnd.verify_bundle(b)
    b = _bob()
    b.signed_pre_keys["bob-device-1"].signed_pre_key = b"\x02" + b"\x00" * 31 + b"\x05"
    with pytest.raises(MalformedKey):
        bnd.verify_bundle(b)
    with pytest.raises(EmptyBundle):
        bnd.sign_bundle(BOB_IK, {}, 1)
    with pytest.raises(MalformedKey):
        bnd.sign_bundle(BOB_IK, {"x": (b"\x04" * 65, 1, 1)}, 1)


def test_every_single_bitflip_of_the_signature_is_rejected() -> None:
    for i in range(65 * 8):
        b = _bob()
        sig = bytearray(b.signature)
        sig[i // 8] ^= 1 << (i % 8)
        b.signature = bytes(sig)
        with pytest.raises(BadSignature):
            bnd.verify_bundle(b)


class _HighSKey:
    """A KeyOps whose signature has a bad recovery id, as a buggy token backend might produce."""

    def public_key(self) -> bytes:
        return BOB_IK.public_key()

    def sign(self, digest: bytes) -> bytes:
        sig = BOB_IK.sign(digest)
        return sig[:64] + bytes([sig[64] + 27])

    def dh(self, peer_public: bytes) -> bytes:
        return BOB_IK.dh(peer_public)


def test_sign_rejects_bad_backend_signature() -> None:
    with pytest.raises(BadSignature):
        bnd.sign_bundle(_HighSKey(), {"d": (BOB_SPK.public_key(), 1, 1)}, 5)


def test_x3dh_known_answer_both_sides() -> None:
    sk_a = x3dh.initiate(ALICE_IK, BOB_IK.public_key(), BOB_SPK.public_key(), b"1" * 32)
    sk_b = x3dh.respond(BOB_IK, BOB_SPK, ALICE_IK.public_key(), ALICE_EK.public_key())
    assert sk_a.hex() == sk_b.hex() == SK
    dhs = x3dh.initiator_dhs(ALICE_IK, BOB_IK.public_key(), BOB_SPK.public_key(), b"1" * 32)
    assert [d.hex() for d in dhs] == [
        "1cdd39dce068b0253b71c6611f6ac642cb837f8a32d0eae574eaaa8210993ec6",
        "01d2e36e3c06975e69a5b59e83c946176c50a4984a2f7190079b1c99e44a1252",
        "5b230a6860ffb60e363417497712c6a05d9398bac495529f9307d82958ea8c18",
    ]


def test_x3dh_rejects_malformed_keys() -> None:
    with pytest.raises(MalformedKey):
        x3dh.initiate(ALICE_IK, BOB_IK.public_key()[:32], BOB_SPK.public_key(), b"1" * 32)
    with pytest.raises(MalformedKey):
        x3dh.initiate(ALICE_IK, BOB_IK.public_key(), BOB_SPK.public_key(), b"\x00" * 32)
    with pytest.raises(MalformedKey):
        x3dh.respond(BOB_IK, BOB_SPK, ALICE_IK.public_key(), b"\x05" * 33)


def test_fallback_known_answer_and_roundtrip() -> None:
    eph, payload = fallback.encrypt(BOB_IK.public_key(), b"hello", b"1" * 32, bytes(range(12)))
    assert eph == ALICE_EK.public_key() == public_from_secret(b"1" * 32)
    assert payload.hex() == "3ffc748e7462b90d17c2dd02a500807394f5205a3d000102030405060708090a0b"
    assert fallback.decrypt(BOB_IK, eph, payload) == b"hello"
    _, empty = fallback.encrypt(BOB_IK.public_key(), b"", b"1" * 32, bytes(12))
    assert len(empty) == 28 and fallback.decrypt(BOB_IK, eph, empty) == b""


def test_fallback_rejects_tampering_and_wrong_key() -> None:
    eph, payload = fallback.encrypt(BOB_IK.public_key(), b"hello", b"1" * 32, bytes(range(12)))
    for i in range(len(payload) * 8):
        bad = bytearray(payload)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptFailed):
            fallback.decrypt(BOB_IK, eph, bytes(bad))
    with pytest.raises(DecryptFailed):
        fallback.decrypt(ALICE_IK, eph, payload)
    with pytest.raises(DecryptFailed):
        fallback.decrypt(BOB_IK, eph, payload[:27])
    with pytest.raises(MalformedKey):
        fallback.decrypt(BOB_IK, eph[:32], payload)
