"""Parse and build the secure-transport protobuf messages exactly as status-go puts them on the wire.

Every decoder turns *any* failure of the protobuf runtime (truncation, bad varints, wrong wire types,
invalid UTF-8 in a string, non-bytes input) into :class:`MalformedMessage`, so callers deal with one typed
error. Encoders use deterministic serialisation (fields by number, map keys sorted), which is what
status-go's deterministic marshal produces and what the known-answer vectors pin.
The legacy ProtocolMessage fields 1 (``bundle``) and 103 (``version``) are reserved in the schema and
skipped like unknown fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from google.protobuf.message import Message

from agent.pb.status import protocol_message_pb2 as pb

from .errors import MalformedKey, MalformedMessage

__all__ = [
    "pb",
    "NO_INSTALLATION",
    "decode_protocol_message",
    "decode_bundle",
    "decode_encrypted_message",
    "decode_bundle_container",
    "encode",
    "encode_protocol_message",
    "encode_bundle",
    "x3dh_header",
    "dr_header",
    "dh_header",
    "encrypted_message",
    "protocol_message",
    "check_entry_keys",
]

# Map key of a DH-fallback message (status-go ``noInstallationID``).
NO_INSTALLATION = "none"

_M = TypeVar("_M", bound=Message)


def _decode(cls: type[_M], data: bytes, what: str) -> _M:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"{what} must be bytes, not {type(data).__name__}")
    msg: _M = cls()
    try:
        msg.ParseFromString(bytes(data))
    except Exception as exc:  # DecodeError and whatever else the C runtime raises: all mean "not ours"
        raise MalformedMessage(f"malformed {what}: {exc}") from None
    return msg


def decode_protocol_message(data: bytes) -> pb.ProtocolMessage:
    """Parse a ProtocolMessage (the Waku payload after segmentation); raise MalformedMessage on bad bytes."""
    return _decode(pb.ProtocolMessage, data, "ProtocolMessage")


def decode_bundle(data: bytes) -> pb.Bundle:
    """Parse a Bundle (e.g. a contact-code advertisement); raise MalformedMessage on bad bytes."""
    return _decode(pb.Bundle, data, "Bundle")


def decode_encrypted_message(data: bytes) -> pb.EncryptedMessageProtocol:
    """Parse one EncryptedMessageProtocol; raise MalformedMessage on bad bytes."""
    return _decode(pb.EncryptedMessageProtocol, data, "EncryptedMessageProtocol")


def decode_bundle_container(data: bytes) -> pb.BundleContainer:
    """Parse a local BundleContainer; raise MalformedMessage on bad bytes."""
    return _decode(pb.BundleContainer, data, "BundleContainer")


def encode(msg: Message) -> bytes:
    """Deterministic serialisation (map entries sorted by key), byte-equal to status-go's deterministic marshal."""
    out: bytes = msg.SerializeToString(deterministic=True)
    return out


def encode_protocol_message(msg: pb.ProtocolMessage) -> bytes:
    """Serialise a ProtocolMessage deterministically."""
    return encode(msg)


def encode_bundle(bundle: pb.Bundle) -> bytes:
    """Serialise a Bundle deterministically."""
    return encode(bundle)


def x3dh_header(ephemeral_pub: bytes, spk_id: bytes) -> pb.X3DHHeader:
    """X3DHHeader{key = EK_A (33 bytes), id = the responder's SPK (33 bytes)}."""
    return pb.X3DHHeader(key=ephemeral_pub, id=spk_id)


def dr_header(ratchet_pub: bytes, n: int, pn: int, bundle_id: bytes) -> pb.DRHeader:
    """DRHeader{key, n, pn, id}; ``id`` is always the responder's SPK, in both directions."""
    return pb.DRHeader(key=ratchet_pub, n=n, pn=pn, id=bundle_id)


def dh_header(ephemeral_pub: bytes) -> pb.DHHeader:
    """DHHeader{key = compressed ephemeral} of the DH fallback."""
    return pb.DHHeader(key=ephemeral_pub)


def encrypted_message(
    payload: bytes,
    *,
    x3dh: pb.X3DHHeader | None = None,
    dr: pb.DRHeader | None = None,
    dh: pb.DHHeader | None = None,
) -> pb.EncryptedMessageProtocol:
    """One per-installation entry of ``ProtocolMessage.encrypted_message``."""
    msg = pb.EncryptedMessageProtocol(payload=payload)
    if x3dh is not None:
        msg.X3DH_header.CopyFrom(x3dh)
    if dr is not None:
        msg.DR_header.CopyFrom(dr)
    if dh is not None:
        msg.DH_header.CopyFrom(dh)
    return msg


def protocol_message(
    installation_id: str,
    encrypted: Mapping[str, pb.EncryptedMessageProtocol] | None = None,
    bundles: Iterable[pb.Bundle] = (),
    public_message: bytes = b"",
) -> pb.ProtocolMessage:
    """A ProtocolMessage from the sender's installation id, its bundles and per-recipient entries."""
    msg = pb.ProtocolMessage(installation_id=installation_id, public_message=public_message)
    msg.bundles.extend(bundles)
    for key, value in (encrypted or {}).items():
        msg.encrypted_message[key].CopyFrom(value)
    return msg


def message_head(installation_id: str, bundles: Iterable[pb.Bundle]) -> bytes:
    """``encode`` of a ProtocolMessage holding only the sender's installation id and bundles.

    A sender repeats both on every message, so they are serialised once: ``message_head(...) + encode(m)``, where
    ``m`` holds only the entries (:func:`add_entry`), is byte for byte ``encode`` of the whole message. Fields are
    written in field-number order (installation_id 2, bundles 3, encrypted_message 101, public_message 102), and
    a parser merges concatenated messages.
    """
    head = pb.ProtocolMessage(installation_id=installation_id)
    head.bundles.extend(bundles)
    return encode(head)


def add_entry(msg: pb.ProtocolMessage, installation_id: str, payload: bytes, *,
              x3dh: tuple[bytes, bytes] | None, dr: tuple[bytes, int, int, bytes]) -> None:
    """Write one ratchet entry straight into ``msg`` (what :func:`encrypted_message` with :func:`x3dh_header`
    and :func:`dr_header` builds, without the intermediate messages and their copies: every message we send
    does it). ``x3dh`` = (ephemeral key, SPK id); ``dr`` = (ratchet key, n, pn, SPK id)."""
    entry = msg.encrypted_message[installation_id]
    entry.payload = payload
    if x3dh is not None:
        header = entry.X3DH_header
        header.key, header.id = x3dh
    dr_out = entry.DR_header
    dr_out.key, dr_out.n, dr_out.pn, dr_out.id = dr


def _key33(value: bytes, what: str) -> None:
    if len(value) != 33 or value[0] not in (2, 3):
        raise MalformedKey(f"{what} must be a 33-byte compressed secp256k1 key, got {len(value)} bytes")


def check_entry_keys(entry: pb.EncryptedMessageProtocol) -> None:
    """Raise MalformedKey unless every key in the present X3DH/DR/DH headers is 33 bytes compressed.

    Cheap length/prefix checks only (status-go's DecompressPubkey does the curve check later, and so do
    our DH functions); callers use it to drop junk before touching sessions.
    """
    if entry.HasField("X3DH_header"):
        _key33(bytes(entry.X3DH_header.key), "X3DH_header.key")
        _key33(bytes(entry.X3DH_header.id), "X3DH_header.id")
    if entry.HasField("DR_header"):
        _key33(bytes(entry.DR_header.key), "DR_header.key")
        _key33(bytes(entry.DR_header.id), "DR_header.id")
    if entry.HasField("DH_header"):
        _key33(bytes(entry.DH_header.key), "DH_header.key")
