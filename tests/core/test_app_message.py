"""Status application messages: status-go's WrapMessageV1 scheme, and the payloads the identity key refuses."""

from __future__ import annotations

import json
from pathlib import Path

import coincurve
import pytest

from agent.core import app_message
from agent.core.app_message import RefusedPayload
from agent.core.errors import BadSignature, MalformedMessage
from agent.core.hashing import keccak256
from agent.pb.status import application_metadata_message_pb2 as app_pb
from backends.memory import MemoryKey

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
ALICE = MemoryKey(b"0" * 32)  # status-go x3dh_test.go alicePrivateKey (ASCII bytes)
CHAT = b"\x08\x01\x1a\x05hello"  # ChatMessage{clock: 1, text: "hello"}


def _bundle_vector() -> dict[str, str]:
    doc = json.loads((VECTORS / "x3dh_examples.json").read_text())
    return doc["bundles"][0]  # type: ignore[no-any-return]


def test_wrap_is_status_go_wrap_message_v1() -> None:
    data, mid = app_message.wrap(ALICE, CHAT, app_pb.ApplicationMetadataMessage.CHAT_MESSAGE)
    msg = app_pb.ApplicationMetadataMessage.FromString(data)
    assert msg.payload == CHAT and msg.type == 1
    # go-ethereum crypto.Sign(Keccak256(payload)): RFC 6979 R||S||V, low S, V in {0,1} - computed independently
    expected = coincurve.PrivateKey(b"0" * 32).sign_recoverable(keccak256(CHAT), hasher=None)
    assert msg.signature == expected and msg.signature[64] in (0, 1)
    # message id: Keccak256(uncompressed author || wrapped bytes)
    pub65 = coincurve.PrivateKey(b"0" * 32).public_key.format(compressed=False)
    assert mid == keccak256(pub65 + data)
    assert data == app_pb.ApplicationMetadataMessage(signature=expected, payload=CHAT, type=1).SerializeToString()


def test_unwrap_recovers_the_identity_and_a_flipped_bit_does_not() -> None:
    data, mid = app_message.wrap(ALICE, CHAT, 1)
    got = app_message.unwrap(data)
    assert got.signer == coincurve.PublicKey(ALICE.public_key()).format(compressed=False)
    assert (got.type, got.payload, got.message_id) == (1, CHAT, mid)
    msg = app_pb.ApplicationMetadataMessage.FromString(data)
    for field in ("payload", "signature"):
        tampered = app_pb.ApplicationMetadataMessage()
        tampered.CopyFrom(msg)
        value = bytearray(getattr(tampered, field))
        value[3] ^= 0x01
        setattr(tampered, field, bytes(value))
        try:
            other = app_message.unwrap(tampered.SerializeToString())
        except BadSignature:
            continue
        assert other.signer != got.signer
    v27 = bytearray(msg.signature)
    v27[64] += 27
    msg.signature = bytes(v27)
    with pytest.raises(BadSignature):
        app_message.unwrap(msg.SerializeToString())
    with pytest.raises(MalformedMessage):
        app_message.unwrap(b"\xff\xff\xff")


def test_type_names_and_numbers() -> None:
    assert app_message.type_number("CHAT_MESSAGE") == 1
    assert app_message.type_number("contact_code_advertisement") == 15
    assert app_message.type_number("4242") == 4242 and app_message.type_name(4242) == ""
    with pytest.raises(ValueError):
        app_message.type_number("NOT_A_TYPE")


@pytest.mark.parametrize("type_", [0, 1, 15, 4242])
def test_bundle_material_is_never_signed(type_: int) -> None:
    b = _bundle_vector()
    material = bytes.fromhex(b["signature_material"])
    assert app_message.could_be_bundle_material(material)
    with pytest.raises(RefusedPayload):
        app_message.wrap(ALICE, material, type_)


def test_crafted_bundle_material_is_refused_for_types_without_a_schema() -> None:
    # an attacker's bundle: our installation id, their prekey at version 2^32-1, a timestamp
    attacker_spk = MemoryKey(b"9" * 32).public_key()
    material = b"a5b1c2d4-0000-4000-8000-000000000000" + attacker_spk + b"4294967295" + b"1700000000000000000"
    assert not app_message.could_be_waku_preimage(material)  # only the bundle rule stands in the way
    assert app_message.refusal(material, 0) is not None
    assert "bundle" in (app_message.refusal(material, 4242) or "")
    two = b"a" + attacker_spk + b"3" + b"b" + attacker_spk + b"12"  # several entries, no timestamp
    assert app_message.could_be_bundle_material(two)


def test_ordinary_payloads_are_not_material() -> None:
    assert not app_message.could_be_bundle_material(CHAT)
    assert not app_message.could_be_bundle_material(b"x" * 100 + b"1")  # no key in it
    spk = MemoryKey(b"9" * 32).public_key()
    assert not app_message.could_be_bundle_material(b"\xff" + spk + b"1")  # the id is not UTF-8
    assert not app_message.could_be_bundle_material(spk + b"00")  # no leading zeros, no zero timestamp
    assert app_message.could_be_bundle_material(spk + b"01")  # version 0, timestamp 1


def test_waku_envelope_preimages_are_refused() -> None:
    # flags 0x05 (signed, 1-byte size), size 3, payload, padding: a Waku signature over this would verify
    preimage = b"\x05\x03abc" + b"\x00" * 10
    assert app_message.could_be_waku_preimage(preimage)
    assert "Waku" in (app_message.refusal(preimage, 4242) or "")
    assert not app_message.could_be_waku_preimage(CHAT)


def test_malformed_messages_of_known_types_are_refused() -> None:
    assert "well-formed" in (app_message.refusal(b"\x0a\x10short", 1) or "")
    assert app_message.refusal(b"", 1) == "the payload is empty"
    assert app_message.refusal(CHAT, 1) is None
