"""secp256k1 points and Ethereum-style recoverable signatures (65 bytes ``R‖S‖V``, V in {0,1}, low S).

A PKCS#11 token signs with a random nonce and returns plain ``r‖s``, about half the time with a high S;
:func:`recoverable_from_rs` turns that into the form status-go and go-waku emit.
"""

from __future__ import annotations

import coincurve

from .errors import BadSignature, MalformedKey
from .hashing import keccak256

__all__ = [
    "CURVE_ORDER",
    "public_key",
    "compress",
    "decompress",
    "address",
    "is_low_s",
    "normalize_s",
    "recoverable_from_rs",
    "recover",
    "verify",
    "dh_x",
    "valid_secret",
]

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = CURVE_ORDER // 2


def public_key(data: bytes) -> coincurve.PublicKey:
    """Parse a 33-byte compressed or 65-byte uncompressed SEC1 point; anything else is :class:`MalformedKey`."""
    if not isinstance(data, (bytes, bytearray)) or len(data) not in (33, 65):
        raise MalformedKey("public key must be 33 (compressed) or 65 (uncompressed) bytes")
    if (len(data) == 33 and data[0] not in (2, 3)) or (len(data) == 65 and data[0] != 4):
        raise MalformedKey("public key has a bad SEC1 prefix")
    try:
        return coincurve.PublicKey(bytes(data))
    except (ValueError, TypeError) as exc:
        raise MalformedKey("public key is not a point on secp256k1") from exc


def compress(data: bytes) -> bytes:
    """Return the 33-byte compressed form of a valid point given in either form."""
    return public_key(data).format(compressed=True)


def decompress(data: bytes) -> bytes:
    """Return the 65-byte uncompressed form (``04‖X‖Y``) of a valid point given in either form."""
    return public_key(data).format(compressed=False)


def address(data: bytes) -> bytes:
    """Ethereum address of a public key: the last 20 bytes of Keccak-256 of ``X‖Y``."""
    return keccak256(decompress(data)[1:])[12:]


def valid_secret(secret: bytes) -> bool:
    """True when ``secret`` is exactly 32 bytes and 0 < d < n, as go-ethereum's ToECDSA requires."""
    if len(secret) != 32:
        return False
    d = int.from_bytes(secret, "big")
    return 0 < d < CURVE_ORDER


def is_low_s(sig: bytes) -> bool:
    """True when the S half of an ``r‖s[‖v]`` signature is at most n/2."""
    return int.from_bytes(sig[32:64], "big") <= _HALF_ORDER


def normalize_s(rs: bytes) -> bytes:
    """Return ``r‖s`` with S replaced by n − S when S is high (both verify; only low S is canonical)."""
    if len(rs) != 64:
        raise BadSignature("a plain ECDSA signature is 64 bytes r‖s")
    r = int.from_bytes(rs[:32], "big")
    s = int.from_bytes(rs[32:], "big")
    if not (0 < r < CURVE_ORDER and 0 < s < CURVE_ORDER):
        raise BadSignature("r or s out of range")
    if s > _HALF_ORDER:
        s = CURVE_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def recoverable_from_rs(rs: bytes, digest: bytes, signer: bytes) -> bytes:
    """Turn a plain ``r‖s`` (any S) by ``signer`` over ``digest`` into the 65-byte low-S ``R‖S‖V``.

    V is found by trying recovery ids 0 and 1 *after* normalising S (flipping S flips the recovery id).
    Recovery ids 2 and 3 need r ≥ n − p, which happens with probability about 2^-128; they are not tried.
    """
    if len(digest) != 32:
        raise BadSignature("digest must be 32 bytes")
    low = normalize_s(rs)
    want = compress(signer)
    for v in (0, 1):
        try:
            got = coincurve.PublicKey.from_signature_and_message(low + bytes([v]), digest, hasher=None)
        except ValueError:
            continue
        if got.format(compressed=True) == want:
            return low + bytes([v])
    raise BadSignature("signature does not belong to the signer's public key")


def recover(digest: bytes, signature: bytes) -> bytes:
    """Recover the 33-byte compressed signer of a 65-byte ``R‖S‖V`` signature; V must be 0..3 (27/28 fail)."""
    if len(digest) != 32:
        raise BadSignature("digest must be 32 bytes")
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 65:
        raise BadSignature("signature must be 65 bytes R‖S‖V")
    if signature[64] >= 4:
        raise BadSignature("invalid signature recovery id")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(bytes(signature), digest, hasher=None)
    except (ValueError, TypeError) as exc:
        raise BadSignature("signature does not recover to a public key") from exc
    return pub.format(compressed=True)


def verify(digest: bytes, signature: bytes, signer: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` over ``digest`` recovers to ``signer`` (either form)."""
    if address(recover(digest, signature)) != address(signer):
        raise BadSignature("signature was made by another key")


def dh_x(secret: bytes, peer: bytes) -> bytes:
    """x-coordinate (32 bytes, big-endian) of ``secret · peer``: go-ethereum's ``ecies.GenerateShared(pub,16,16)``.

    Only for host-held keys (ephemeral and ratchet keys); identity and prekeys go through KeyOps.
    """
    if not valid_secret(secret):
        raise MalformedKey("private scalar must be 32 bytes with 0 < d < n")
    return public_key(peer).multiply(secret).format(compressed=False)[1:33]
