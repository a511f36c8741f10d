"""Our signed prekeys (SPKs): the current one, rotation, destruction after the grace period, lookup by public key.

The current SPK is the newest one that is neither expired nor destroyed; it is what our bundle publishes. It
rotates when due (``rotation_ns`` from its creation; :func:`~agent.daemon.installations.rotation_due`) or on
request: the new version is created in the backend, the old one is marked expired. An expired SPK still answers
X3DH messages that name it until ``grace_ns`` after its expiry (late messages from peers with our older bundle);
then its backend key is destroyed (:func:`~agent.daemon.installations.destroy_due`) and a message naming it can
no longer start a session (``unknown_prekey``). The metadata (version, public key, times, destroyed) is in the
store; the private keys are only in the backend.

What a rotation means for sessions (our responder sessions on the old SPK stop being used to send) is the session
manager's rule; this class reports which SPKs a rotation retired. Not thread-safe: the session manager calls it
under its state lock only (the backend's key lookups may be called outside it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from agent.core.error_codes import CodedError, ErrorCode
from agent.core.keyops import KeyOps
from backends.base import Backend
from backends.errors import KeyExists, KeyNotFound

from .installations import destroy_due, rotation_due
from .store.rows import Op, OwnSpkRecord, PutOwnSpk

__all__ = ["SignedPrekeys", "RotationTooSoon", "MAX_LIVE_PREKEYS"]

#: Most SPKs whose private keys exist at once: the current one and two superseded ones still answering late
#: X3DH messages. A rotation beyond it destroys the oldest superseded key at once (before its grace period ends),
#: so the key file and the token's object count stay bounded whatever the number of rotations.
MAX_LIVE_PREKEYS = 3


class RotationTooSoon(CodedError):
    """A rotation was asked for sooner than the configured interval: wait, or (owner) retry with force."""

    code = ErrorCode.RATE_LIMITED


class SignedPrekeys:
    """Our SPK records by version, over the backend that holds their private keys."""

    def __init__(
        self,
        backend: Backend,
        records: Iterable[OwnSpkRecord],
        *,
        clock: Callable[[], int],
        rotation_ns: int,
        grace_ns: int,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._rotation_ns = rotation_ns
        self._grace_ns = grace_ns
        self._spks: dict[int, OwnSpkRecord] = {spk.version: spk for spk in records}

    def current(self) -> OwnSpkRecord | None:
        """The newest SPK neither expired nor destroyed (every encrypt asks, through our bundle)."""
        best: OwnSpkRecord | None = None
        for spk in self._spks.values():
            if spk.expired_ns is None and not spk.destroyed and (best is None or spk.version > best.version):
                best = spk
        return best

    def rotation_due(self, now: int) -> bool:
        """No current SPK, or the current one is older than the rotation period."""
        cur = self.current()
        return cur is None or rotation_due(cur.created_ns, now, self._rotation_ns)

    def check_interval(self, now: int, min_interval_ns: int) -> None:
        """Raise RotationTooSoon if the current SPK is younger than ``min_interval_ns``."""
        cur = self.current()
        if cur is not None and min_interval_ns > 0 and now - cur.created_ns < min_interval_ns:
            wait = (cur.created_ns + min_interval_ns - now) / 1e9
            raise RotationTooSoon(f"the signed prekey was rotated {max(0.0, (now - cur.created_ns) / 1e9):.0f} s ago;"
                                  f" the next rotation is allowed in {wait:.0f} s (or as the owner with force)")

    def rotate(self, ops: list[Op]) -> tuple[OwnSpkRecord, list[bytes]]:
        """Create the next version and expire the current one; returns the new record and the public keys of the
        SPKs this retired (normally one)."""
        version = max(self._spks, default=0) + 1
        try:
            key = self._backend.create_signed_prekey(version)
        except KeyExists:  # created before a crash that lost the store write; it was never published
            key = self._backend.signed_prekey(version)
        now = self._clock()
        retired: list[bytes] = []
        for old in self._spks.values():
            if old.expired_ns is None:
                old.expired_ns = now
                ops.append(PutOwnSpk(replace(old)))
                retired.append(old.public)
        rec = OwnSpkRecord(version, key.public_key(), now, None, False)
        self._spks[version] = rec
        ops.append(PutOwnSpk(replace(rec)))
        self._destroy_beyond_cap(ops)
        return rec, retired

    def _destroy_beyond_cap(self, ops: list[Op]) -> None:
        """Destroy the oldest superseded keys while more than MAX_LIVE_PREKEYS exist (their grace cut short)."""
        live = sorted((s for s in self._spks.values() if not s.destroyed), key=lambda s: s.version)
        for spk in live[: max(0, len(live) - MAX_LIVE_PREKEYS)]:
            if spk.expired_ns is None:
                continue  # never the current one (rotate() expired every older one)
            self._destroy(spk, ops)

    def _destroy(self, spk: OwnSpkRecord, ops: list[Op]) -> None:
        try:
            self._backend.destroy_signed_prekey(spk.version)
        except KeyNotFound:
            pass  # destroyed earlier but the mark was lost in a crash
        spk.destroyed = True
        ops.append(PutOwnSpk(replace(spk)))

    def destroy_expired(self, now: int, ops: list[Op]) -> None:
        """Destroy the backend keys of SPKs expired longer than the grace period."""
        for spk in list(self._spks.values()):
            if not spk.destroyed and destroy_due(spk.expired_ns, now, self._grace_ns):
                self._destroy(spk, ops)
        self._destroy_beyond_cap(ops)  # a home from before the cap (or a crash mid-rotation) shrinks here

    def by_public(self, public: bytes) -> OwnSpkRecord | None:
        for spk in self._spks.values():
            if spk.public == public:
                return spk
        return None

    def key(self, public: bytes) -> KeyOps | None:
        """The backend key of the SPK with this public key; None when unknown or destroyed."""
        spk = self.by_public(public)
        if spk is None or spk.destroyed:
            return None
        try:
            return self._backend.signed_prekey(spk.version)
        except KeyNotFound:
            return None
