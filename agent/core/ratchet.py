"""The Double Ratchet as status-im/doubleratchet v3 runs it inside status-go, in two profiles.

* ``STATUS_GO`` (default, what is on the wire): secp256k1 ratchet keys (33-byte compressed public keys,
  DH = 32-byte x-coordinate), 41-byte header AD, the caller passes no AD of its own, MaxSkip 1000,
  MaxKeep 3000, 2000 stored keys per session.
* ``SPEC``: the library default crypto (X25519, 40-byte header), limits 1000 / 2000 / 2000.

Behaviour copied from the library, because peers depend on it:

* Both initial symmetric chains are keyed with SK; the responder's first ratchet key is its signed
  prekey, whose private half may live in a token — then ``own_priv`` is None and the one DH that needs
  it (the first DH ratchet step) goes through the ``spk`` :class:`KeyOps` passed to :meth:`decrypt`.
* A stored key for (header.dh, n) is tried first; every key that decrypts a message is *kept* ("waiting
  for confirmation") until :meth:`delete_message_key`, so duplicates decrypt again until then.
* After each successful new decrypt the store keeps only the newest ``max_keys_per_session`` keys, then,
  once ``keys_count >= max_keep``, drops keys with ``seq <= keys_count - max_keep``.
* Skipping exactly MaxSkip keys is allowed, one more is refused; every failure leaves the state exactly
  as it was (the decrypt works on a copy of the small scalar state and stages new keys, which are only
  merged on success — no deep copy of the key store per message).
* A ratchet key pair generated during a receive that then fails is consumed from the key generator
  (as in the library), but the state does not change.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import coincurve
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import drcrypto, secp256k1
from .errors import (
    DecryptFailed,
    InvalidState,
    MalformedKey,
    MessageKeyGone,
    TooManySkipped,
)
from .keyops import KeyOps

__all__ = [
    "Profile",
    "STATUS_GO",
    "SPEC",
    "PROFILES",
    "profile_by_name",
    "Header",
    "KeyGen",
    "Tracer",
    "Ratchet",
    "StateSnapshot",
    "STATE_VERSION",
    "MIGRATIONS",
]

MAX_UINT32: Final = 0xFFFFFFFF

KeyGen = Callable[[], tuple[bytes, bytes]]
"""Returns a fresh ratchet key pair ``(private, public)`` in the profile's encoding."""

Tracer = Callable[[str, dict[str, Any]], None]
"""Receives each primitive call (GenerateDH, DH, KdfRK, KdfCK, Encrypt, Decrypt) — conformance only."""


def _secp_keygen() -> tuple[bytes, bytes]:
    k = coincurve.PrivateKey()
    return k.secret, k.public_key.format(compressed=True)


def _secp_dh(priv: bytes, pub: bytes) -> bytes:
    # EthereumCrypto.DH: DecompressPubkey wants exactly 33 bytes; output is the raw x-coordinate
    if len(pub) != 33:
        raise MalformedKey("ratchet public key must be 33 bytes compressed secp256k1")
    return secp256k1.dh_x(priv, pub)


def _x25519_keygen() -> tuple[bytes, bytes]:
    k = X25519PrivateKey.generate()
    return k.private_bytes_raw(), k.public_key().public_bytes_raw()


def _x25519_dh(priv: bytes, pub: bytes) -> bytes:
    if len(pub) != 32 or len(priv) != 32:
        raise MalformedKey("X25519 keys are 32 bytes")
    try:
        return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))
    except ValueError as exc:  # low-order point: Go would return zeros, we refuse
        raise MalformedKey(f"X25519 DH failed: {exc}") from None


@dataclass(frozen=True)
class Profile:
    """A ratchet configuration: curve, public-key length and the library's three limits."""

    name: str
    curve: str  # "secp256k1" | "x25519"
    pub_len: int
    max_skip: int
    max_keep: int
    max_keys_per_session: int

    def dh(self, priv: bytes, pub: bytes) -> bytes:
        """DH of a host-held ratchet private key with a peer ratchet public key."""
        return _secp_dh(priv, pub) if self.curve == "secp256k1" else _x25519_dh(priv, pub)

    def default_keygen(self) -> KeyGen:
        """Randomness from coincurve (secp256k1) or cryptography (X25519)."""
        return _secp_keygen if self.curve == "secp256k1" else _x25519_keygen

    def with_limits(self, max_skip: int, max_keep: int, max_keys_per_session: int) -> "Profile":
        """The same crypto with other limits (the library's options; used by vectors)."""
        return replace(self, max_skip=max_skip, max_keep=max_keep, max_keys_per_session=max_keys_per_session)


STATUS_GO: Final = Profile("status-go", "secp256k1", 33, 1000, 3000, 2000)
SPEC: Final = Profile("spec", "x25519", 32, 1000, 2000, 2000)
PROFILES: Final[Mapping[str, Profile]] = {
    "status-go": STATUS_GO,
    "status_go": STATUS_GO,
    "EthereumCrypto": STATUS_GO,
    "spec": SPEC,
    "DefaultCrypto": SPEC,
}
_CURVES: Final = {"secp256k1": STATUS_GO, "x25519": SPEC}


def profile_by_name(name: str) -> Profile:
    """``"status-go"`` or ``"spec"`` (also the library's crypto names ``EthereumCrypto``/``DefaultCrypto``)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown ratchet profile {name!r} (use 'status-go' or 'spec')") from None


@dataclass(frozen=True, slots=True)
class Header:
    """MessageHeader{DH, N, PN}; on the wire as DRHeader.key / n / pn."""

    dh: bytes
    n: int
    pn: int

    def encode(self) -> bytes:
        """LE32(n) ‖ LE32(pn) ‖ dh — the library's Encode(), the MAC's AD after the caller's AD."""
        return struct.pack("<II", self.n, self.pn) + self.dh


class _Scalars:
    """The small, copyable part of the state; decrypt mutates a copy and swaps it in on success."""

    __slots__ = ("dhs_priv", "dhs_pub", "dhr", "rk", "cks", "ns", "ckr", "nr", "pn", "keys_count")

    def __init__(
        self,
        dhs_priv: bytes | None,
        dhs_pub: bytes,
        dhr: bytes,
        rk: bytes,
        cks: bytes,
        ns: int,
        ckr: bytes,
        nr: int,
        pn: int,
        keys_count: int,
    ) -> None:
        self.dhs_priv = dhs_priv
        self.dhs_pub = dhs_pub
        self.dhr = dhr
        self.rk = rk
        self.cks = cks
        self.ns = ns
        self.ckr = ckr
        self.nr = nr
        self.pn = pn
        self.keys_count = keys_count

    def copy(self) -> "_Scalars":
        return _Scalars(
            self.dhs_priv, self.dhs_pub, self.dhr, self.rk, self.cks, self.ns,
            self.ckr, self.nr, self.pn, self.keys_count,
        )

    def __repr__(self) -> str:  # never show keys
        return f"<ratchet scalars ns={self.ns} nr={self.nr} pn={self.pn}>"


# (dh, n) -> (mk, seq); insertion order == seq order, so the oldest keys are always at the front
_Store = OrderedDict[tuple[bytes, int], tuple[bytes, int]]
_Staged = list[tuple[bytes, int, bytes, int]]

STATE_VERSION: Final = 1
_MAGIC: Final = b"KADR"
MIGRATIONS: dict[int, Callable[[bytes], bytes]] = {}
"""Upgrade hooks: ``MIGRATIONS[v](body_v) -> body_{v+1}`` (body without magic, version and checksum)."""


class StateSnapshot:
    """A ratchet's state at one moment (:meth:`Ratchet.snapshot`): its scalars (a private copy) and its kept keys
    (each packed once when kept), made into bytes on first use."""

    __slots__ = ("_profile", "_s", "_kept", "_bytes")

    def __init__(self, profile: Profile, scalars: _Scalars, kept: tuple[bytes, ...]) -> None:
        self._profile, self._s, self._kept = profile, scalars, kept
        self._bytes: bytes | None = None

    def to_bytes(self) -> bytes:
        """``KADR`` ‖ version ‖ body ‖ SHA-256(everything before)."""
        if self._bytes is None:
            s, p = self._s, self._profile
            out = bytearray(_MAGIC)
            out.append(STATE_VERSION)
            name = p.name.encode()
            out += bytes([len(name)]) + name + bytes([0 if p.curve == "secp256k1" else 1])
            out += struct.pack(">III", p.max_skip, p.max_keep, p.max_keys_per_session)
            priv = s.dhs_priv if s.dhs_priv is not None else b""
            for field in (priv, s.dhs_pub, s.dhr, s.rk, s.cks, s.ckr):
                out += bytes([len(field)]) + field
            out += struct.pack(">IIIQ", s.ns, s.nr, s.pn, s.keys_count)
            out += struct.pack(">I", len(self._kept))
            out += b"".join(self._kept)  # then the kept keys, each packed once when it was kept
            body = bytes(out)
            self._bytes = body + hashlib.sha256(body).digest()
        return self._bytes


class Ratchet:
    """One Double Ratchet session (state only; persistence is the caller's job via to_bytes/from_bytes)."""

    __slots__ = ("profile", "_s", "_store", "_packed", "_keygen", "_tracer")

    def __init__(self, profile: Profile, scalars: _Scalars, store: _Store | None = None,
                 keygen: KeyGen | None = None) -> None:
        self.profile = profile
        self._s = scalars
        self._store: _Store = store if store is not None else OrderedDict()
        # each kept key as to_bytes writes it, in the store's order: the state is serialised on every write
        # and, while messages await confirmation, is mostly kept keys; packing them once each keeps a write
        # proportional to what changed (every change to _store changes _packed alike)
        self._packed: dict[tuple[bytes, int], bytes] = {
            k: _pack_kept(k[0], k[1], mk, seq) for k, (mk, seq) in self._store.items()}
        self._keygen: KeyGen = keygen or profile.default_keygen()
        self._tracer: Tracer | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def initiator(cls, profile: Profile, shared_key: bytes, remote_pub: bytes, keygen: KeyGen | None = None,
                  tracer: Tracer | None = None) -> "Ratchet":
        """Alice (``NewWithRemoteKey``): fresh ratchet key, DHr = Bob's SPK, send chain from KDF_RK(SK, DH)."""
        _check_key32(shared_key, "shared key")
        _check_pub(profile, remote_pub)
        r = cls(profile, _Scalars(None, b"", remote_pub, shared_key, shared_key, 0, shared_key, 0, 0, 0),
                keygen=keygen)
        r._tracer = tracer
        priv, pub = r._generate()
        dh_out = r._dh(priv, pub, remote_pub, None)
        rk, ck, _ = r._kdf_rk(shared_key, dh_out)
        r._s.dhs_priv, r._s.dhs_pub, r._s.rk, r._s.cks = priv, pub, rk, ck
        return r

    @classmethod
    def responder(cls, profile: Profile, shared_key: bytes, own_pub: bytes, own_priv: bytes | None,
                  keygen: KeyGen | None = None, tracer: Tracer | None = None) -> "Ratchet":
        """Bob (``New``): his first ratchet key is his SPK (``own_priv`` None when it lives in a token)."""
        _check_key32(shared_key, "shared key")
        _check_pub(profile, own_pub)
        if own_priv is not None:
            _check_key32(own_priv, "ratchet private key")
        r = cls(profile, _Scalars(own_priv, own_pub, b"", shared_key, shared_key, 0, shared_key, 0, 0, 0),
                keygen=keygen)
        r._tracer = tracer
        return r

    def set_keygen(self, keygen: KeyGen | None) -> None:
        """Replace the ratchet key generator (None: the profile's CSPRNG default)."""
        self._keygen = keygen or self.profile.default_keygen()

    def set_tracer(self, tracer: Tracer | None) -> None:
        """Observe primitive calls (the conformance replayer compares them with recorded traces)."""
        self._tracer = tracer

    # ------------------------------------------------------------------ primitives with tracing
    def _generate(self) -> tuple[bytes, bytes]:
        priv, pub = self._keygen()
        if self._tracer:
            self._tracer("GenerateDH", {"priv": priv.hex(), "pub": pub.hex()})
        return priv, pub

    def _dh(self, priv: bytes | None, own_pub: bytes, remote: bytes, spk: KeyOps | None) -> bytes:
        if priv is not None:
            out = self.profile.dh(priv, remote)
        else:
            # the responder's initial ratchet key is the SPK held in the token
            if spk is None:
                raise InvalidState("the initial ratchet key is a token-held SPK: pass spk=KeyOps to decrypt")
            if spk.public_key() != own_pub:
                raise InvalidState("spk KeyOps does not hold this session's initial ratchet key")
            if len(remote) != 33:
                raise MalformedKey("ratchet public key must be 33 bytes compressed secp256k1")
            out = spk.dh(remote)
        if self._tracer:
            self._tracer("DH", {"own_pub": own_pub.hex(), "remote_pub": remote.hex(), "out": out.hex()})
        return out

    def _kdf_rk(self, rk: bytes, dh_out: bytes) -> tuple[bytes, bytes, bytes]:
        out = drcrypto.kdf_rk(rk, dh_out)
        if self._tracer:
            self._tracer("KdfRK", {"rk": rk.hex(), "dh_out": dh_out.hex(), "new_rk": out[0].hex(),
                                   "chain_key": out[1].hex(), "header_key": out[2].hex()})
        return out

    def _kdf_ck(self, ck: bytes) -> tuple[bytes, bytes]:
        out = drcrypto.kdf_ck(ck)
        if self._tracer:
            self._tracer("KdfCK", {"ck": ck.hex(), "next_ck": out[0].hex(), "mk": out[1].hex()})
        return out

    def _decrypt_with(self, mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        pt = drcrypto.decrypt(mk, ciphertext, ad)
        if self._tracer:
            self._tracer("Decrypt", {"mk": mk.hex(), "ad": ad.hex(), "ciphertext_len": len(ciphertext),
                                     "plaintext_len": len(pt)})
        return pt

    # ------------------------------------------------------------------ sending
    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> tuple[Header, bytes]:
        """RatchetEncrypt: header (DHs, Ns, PN), one chain step, MAC over ``ad ‖ header.encode()``."""
        s = self._s
        if s.ns >= MAX_UINT32:
            raise InvalidState("sending chain exhausted (n is a uint32)")
        header = Header(s.dhs_pub, s.ns, s.pn)
        s.cks, mk = self._kdf_ck(s.cks) if self._tracer else drcrypto.kdf_ck(s.cks)
        s.ns += 1
        full_ad = ad + header.encode()
        ct = drcrypto.encrypt(mk, plaintext, full_ad)
        if self._tracer:
            self._tracer("Encrypt", {"mk": mk.hex(), "ad": full_ad.hex(), "plaintext_len": len(plaintext),
                                     "ciphertext_len": len(ct)})
        return header, ct

    def advance_sending_chain(self, count: int) -> None:
        """Skip ``count`` send positions (the daemon reserves positions ahead and jumps past them after a crash).

        The peer stores the skipped keys as for lost messages, so ``count`` must stay within its MaxSkip.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        s = self._s
        if s.ns + count > MAX_UINT32:
            raise InvalidState("sending chain exhausted (n is a uint32)")
        ck = s.cks
        for _ in range(count):
            ck = drcrypto.hmac_sha256(ck, b"\x0f")
        s.cks = ck
        s.ns += count

    def sending_position(self) -> tuple[bytes, int]:
        """(our current ratchet public key, the n the next message will carry)."""
        return self._s.dhs_pub, self._s.ns

    # ------------------------------------------------------------------ receiving
    def has_message_key(self, dh: bytes, n: int) -> bool:
        """True when a key for (dh, n) is stored (skipped, or used and not yet confirmed)."""
        return (dh, n) in self._store

    def decrypt(self, header: Header, ciphertext: bytes, ad: bytes = b"", spk: KeyOps | None = None) -> bytes:
        """RatchetDecrypt; the state changes only if this returns.

        Raises DecryptFailed (bad MAC / tampering), TooManySkipped (more than MaxSkip), MessageKeyGone
        (old message whose key was deleted or pruned), MalformedKey (bad header key), InvalidState (SPK
        needed but not given).
        """
        dh, n, pn = header.dh, header.n, header.pn
        if not (0 <= n <= MAX_UINT32 and 0 <= pn <= MAX_UINT32):
            raise DecryptFailed("header counters must be uint32")
        if not isinstance(dh, bytes):
            raise MalformedKey("header key must be bytes")
        full_ad = ad + header.encode()
        stored = self._store.get((dh, n))
        if stored is not None:
            try:
                return self._decrypt_with(stored[0], ciphertext, full_ad)
            except DecryptFailed as exc:
                raise DecryptFailed(f"can't decrypt skipped message: {exc}") from None

        s = self._s.copy()
        staged: _Staged = []
        if dh != s.dhr:
            try:
                self._skip(s, s.dhr, pn, staged)
            except DecryptFailed as exc:
                raise type(exc)(f"can't skip previous chain message keys: {exc}") from None
            # DH ratchet step (library dhRatchet), in the library's order: DH, KDF, generate, DH, KDF
            if len(dh) != self.profile.pub_len:
                raise MalformedKey(f"ratchet public key must be {self.profile.pub_len} bytes")
            s.pn = s.ns
            s.dhr = dh
            recv_secret = self._dh(s.dhs_priv, s.dhs_pub, dh, spk)
            s.rk, s.ckr, _ = self._kdf_rk(s.rk, recv_secret)
            s.nr = 0
            s.dhs_priv, s.dhs_pub = self._generate()
            send_secret = self._dh(s.dhs_priv, s.dhs_pub, dh, None)
            s.rk, s.cks, _ = self._kdf_rk(s.rk, send_secret)
            s.ns = 0
        try:
            self._skip(s, dh, n, staged)
        except MessageKeyGone:
            # status-go says "can't skip current chain message keys: bad until"; what happened is simpler
            raise MessageKeyGone("already decrypted (duplicate): this message's key was used and confirmed, "
                                 "or deleted as too old") from None
        except DecryptFailed as exc:
            raise type(exc)(f"can't skip current chain message keys: {exc}") from None
        s.ckr, mk = self._kdf_ck(s.ckr) if self._tracer else drcrypto.kdf_ck(s.ckr)
        s.nr += 1
        try:
            plaintext = self._decrypt_with(mk, ciphertext, full_ad)
        except DecryptFailed as exc:
            raise DecryptFailed(f"can't decrypt: {exc}") from None
        staged.append((dh, n, mk, s.keys_count))  # the used key waits for confirmation
        s.keys_count += 1
        self._apply(s, staged)
        return plaintext

    def _skip(self, s: _Scalars, key: bytes, until: int, staged: _Staged) -> None:
        if until < s.nr:
            raise MessageKeyGone("bad until: probably an out-of-order message that was deleted")
        if s.nr + self.profile.max_skip < until:
            raise TooManySkipped("too many messages")
        ck, nr, seq = s.ckr, s.nr, s.keys_count
        tracer = self._tracer
        while nr < until:
            ck, mk = self._kdf_ck(ck) if tracer else drcrypto.kdf_ck(ck)
            staged.append((key, nr, mk, seq))
            nr += 1
            seq += 1
        s.ckr, s.nr, s.keys_count = ck, nr, seq

    def _apply(self, s: _Scalars, staged: _Staged) -> None:
        self._s = s
        store, packed = self._store, self._packed
        for dh, n, mk, seq in staged:
            k = (dh, n)
            if k in store:  # Put replaces; re-insert so insertion order stays seq order
                del store[k]
                del packed[k]
            store[k] = (mk, seq)
            packed[k] = _pack_kept(dh, n, mk, seq)
        limit = self.profile.max_keys_per_session
        while len(store) > limit:
            del packed[store.popitem(last=False)[0]]
        if s.keys_count >= self.profile.max_keep:
            cut = s.keys_count - self.profile.max_keep
            while store and next(iter(store.values()))[1] <= cut:
                del packed[store.popitem(last=False)[0]]

    def delete_message_key(self, dh: bytes, n: int) -> None:
        """status-go DeleteMk: forget the key of a confirmed message (no error if already gone)."""
        self._store.pop((dh, n), None)
        self._packed.pop((dh, n), None)

    # ------------------------------------------------------------------ inspection
    def debug_state(self) -> dict[str, Any]:
        """The full state in the vectors' ``state_after`` form (hex). Contains secrets: tests/conformance only."""
        s = self._s
        return {
            "dhs_pub": s.dhs_pub.hex(),
            "dhs_priv": s.dhs_priv.hex() if s.dhs_priv is not None else None,
            "dhr": s.dhr.hex(),
            "root_key": s.rk.hex(),
            "send_ck": s.cks.hex(),
            "send_n": s.ns,
            "recv_ck": s.ckr.hex(),
            "recv_n": s.nr,
            "pn": s.pn,
            "keys_count": s.keys_count,
            "stored_message_keys": [
                {"dh": dh.hex(), "n": n, "mk": mk.hex(), "seq": seq} for (dh, n), (mk, seq) in self._store.items()
            ],
        }

    def stored_key_count(self) -> int:
        """Number of message keys currently kept."""
        return len(self._store)

    def __repr__(self) -> str:
        s = self._s
        return (f"Ratchet(profile={self.profile.name}, dhs={s.dhs_pub.hex()[:16]}…, ns={s.ns}, nr={s.nr}, "
                f"pn={s.pn}, stored={len(self._store)})")

    # ------------------------------------------------------------------ serialisation
    def to_bytes(self) -> bytes:
        """Versioned binary state: ``KADR`` ‖ version ‖ body ‖ SHA-256(everything before)."""
        return self.snapshot().to_bytes()

    def snapshot(self) -> "StateSnapshot":
        """This state as of now, serialised only when asked (:meth:`StateSnapshot.to_bytes` equals
        :meth:`to_bytes` now, whatever this ratchet does meanwhile). Cheap: a copy of the scalars (an encrypt
        changes them in place) and the list of kept keys, each packed once when kept; packing, joining and
        hashing (a busy session keeps hundreds of keys) is left to whoever writes the state, which may be only
        the last of several snapshots (the store's commit leader, on its own thread)."""
        return StateSnapshot(self.profile, self._s.copy(), tuple(self._packed.values()))

    @classmethod
    def from_bytes(cls, data: bytes, keygen: KeyGen | None = None) -> "Ratchet":
        """Inverse of :meth:`to_bytes`; runs MIGRATIONS for older versions; InvalidState on anything else."""
        if not isinstance(data, (bytes, bytearray)) or len(data) < len(_MAGIC) + 1 + 32:
            raise InvalidState("ratchet state too short")
        data = bytes(data)
        if data[:4] != _MAGIC:
            raise InvalidState("not a ratchet state")
        if hashlib.sha256(data[:-32]).digest() != data[-32:]:
            raise InvalidState("ratchet state checksum mismatch")
        version, body = data[4], data[5:-32]
        while version < STATE_VERSION:
            hook = MIGRATIONS.get(version)
            if hook is None:
                raise InvalidState(f"no migration from ratchet state version {version}")
            body = hook(body)
            version += 1
        if version != STATE_VERSION:
            raise InvalidState(f"unknown ratchet state version {version}")
        try:
            return cls._parse_body(body, keygen)
        except InvalidState:
            raise
        except (IndexError, struct.error, ValueError, UnicodeDecodeError) as exc:
            raise InvalidState(f"corrupt ratchet state: {exc}") from None

    @classmethod
    def _parse_body(cls, body: bytes, keygen: KeyGen | None) -> "Ratchet":
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(body):
                raise InvalidState("truncated ratchet state")
            out = body[pos:pos + n]
            pos += n
            return out

        def var() -> bytes:
            return take(take(1)[0])

        name = var().decode()
        curve = take(1)[0]
        if curve not in (0, 1):
            raise InvalidState("unknown curve")
        base = _CURVES["secp256k1" if curve == 0 else "x25519"]
        max_skip, max_keep, max_keys = struct.unpack(">III", take(12))
        profile = replace(base, name=name, max_skip=max_skip, max_keep=max_keep, max_keys_per_session=max_keys)
        priv, dhs_pub, dhr, rk, cks, ckr = (var() for _ in range(6))
        for k in (rk, cks, ckr):
            if len(k) != 32:
                raise InvalidState("chain keys are 32 bytes")
        if len(dhs_pub) != profile.pub_len or len(dhr) not in (0, profile.pub_len) or len(priv) not in (0, 32):
            raise InvalidState("bad key length in ratchet state")
        ns, nr, pn, keys_count = struct.unpack(">IIIQ", take(20))
        (count,) = struct.unpack(">I", take(4))
        store: _Store = OrderedDict()
        last_seq = -1
        for _ in range(count):
            dh = var()
            (n,) = struct.unpack(">I", take(4))
            mk = take(32)
            (seq,) = struct.unpack(">Q", take(8))
            if seq <= last_seq or seq >= keys_count or (dh, n) in store:
                raise InvalidState("message key store out of order")
            last_seq = seq
            store[(dh, n)] = (mk, seq)
        if pos != len(body):
            raise InvalidState("trailing bytes in ratchet state")
        scalars = _Scalars(priv or None, dhs_pub, dhr, rk, cks, ns, ckr, nr, pn, keys_count)
        return cls(profile, scalars, store, keygen)


@functools.lru_cache(maxsize=8)
def _kept_struct(dh_len: int) -> struct.Struct:
    return struct.Struct(f">B{dh_len}sI32sQ")


def _pack_kept(dh: bytes, n: int, mk: bytes, seq: int) -> bytes:
    """A kept message key as serialised: len(dh) ‖ dh ‖ n (u32) ‖ mk (32) ‖ seq (u64), big-endian."""
    return _kept_struct(len(dh)).pack(len(dh), dh, n, mk, seq)


def _check_key32(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise MalformedKey(f"{what} must be 32 bytes")


def _check_pub(profile: Profile, pub: bytes) -> None:
    if not isinstance(pub, (bytes, bytearray)) or len(pub) != profile.pub_len:
        raise MalformedKey(f"ratchet public key must be {profile.pub_len} bytes for profile {profile.name}")
    if profile.curve == "secp256k1":
        secp256k1.public_key(bytes(pub))
