"""X3DH prekey bundles, signed and verified exactly as status-go's ``x3dh.go`` does.

Signed material: for each installation id in byte-wise sorted order, ``id ‖ spk(33) ‖ decimal(version)``;
then ``decimal(timestamp_ns)`` if the timestamp is non-zero. No separators, no length prefixes, and
``protocol_version`` is not covered. The signature is go-ethereum's 65-byte ``R‖S‖V`` over legacy
Keccak-256 of that material, and verification is by public-key recovery and address comparison.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import secp256k1
from .errors import BadSignature, EmptyBundle, IdentityMismatch, NonCanonicalSignature
from .hashing import keccak256
from .keyops import KeyOps
from .keys import require_compressed
from .wire import pb

__all__ = ["sign_bundle", "signature_material", "signature_digest", "verify_bundle", "MAX_UINT32"]

MAX_UINT32 = 0xFFFFFFFF
_MIN_INT64, _MAX_INT64 = -(1 << 63), (1 << 63) - 1


def _sorted_ids(ids: object) -> list[str]:
    # Go sort.Strings compares UTF-8 bytes; sorting by the encoded form says so explicitly
    return sorted(ids, key=lambda s: s.encode("utf-8"))  # type: ignore[call-overload,no-any-return]


def signature_material(bundle: pb.Bundle) -> bytes:
    """The exact bytes status-go signs for ``bundle`` (see module docstring)."""
    parts: list[bytes] = []
    for inst in _sorted_ids(bundle.signed_pre_keys.keys()):
        spk = bundle.signed_pre_keys[inst]
        parts += [inst.encode("utf-8"), bytes(spk.signed_pre_key), str(spk.version).encode("ascii")]
    if bundle.timestamp != 0:  # a zero timestamp is not appended (backward compatibility upstream)
        parts.append(str(bundle.timestamp).encode("ascii"))
    return b"".join(parts)


def signature_digest(bundle: pb.Bundle) -> bytes:
    """Keccak-256 of :func:`signature_material`: the 32 bytes the identity key signs."""
    return keccak256(signature_material(bundle))


def sign_bundle(
    identity: KeyOps,
    signed_pre_keys: Mapping[str, tuple[bytes, int, int]],
    timestamp_ns: int,
) -> pb.Bundle:
    """Build and sign a bundle: ``installation_id -> (spk_pub33, version, protocol_version)``.

    The signature comes from ``identity`` (possibly a token) and is checked before returning, so a
    backend that returns a wrong or non-canonical signature is caught here rather than by every peer.
    """
    if not signed_pre_keys:
        raise EmptyBundle("a bundle needs at least one signed prekey")
    if not _MIN_INT64 <= timestamp_ns <= _MAX_INT64:
        raise ValueError("timestamp must fit an int64 (nanoseconds)")
    bundle = pb.Bundle(identity=require_compressed(identity.public_key(), "identity key"), timestamp=timestamp_ns)
    for inst, (spk, version, protocol_version) in signed_pre_keys.items():
        if not (0 <= version <= MAX_UINT32 and 0 <= protocol_version <= MAX_UINT32):
            raise ValueError("version and protocol_version are uint32")
        entry = bundle.signed_pre_keys[inst]
        entry.signed_pre_key = require_compressed(spk, f"signed prekey of {inst!r}")
        entry.version = version
        entry.protocol_version = protocol_version
    digest = signature_digest(bundle)
    signature = identity.sign(digest)
    if len(signature) != 65 or signature[64] not in (0, 1) or not secp256k1.is_low_s(signature):
        raise BadSignature("identity key returned a signature that is not 65-byte low-S R‖S‖V with V in {0,1}")
    secp256k1.verify(digest, signature, bundle.identity)
    bundle.signature = signature
    return bundle


def verify_bundle(bundle: pb.Bundle) -> bytes:
    """Verify a received bundle and return its 33-byte identity key (status-go ``ExtractIdentity``).

    Raises EmptyBundle (no prekeys), MalformedKey (identity or any SPK not a 33-byte point),
    BadSignature (unrecoverable signature, V ≥ 4), BadBundle (a high-S signature: go-ethereum's ``Sign`` only
    makes low-S ones, and accepting the twin ``(r, n - s)`` would give one bundle two byte forms) or
    IdentityMismatch (signed by someone else).
    """
    if len(bundle.signed_pre_keys) == 0:
        raise EmptyBundle("bundle has no signed prekeys")
    identity = require_compressed(bytes(bundle.identity), "bundle identity")
    for inst in _sorted_ids(bundle.signed_pre_keys.keys()):
        require_compressed(bytes(bundle.signed_pre_keys[inst].signed_pre_key), f"signed prekey of {inst!r}")
    signature = bytes(bundle.signature)
    if len(signature) == 65 and not secp256k1.is_low_s(signature):
        raise NonCanonicalSignature("high-S bundle signature (go-ethereum signs low-S only)")
    signer = secp256k1.recover(signature_digest(bundle), signature)
    if secp256k1.address(signer) != secp256k1.address(identity):
        raise IdentityMismatch("identity key and signature mismatch")
    return identity
