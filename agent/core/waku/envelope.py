"""The 26/WAKU2-PAYLOAD plaintext envelope, byte-for-byte as go-waku, status-go and js-waku build it.

``envelope = flags(1) ‖ size(n) ‖ payload ‖ padding ‖ [signature(65)]``

* ``flags & 0x03`` is n, the length of the little-endian size field (1, 2 or 3 on send); ``flags & 0x04``
  marks a signature; the other bits are written as 0 and ignored on receive.
* Padding (1..256 bytes, never empty) makes the whole envelope, signature included, a multiple of 256.
  Its bytes are random, so the caller injects them; receivers never check padding.
* The signature is ``R‖S‖V`` (V in {0,1}, low S) over Keccak-256 of every byte before it.

Decoding follows go-waku ``validateAndParse`` (stricter than js-waku, which silently truncates an
overlong size field): any inconsistency is :class:`MalformedEnvelope`, a signature that does not recover is
:class:`BadSignature`. Nothing else ever escapes, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import secp256k1
from ..errors import BadSignature, IdentityMismatch, MalformedEnvelope
from ..hashing import keccak256
from ..keyops import KeyOps

__all__ = [
    "SIZE_MASK",
    "SIGNATURE_FLAG",
    "SIGNATURE_LEN",
    "PADDING_TARGET",
    "MAX_PAYLOAD",
    "Opened",
    "Rng",
    "size_field_len",
    "padding_len",
    "envelope_len",
    "encode_envelope",
    "decode_envelope",
]

SIZE_MASK = 0x03  # Go sizeMask
SIGNATURE_FLAG = 0x04  # Go signatureFlag
SIGNATURE_LEN = 65  # R‖S‖V
PADDING_TARGET = 256  # Go padSizeLimit, js PaddingTarget
#: A 3-byte size field holds at most 2^24 − 1; nobody writes 4 bytes (2 flag bits cannot say 4).
MAX_PAYLOAD = (1 << 24) - 1

#: Source of random bytes: called with a length, must return exactly that many bytes.
Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class Opened:
    """A decoded envelope. ``signer_pub`` is the recovered 65-byte uncompressed key (status-go ``SigPubKey``)."""

    payload: bytes
    signer_pub: bytes | None
    padding: bytes
    signature: bytes | None = None

    @property
    def signed(self) -> bool:
        return self.signer_pub is not None

    def require_signer(self, expected: bytes) -> None:
        """Raise unless the envelope is signed by ``expected`` (either SEC1 form).

        An unsigned envelope raises :class:`BadSignature`; one signed by another key :class:`IdentityMismatch`.
        """
        if self.signer_pub is None:
            raise BadSignature("envelope is not signed")
        if secp256k1.decompress(expected) != self.signer_pub:
            raise IdentityMismatch("envelope is signed by another key")


def size_field_len(payload_len: int) -> int:
    """Smallest n in 1..3 whose n little-endian bytes hold ``payload_len`` (an empty payload still gets 1)."""
    if payload_len < 0 or payload_len > MAX_PAYLOAD:
        raise MalformedEnvelope(f"payload length must be 0..{MAX_PAYLOAD}")
    if payload_len < 1 << 8:
        return 1
    if payload_len < 1 << 16:
        return 2
    return 3


def padding_len(payload_len: int, signed: bool) -> int:
    """Padding bytes for a payload: 1..256, so the envelope (signature included) is a multiple of 256."""
    raw = 1 + size_field_len(payload_len) + payload_len + (SIGNATURE_LEN if signed else 0)
    return PADDING_TARGET - raw % PADDING_TARGET


def envelope_len(payload_len: int, signed: bool) -> int:
    """Total envelope length for a payload of ``payload_len`` bytes."""
    raw = 1 + size_field_len(payload_len) + payload_len + (SIGNATURE_LEN if signed else 0)
    return raw + padding_len(payload_len, signed)


def _sign(signer: KeyOps, digest: bytes) -> bytes:
    """Sign ``digest`` and return canonical ``R‖S‖V`` (low S, V in {0,1}) that recovers to the signer.

    KeyOps promises exactly that, but a token signs with a random k and a backend bug would put a
    signature on the wire that peers attribute to a stranger; re-deriving V from the public key
    (one or two recoveries on the host, no token call) makes the envelope correct by construction.
    """
    sig = signer.sign(digest)
    if not isinstance(sig, (bytes, bytearray)) or len(sig) not in (64, 65):
        raise BadSignature("key returned a signature of the wrong length")
    return secp256k1.recoverable_from_rs(bytes(sig[:64]), digest, signer.public_key())


def encode_envelope(payload: bytes, *, signer: KeyOps | None, padding: Rng) -> bytes:
    """Build the plaintext envelope; ``padding(n)`` supplies the n random padding bytes (injected randomness).

    With a ``signer`` the flags carry 0x04 and the 65-byte signature over Keccak-256 of everything before
    it is appended (one ``signer.sign`` call: a token operation with the PKCS#11 backend).
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedEnvelope(f"payload must be bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    signed = signer is not None
    n = size_field_len(len(payload))
    pad_n = padding_len(len(payload), signed)
    pad = padding(pad_n)
    if not isinstance(pad, (bytes, bytearray)) or len(pad) != pad_n:
        raise ValueError(f"padding source must return exactly {pad_n} bytes")
    flags = n | (SIGNATURE_FLAG if signed else 0)
    body = bytes([flags]) + len(payload).to_bytes(n, "little") + payload + bytes(pad)
    if signer is None:
        return body
    return body + _sign(signer, keccak256(body))


def decode_envelope(data: bytes) -> Opened:
    """Parse an envelope as go-waku does; raise :class:`MalformedEnvelope` or :class:`BadSignature`.

    Padding length and content are not checked (receivers never do), nor is the 256-byte multiple.
    The signer is recovered, not verified: compare it with an expected key via :meth:`Opened.require_signer`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedEnvelope(f"envelope must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise MalformedEnvelope("empty envelope")
    flags = data[0]
    signed = bool(flags & SIGNATURE_FLAG)
    end = len(data)
    if signed:
        end -= SIGNATURE_LEN
        if end <= 1:  # go-waku: the flags byte plus at least one more byte before the signature
            raise MalformedEnvelope("envelope too short for its signature")
    n = flags & SIZE_MASK
    if n == 0:  # go-waku: no size field means an empty payload; everything up to `end` is padding
        payload, pad_start = b"", 1
    else:
        if 1 + n > end:
            raise MalformedEnvelope("envelope too short for its size field")
        size = int.from_bytes(data[1 : 1 + n], "little")
        pad_start = 1 + n + size
        if pad_start > end:
            raise MalformedEnvelope("payload size exceeds the envelope")
        payload = data[1 + n : pad_start]
    padding = data[pad_start:end]
    if not signed:
        return Opened(payload, None, padding)
    signature = data[end:]
    # recover() rejects v >= 4 like go-ethereum SigToPub (so the RFC's 27/28 fail); 2/3 pass as in Go
    signer = secp256k1.recover(keccak256(data[:end]), signature)
    return Opened(payload, secp256k1.decompress(signer), padding, signature)
