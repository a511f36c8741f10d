"""status-go's X3DH over secp256k1: no one-time prekey, SK = Keccak-256(DH1 ‖ DH2 ‖ DH3).

Every DH output is the 32-byte x-coordinate (go-ethereum ``ecies.GenerateShared(pub,16,16)``), not hashed.
The initiator's DH with its identity key, and all three responder DHs, go through :class:`KeyOps`, so IK
and SPK private keys never enter the core; only the initiator's one-time ephemeral is a host secret.
"""

from __future__ import annotations

from . import secp256k1
from .hashing import keccak256
from .keyops import KeyOps
from .keys import require_compressed

__all__ = ["initiate", "respond", "initiator_dhs", "responder_dhs", "shared_key"]


def shared_key(dh1: bytes, dh2: bytes, dh3: bytes) -> bytes:
    """SK = Keccak-256(dh1 ‖ dh2 ‖ dh3): no 0xFF prefix, no HKDF (unlike Signal)."""
    return keccak256(dh1, dh2, dh3)


def initiator_dhs(
    my_identity: KeyOps, their_identity: bytes, their_spk: bytes, ephemeral_secret: bytes
) -> tuple[bytes, bytes, bytes]:
    """(DH(IK_A, SPK_B), DH(EK_A, IK_B), DH(EK_A, SPK_B)) as ``x3dhActive`` computes them."""
    their_identity = require_compressed(their_identity, "peer identity key")
    their_spk = require_compressed(their_spk, "peer signed prekey")
    dh1 = my_identity.dh(their_spk)
    dh2 = secp256k1.dh_x(ephemeral_secret, their_identity)
    dh3 = secp256k1.dh_x(ephemeral_secret, their_spk)
    return dh1, dh2, dh3


def responder_dhs(
    my_identity: KeyOps, my_spk: KeyOps, their_identity: bytes, their_ephemeral: bytes
) -> tuple[bytes, bytes, bytes]:
    """(DH(SPK_B, IK_A), DH(IK_B, EK_A), DH(SPK_B, EK_A)) as ``x3dhPassive`` computes them."""
    their_identity = require_compressed(their_identity, "peer identity key")
    their_ephemeral = require_compressed(their_ephemeral, "peer ephemeral key")
    dh1 = my_spk.dh(their_identity)
    dh2 = my_identity.dh(their_ephemeral)
    dh3 = my_spk.dh(their_ephemeral)
    return dh1, dh2, dh3


def initiate(my_identity: KeyOps, their_identity: bytes, their_spk: bytes, ephemeral_secret: bytes) -> bytes:
    """The initiator's (Alice's) shared key; EK_A's public key goes into ``X3DHHeader.key``."""
    return shared_key(*initiator_dhs(my_identity, their_identity, their_spk, ephemeral_secret))


def respond(my_identity: KeyOps, my_spk: KeyOps, their_identity: bytes, their_ephemeral: bytes) -> bytes:
    """The responder's (Bob's) shared key for an incoming X3DH header."""
    return shared_key(*responder_dhs(my_identity, my_spk, their_identity, their_ephemeral))
