"""Asymmetric Waku payloads: go-ethereum ``crypto/ecies`` with secp256k1 (AES-128-CTR + HMAC-SHA-256).

``wire = R(65, 04‖X‖Y) ‖ IV(16) ‖ AES-128-CTR(kE, IV, envelope) ‖ HMAC-SHA-256(kM, IV ‖ C)(32)``
with ``K = SHA-256(00000001 ‖ Z)`` (concat KDF, one block, empty shared info), ``kE = K[:16]``,
``kM = SHA-256(K[16:])`` and ``Z`` the 32-byte x-coordinate of the ECDH.

Opening does the one ECDH with our identity through :class:`KeyOps` (in the token with PKCS#11). ECIES carries
no recipient hint, so foreign traffic on a shared topic costs that ECDH before its MAC fails; everything that
can be rejected without it (length, R's prefix, R off the curve) is rejected first, so no token call is spent.
"""

from __future__ import annotations

import hashlib
import hmac

import coincurve
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import secp256k1
from ..errors import BadEphemeralKey, DecryptFailed, MalformedKey, WireTooShort
from ..keyops import KeyOps

__all__ = [
    "R_LEN",
    "IV_LEN",
    "TAG_LEN",
    "OVERHEAD",
    "EciesKeys",
    "kdf",
    "check_wire",
    "seal_asymmetric",
    "open_asymmetric",
]

R_LEN = 65
IV_LEN = 16
TAG_LEN = 32
OVERHEAD = R_LEN + IV_LEN + TAG_LEN  # 113


class EciesKeys:
    """The two keys go-ethereum derives from the shared x-coordinate (exposed for vectors and debugging)."""

    __slots__ = ("kdf_out", "ke", "km")

    def __init__(self, shared_x: bytes) -> None:
        if len(shared_x) != 32:
            raise MalformedKey("ECDH result must be a 32-byte x-coordinate")
        self.kdf_out = hashlib.sha256(b"\x00\x00\x00\x01" + shared_x).digest()
        self.ke = self.kdf_out[:16]
        #: go-ethereum hashes the 16-byte MAC half into a 32-byte HMAC key (js-waku does the same)
        self.km = hashlib.sha256(self.kdf_out[16:]).digest()


def kdf(shared_x: bytes) -> EciesKeys:
    """NIST SP 800-56 concat KDF (SHA-256, counter from 1, no shared info) of the ECDH x-coordinate."""
    return EciesKeys(shared_x)


def _ctr(ke: bytes, iv: bytes, data: bytes) -> bytes:
    # The IV is the whole 128-bit big-endian counter block, as Go cipher.NewCTR and WebCrypto length=128.
    enc = Cipher(algorithms.AES(ke), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _tag(km: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(km, iv + ciphertext, hashlib.sha256).digest()


def seal_asymmetric(envelope: bytes, recipient_pub: bytes, *, ephemeral_secret: bytes, iv: bytes) -> bytes:
    """Encrypt ``envelope`` to ``recipient_pub`` (33 or 65 bytes) with an injected ephemeral key and IV.

    Host-only: the ephemeral key is ours for this one message, so no token is involved.
    """
    if not isinstance(iv, (bytes, bytearray)) or len(iv) != IV_LEN:
        raise ValueError("ECIES IV must be 16 bytes")
    if not secp256k1.valid_secret(ephemeral_secret):
        raise MalformedKey("ephemeral secret must be 32 bytes with 0 < d < n")
    shared_x = secp256k1.dh_x(ephemeral_secret, recipient_pub)  # MalformedKey on a bad recipient point
    keys = kdf(shared_x)
    r = coincurve.PrivateKey(bytes(ephemeral_secret)).public_key.format(compressed=False)
    ciphertext = _ctr(keys.ke, bytes(iv), bytes(envelope))
    return r + bytes(iv) + ciphertext + _tag(keys.km, bytes(iv), ciphertext)


def check_wire(wire: bytes) -> bytes:
    """Reject what needs no ECDH: non-bytes, too short, bad R prefix or R off the curve. Return R."""
    if not isinstance(wire, (bytes, bytearray, memoryview)):
        raise WireTooShort(f"wire must be bytes, not {type(wire).__name__}")
    if len(wire) <= OVERHEAD:  # js-waku: at least one ciphertext byte after R, IV and tag
        raise WireTooShort(f"asymmetric wire must be longer than {OVERHEAD} bytes")
    r = bytes(wire[:R_LEN])
    if r[0] != 0x04:  # Go's switch admits 2/3 but always slices 65 bytes, so only 04 ever works
        raise BadEphemeralKey("ephemeral key must start with 0x04")
    try:
        secp256k1.public_key(r)
    except MalformedKey:
        raise BadEphemeralKey("ephemeral key is not on secp256k1") from None
    return r


def open_asymmetric(wire: bytes, me: KeyOps) -> bytes:
    """Decrypt an ECIES wire with our key; return the plaintext envelope.

    Order: framing and R checks (no token call), one ``me.dh(R)``, KDF, constant-time MAC compare, then
    decryption. A wire for someone else fails with :class:`DecryptFailed`; backend errors from ``me.dh``
    (locked, token absent) propagate unchanged.
    """
    r = check_wire(wire)
    data = bytes(wire)
    keys = kdf(me.dh(r))
    iv = data[R_LEN : R_LEN + IV_LEN]
    ciphertext = data[R_LEN + IV_LEN : -TAG_LEN]
    if not hmac.compare_digest(_tag(keys.km, iv, ciphertext), data[-TAG_LEN:]):
        raise DecryptFailed("ECIES MAC mismatch (tampered, or not for this key)")
    return _ctr(keys.ke, iv, ciphertext)
