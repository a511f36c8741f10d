"""One-call seal/open of a Waku payload (envelope + encryption), randomness injected as an :data:`Rng`.

Draw order matches js-waku, so a recorded RNG stream reproduces its wires: padding first, then for ECIES the
ephemeral private key (32) and IV (16), for AES-GCM the nonce (12).
"""

from __future__ import annotations

from typing import Literal

from .. import secp256k1
from ..keyops import KeyOps
from . import ecies, symmetric
from .envelope import Opened, Rng, decode_envelope, encode_envelope

__all__ = ["Mode", "seal", "open_wire"]

Mode = Literal["asymmetric", "symmetric"]

#: Redraws of an out-of-range ephemeral scalar before giving up (each happens with probability ~2^-128).
_MAX_SCALAR_DRAWS = 8


def _ephemeral(rng: Rng) -> bytes:
    for _ in range(_MAX_SCALAR_DRAWS):
        secret = rng(32)
        if secp256k1.valid_secret(secret):
            return secret
    raise ValueError("random source keeps returning invalid secp256k1 scalars")


def seal(
    payload: bytes,
    *,
    to: bytes | None = None,
    sym_key: bytes | None = None,
    signer: KeyOps | None = None,
    rng: Rng,
) -> bytes:
    """Envelope ``payload`` (signed by ``signer`` if given) and encrypt it to ``to`` (ECIES) or ``sym_key``."""
    if (to is None) == (sym_key is None):
        raise ValueError("give exactly one of `to` (asymmetric) or `sym_key` (symmetric)")
    if to is not None:
        secp256k1.public_key(to)  # fail on a bad recipient before the signer spends a token call
    envelope = encode_envelope(payload, signer=signer, padding=rng)
    if to is not None:
        return ecies.seal_asymmetric(envelope, to, ephemeral_secret=_ephemeral(rng), iv=rng(ecies.IV_LEN))
    assert sym_key is not None
    return symmetric.seal_symmetric(envelope, sym_key, nonce=rng(symmetric.NONCE_LEN))


def open_wire(wire: bytes, *, me: KeyOps | None = None, sym_key: bytes | None = None) -> Opened:
    """Decrypt with our key (``me``, one ECDH) or ``sym_key`` and decode the envelope."""
    if (me is None) == (sym_key is None):
        raise ValueError("give exactly one of `me` (asymmetric) or `sym_key` (symmetric)")
    if me is not None:
        return decode_envelope(ecies.open_asymmetric(wire, me))
    assert sym_key is not None
    return decode_envelope(symmetric.open_symmetric(wire, sym_key))
