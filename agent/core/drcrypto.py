"""The Double Ratchet primitives of status-im/doubleratchet (identical in both profiles).

KDF_RK = HKDF-SHA256(salt=rk, ikm=dh_out, info="rsZUpEuXUqqwXBvSy3EcievAh4cMj6QL", 96 bytes);
KDF_CK = HMAC-SHA256(ck, 0x0f) / HMAC-SHA256(ck, 0x10); message keys expand with
HKDF-SHA256(salt=32 zero bytes, ikm=mk, info="pcwSByyx2CRdryCffXJwy7xgVZWtW5Sh", 80 bytes) into
enc_key ‖ auth_key ‖ iv; payload = iv ‖ AES-256-CTR(enc_key, iv, pt) ‖ HMAC-SHA256(auth_key, ad ‖ iv ‖ ct).

HKDF is written out with the stdlib's one-shot HMAC (OpenSSL underneath): it is RFC 5869 verbatim and several
times faster than building HKDF objects per message, which matters because every message pays one expansion.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import DecryptFailed

__all__ = [
    "KDF_RK_INFO",
    "MK_INFO",
    "hkdf_sha256",
    "kdf_rk",
    "kdf_ck",
    "expand_message_key",
    "encrypt",
    "decrypt",
    "MAC_LEN",
    "IV_LEN",
    "hmac_sha256",
]

KDF_RK_INFO = b"rsZUpEuXUqqwXBvSy3EcievAh4cMj6QL"
MK_INFO = b"pcwSByyx2CRdryCffXJwy7xgVZWtW5Sh"
MAC_LEN = 32
IV_LEN = 16
_ZERO_SALT = bytes(32)
_CK_NEXT = b"\x0f"
_CK_MSG = b"\x10"
_MK_T1_IN = MK_INFO + b"\x01"
_compare = hmac.compare_digest
try:  # the C function that hmac.digest calls: its Python wrapper is one more call per HMAC (7 per message)
    from _hashlib import hmac_digest as _digest
except ImportError:  # a Python built without OpenSSL
    _digest = hmac.digest  # type: ignore[assignment]
_SHA256 = "sha256"


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """One-shot HMAC-SHA256 (OpenSSL through the stdlib); the ratchet's chain steps inline this."""
    return _digest(key, msg, _SHA256)


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 (extract with ``salt``, expand with ``info``) to ``length`` bytes."""
    prk = _digest(salt or _ZERO_SALT, ikm, _SHA256)
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = _digest(prk, block + info + bytes([i]), _SHA256)
        out += block
        i += 1
    return out[:length]


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes, bytes]:
    """Root-chain step: (new root key, chain key, header key — unused on the wire)."""
    okm = hkdf_sha256(rk, dh_out, KDF_RK_INFO, 96)
    return okm[:32], okm[32:64], okm[64:96]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """Symmetric-chain step: (next chain key, message key)."""
    return _digest(ck, _CK_NEXT, _SHA256), _digest(ck, _CK_MSG, _SHA256)


def expand_message_key(mk: bytes) -> tuple[bytes, bytes, bytes]:
    """(enc_key 32, auth_key 32, iv 16) from a message key."""
    prk = _digest(_ZERO_SALT, mk, _SHA256)
    t1 = _digest(prk, _MK_T1_IN, _SHA256)
    t2 = _digest(prk, t1 + MK_INFO + b"\x02", _SHA256)
    t3 = _digest(prk, t2 + MK_INFO + b"\x03", _SHA256)
    return t1, t2, t3[:16]


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    # 128-bit big-endian counter from the IV, as Go's cipher.NewCTR
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def encrypt(mk: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """iv ‖ AES-256-CTR(pt) ‖ HMAC-SHA256(auth_key, ad ‖ iv ‖ body) — 16 + len(pt) + 32 bytes."""
    enc_key, auth_key, iv = expand_message_key(mk)
    c = iv + _ctr(enc_key, iv, plaintext)
    return c + _digest(auth_key, ad + c, _SHA256)


def decrypt(mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Check the MAC over ``ad ‖ iv ‖ body`` (constant time), then decrypt with the transmitted IV."""
    if len(ciphertext) < MAC_LEN:  # Go panics on this slice; we refuse
        raise DecryptFailed("ciphertext shorter than the MAC")
    c, tag = ciphertext[:-MAC_LEN], ciphertext[-MAC_LEN:]
    enc_key, auth_key, _ = expand_message_key(mk)
    if not _compare(_digest(auth_key, ad + c, _SHA256), tag):
        raise DecryptFailed("invalid signature")  # the library's wording for a MAC mismatch
    if len(c) < IV_LEN:  # only reachable with a valid MAC over < 16 bytes: Go would panic
        raise DecryptFailed("ciphertext shorter than the IV")
    return _ctr(enc_key, c[:IV_LEN], c[IV_LEN:])
