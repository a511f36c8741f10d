"""The JSON form of a signed Bundle: the proto's field names with hex bytes, for people and scripts.

``keyagent bundle --json`` prints it and ``add-bundle`` / ``encrypt --bundle`` read it back byte for byte, so a
bundle can pass through text channels. Pure: bytes and dicts in, bytes and dicts out; the signature is checked
by whoever stores the bundle (the agent), not here.
"""

from __future__ import annotations

from typing import Any

from agent.core.wire import decode_bundle
from agent.pb.status import protocol_message_pb2 as spb

__all__ = ["BundleJsonError", "bundle_to_json", "bundle_from_json"]


class BundleJsonError(ValueError):
    """A document that is not the JSON form of a bundle: fix the input (the message says which field)."""


def bundle_to_json(data: bytes) -> dict[str, Any]:
    """A signed Bundle protobuf as JSON with the proto's field names and hex bytes."""
    b = decode_bundle(data)
    return {
        "identity": b.identity.hex(),
        "signed_pre_keys": {
            iid: {"signed_pre_key": spk.signed_pre_key.hex(), "version": spk.version,
                  "protocol_version": spk.protocol_version}
            for iid, spk in sorted(b.signed_pre_keys.items())
        },
        "timestamp": b.timestamp,
        "signature": b.signature.hex(),
    }


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleJsonError(f"bundle JSON: {what} must be a hex string")
    text = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise BundleJsonError(f"bundle JSON: {what} is not hex") from exc


def _uint(value: Any, what: str, bits: int, signed: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BundleJsonError(f"bundle JSON: {what} must be an integer")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise BundleJsonError(f"bundle JSON: {what} is out of range")
    return value


def bundle_from_json(doc: Any) -> bytes:
    """The inverse of :func:`bundle_to_json` (the signature is checked by the agent, not here)."""
    if not isinstance(doc, dict):
        raise BundleJsonError("bundle JSON must be an object")
    unknown = set(doc) - {"identity", "signed_pre_keys", "timestamp", "signature"}
    if unknown:
        raise BundleJsonError(f"bundle JSON: unknown field(s) {', '.join(sorted(unknown))}")
    b = spb.Bundle(identity=_hex(doc.get("identity", ""), "identity"),
                   signature=_hex(doc.get("signature", ""), "signature"),
                   timestamp=_uint(doc.get("timestamp", 0), "timestamp", 64, signed=True))
    spks = doc.get("signed_pre_keys", {})
    if not isinstance(spks, dict):
        raise BundleJsonError("bundle JSON: signed_pre_keys must be an object")
    for iid, spk in spks.items():
        if not isinstance(spk, dict):
            raise BundleJsonError(f"bundle JSON: signed_pre_keys[{iid!r}] must be an object")
        extra = set(spk) - {"signed_pre_key", "version", "protocol_version"}
        if extra:
            raise BundleJsonError(f"bundle JSON: unknown field(s) {', '.join(sorted(extra))} in {iid!r}")
        entry = b.signed_pre_keys[iid]
        entry.signed_pre_key = _hex(spk.get("signed_pre_key", ""), f"{iid}.signed_pre_key")
        entry.version = _uint(spk.get("version", 0), f"{iid}.version", 32)
        entry.protocol_version = _uint(spk.get("protocol_version", 0), f"{iid}.protocol_version", 32)
    return bytes(b.SerializeToString())
