"""BIP32 private-key derivation on secp256k1, the subset status-go's ``extkeys`` uses.

Why not bip-utils: it is exact but pulls in a dozen packages (cbor2, pynacl, sr25519 and TON bindings,
ecdsa, …) for what is here ~40 lines of ``hmac`` + integer arithmetic; coincurve (already a dependency)
gives the one point multiplication a non-hardened step needs. bip-utils served as the oracle for the
shared vectors, which the tests replay.

Child keys are reduced mod n and kept as 32 big-endian bytes (status-go once dropped leading zeros;
that bug is fixed upstream and the regression vector is in the tests). Secrets and chain codes live in
``bytearray`` and :meth:`ExtendedKey.wipe` zeroes them; Python ``int`` and ``hmac`` digests are
immutable and cannot be zeroed, which the docstring of :mod:`.bip39` says plainly as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

import coincurve

from ..errors import MalformedKey, ProtocolError
from ..secp256k1 import CURVE_ORDER
from .base58 import b58check_encode

__all__ = ["HARDENED", "ExtendedKey", "PathError", "parse_path", "master_key", "derive_child", "derive_path"]

HARDENED = 0x8000_0000
_MASTER_HMAC_KEY = b"Bitcoin seed"
_XPRV_VERSION = bytes.fromhex("0488ade4")
_PATH_RE = re.compile(r"m(/[0-9]+['hH]?)*", re.ASCII)


class PathError(ProtocolError):
    """A derivation path that is not ``m/…`` with decimal indices below 2^31, optionally hardened."""


@dataclass(eq=False)
class ExtendedKey:
    """A private extended key: 32-byte scalar and 32-byte chain code (both zeroable)."""

    secret: bytearray
    chain_code: bytearray
    depth: int = 0

    def __repr__(self) -> str:  # the generated repr would print the secret and chain code
        return f"ExtendedKey(depth={self.depth})"

    def public_key(self, compressed: bool = True) -> bytes:
        """SEC1 public key of :attr:`secret` (33 bytes compressed, else 65)."""
        return coincurve.PrivateKey(bytes(self.secret)).public_key.format(compressed=compressed)

    def wipe(self) -> None:
        """Overwrite the scalar and chain code with zeros (the object is unusable afterwards)."""
        self.secret[:] = bytes(len(self.secret))
        self.chain_code[:] = bytes(len(self.chain_code))

    def xprv(self) -> str:
        """Base58Check ``xprv…`` serialisation; only for the master key (depth 0, no parent fingerprint).

        Deeper keys would need HASH160 of the parent, and nothing here needs them serialised.
        """
        if self.depth != 0:
            raise ValueError("only the master key is serialised")
        payload = bytearray(_XPRV_VERSION + bytes(9))  # version, depth 0, parent fingerprint 0, child 0
        payload += self.chain_code
        payload += b"\0"
        payload += self.secret
        try:
            return b58check_encode(bytes(payload))
        finally:
            payload[:] = bytes(len(payload))


def _split(digest: bytes) -> tuple[int, bytearray]:
    return int.from_bytes(digest[:32], "big"), bytearray(digest[32:])


def master_key(seed: bytes | bytearray) -> ExtendedKey:
    """HMAC-SHA512(key="Bitcoin seed", seed) → master key; BIP32 seeds are 16..64 bytes."""
    if not 16 <= len(seed) <= 64:
        raise MalformedKey("BIP32 seed must be 16 to 64 bytes")
    k, chain = _split(hmac.new(_MASTER_HMAC_KEY, seed, hashlib.sha512).digest())
    if not 0 < k < CURVE_ORDER:  # probability ~2^-127; BIP32 says the seed is then unusable
        raise MalformedKey("seed gives an invalid master key")
    return ExtendedKey(bytearray(k.to_bytes(32, "big")), chain, 0)


def derive_child(parent: ExtendedKey, index: int) -> ExtendedKey:
    """CKDpriv: hardened (index ≥ 2^31) hashes ``0x00‖k‖i``, normal hashes ``serP(K)‖i``."""
    if not 0 <= index < 2**32:
        raise PathError("child index must be 0 .. 2^32-1")
    if index >= HARDENED:
        data = bytearray(1)  # 0x00 ‖ k, built in place so no immutable copy of k is made
        data += parent.secret
    else:
        data = bytearray(parent.public_key(True))
    data += index.to_bytes(4, "big")
    try:
        il, chain = _split(hmac.new(parent.chain_code, data, hashlib.sha512).digest())
    finally:
        data[:] = bytes(len(data))
    child = (il + int.from_bytes(parent.secret, "big")) % CURVE_ORDER
    if il >= CURVE_ORDER or child == 0:  # ~2^-127; status-go's extkeys returns ErrInvalidChildKey too
        raise MalformedKey("derivation gives an invalid child key at this index")
    return ExtendedKey(bytearray(child.to_bytes(32, "big")), chain, parent.depth + 1)


def parse_path(path: str) -> tuple[int, ...]:
    """``"m/43'/60'/1581'/0'/0"`` → indices (hardened ones + 2^31); ``'``, ``h`` or ``H`` mark hardening."""
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
        raise PathError("derivation path must look like m/43'/60'/1581'/0'/0")
    out: list[int] = []
    for part in path.split("/")[1:]:
        hard = part[-1] in "'hH"
        n = int(part[:-1] if hard else part)
        if n >= HARDENED:
            raise PathError("path index must be below 2^31")
        out.append(n + HARDENED if hard else n)
    return tuple(out)


def derive_path(master: ExtendedKey, path: str) -> ExtendedKey:
    """Walk ``path`` from ``master``; intermediate keys are wiped, ``master`` is left untouched."""
    indices = parse_path(path)
    key = ExtendedKey(bytearray(master.secret), bytearray(master.chain_code), master.depth)
    try:
        for i in indices:
            nxt = derive_child(key, i)
            key.wipe()
            key = nxt
    except BaseException:
        key.wipe()
        raise
    return key
