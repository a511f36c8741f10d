"""The session manager: a full Status 1:1 endpoint across devices, over a backend (IK/SPK) and the store.

It decides which installations a message goes to, which session each uses (or runs X3DH), how received
messages are decrypted (X3DH header, then ratchet, then DH fallback), how bundles update device lists, when
the signed prekey rotates and expired ones are destroyed, and when we answer with our bundle. Its parts:
:mod:`~agent.daemon.session_cache` (the bounded write-back cache over the store rows),
:mod:`~agent.daemon.prekeys` (our signed prekeys), :mod:`~agent.daemon.own_devices` (approval of our own
devices and the bundle we publish), :mod:`~agent.daemon.installations` (the pure rules).

Why a message key is never used twice, across kill -9 and power loss
    A sending message key is determined by (session, sending chain, position n); the IV is derived from it.
    1. Every change of a sending chain - a new session (X3DH) or a DH ratchet step during a decrypt - is
       written to the store and made durable *before* any ciphertext derived from it leaves this object; a
       chain we handed out ciphertexts on is therefore always on disk. (A plaintext from the same decrypt
       may leave first, rule 8: it is not derived from the new sending chain.)
    2. Within a chain, positions are *reserved*: whenever a session is written, ``send_hwm`` = current
       position + ``send_reserve``. An encrypt at position ``n`` with ``n >= send_hwm`` first writes a new
       mark past ``n``; below the mark it writes nothing. So every position ever handed out is < the durable
       ``send_hwm`` of its chain.
    3. On load, a session whose stored position is below its mark is advanced to the mark before its first
       use, so no position handed out before a crash is reused (:mod:`agent.daemon.session_cache`, where the
       loading and the writing of marks live, has the full argument).
    4. Two requests never interleave on one ratchet: every state transition runs under one lock (the
       Python work is GIL-bound anyway), which is stricter than per-session locking. Outside it happen only
       the wait for durability, which is what lets concurrent requests share one fsync (the store's group
       commit), and token work whose inputs are known before the transition: the passive X3DH of a new
       incoming session with the SPK DH of its first ratchet step, the active X3DH of a new outgoing one,
       and DH-fallback decryption.
    5. The store applies batches in submission order and reports durability monotonically, so "batch n is
       durable" implies every earlier state transition is too. A call that wrote something waits for its own
       batch, which therefore covers whatever earlier transitions it built on. A call that wrote nothing (an
       encrypt inside an already written reservation, a confirm of refs already gone, ``our_bundle``) waits
       only for the batches its result was built on (``_run``): the latest write of every session and
       installation it looked at (the cache records the batch of each write and reports the highest one a
       request touched, ``SessionCache.read_seq``) and the latest batch holding anything else (our prekeys,
       meta, reply times, session deletes: ``_other_seq``). Every in-memory change is written in the request that
       makes it (rule 2's positions below the mark are covered by the mark's batch), and rows read from the
       store are committed, hence durable; so such a call never returns a result built on another request's
       not-yet-durable state, and no longer waits behind unrelated commits (another peer's decrypt).
       Under :meth:`SessionManager.run_deferred` (the server's event loop) the wait moves out of the call, not
       away: the call reports the batch it would have waited for, and the server's commit thread waits for it
       before the answer leaves the agent; so for the client nothing changes, and concurrent answers share
       one fsync.

    6. With a store that several agents share (PostgreSQL), every state transition of this agent runs in
       the store's *turn* (its store-wide lock, held from before the cache is read until the writes are
       durable, written through the connection that holds it), and a turn that finds rows another agent wrote
       reloads the whole cache first (``_current``): two agents never work on one ratchet, and a session that
       moves between agents is reloaded, so rule 3 puts it past every position the other agent reserved.
       The argument, and what a partition does, is in :mod:`agent.daemon.store.postgres`.

    7. Rules 1-6 assume the store is the latest one. A restored or copied store is caught by the rollback
       anchor before anything is read (:mod:`agent.daemon.rollback`): every session is then expired (it still
       decrypts, never sends), so each peer device gets a fresh X3DH; and every sending transition first
       checks, at a bounded rate, that no copy of this store has started since (else SUPERSEDED).

    8. A plaintext needs nothing on disk before it leaves. Under :meth:`SessionManager.run_deferred` a decrypt
       whose result carries no reply is not held for its batch (``written`` instead of ``seq``); the server answers at
       once and starts that batch's commit right after, in the background, so it is on disk one fsync later instead
       of one fsync before. If a kill or a power loss comes in between, the state is the one before the decrypt, and
       everything still holds: the message decrypts again to the same plaintext (its key follows from the chain,
       which is deterministic), exactly what an unconfirmed message promises anyway (a duplicate decrypts until
       ``confirm``); and a message after it from the same chain stores the lost one's key as skipped, so a
       redelivery still reads. What builds on a decrypt does wait for it: its ``confirm`` deletes the kept key in a
       later batch (durability is monotone); an encrypt on a session the decrypt created, stepped or marked
       confirmed reads that session and waits for the session's latest batch (rule 5); a result carrying a reply
       (our bundle, also with ``NoSession``) waits for its batch, and so does a decrypt that needed our signed
       prekey (a new incoming session's X3DH, or its first DH ratchet steps): a later request may destroy that SPK
       in the backend before the batch is on disk, and after a crash the message could not be read again. So no
       message key is used twice for sending (nothing sent depends on an undurable decrypt), no confirm is undone,
       and no plaintext is lost — it may only be handed out again, as before a confirm. Outside :meth:`run_deferred`
       (workers, a shared store) a decrypt still waits for its batch: nobody else would start the commit.

State lives on disk; memory holds a bounded cache
    See :mod:`agent.daemon.session_cache`: nothing is read at start-up, and a cached session is dropped only
    when reloading its row gives back exactly what memory holds.

Why nothing a client was handed is undone
    Ciphertexts: by 1-3 the chain and a mark past the position are durable before return, so after a clean
    restart we continue the same chain beyond it and the peer's state stays compatible (after a crash, rule 7
    moves sending to fresh sessions; the peer still reads everything sent before). Plaintexts: a duplicate
    delivery decrypts again until ``confirm`` deletes the kept key, and a confirm is durable before it
    returns; the decrypt's own state (ratchet step, kept key, device updates) is durable before it returns,
    or, on the server's event loop, one commit after (rule 8: losing it only means the message decrypts
    again).

The unknown-session case
    ``decrypt`` raises :class:`NoSession` (an ``UnknownSession``, wire code NO_SESSION) with ``reason`` and
    ``reply``: the bytes of an empty message carrying our bundle, to be sent back to the sender so that it
    includes this device next time (the spec's "partitioned devices" rule), or None when rate-limited or
    pointless. Verified bundles in the message are applied even then if they are our own identity's (that is how
    an unpaired own device gets listed for approval). Any other failure (bad bytes, bad signature, MAC failure)
    changes nothing.

What a stranger can make us store
    The sender key of a message is whatever key signed its transport envelope, so a remote peer can use a fresh
    one for every message. The reply rate limit is one reply per peer per ``reply_interval_ns`` and at most
    ``reply_peers`` peers within one interval: past the cap new peers get no reply (and nothing is written)
    until old reply times age out, and reply times older than the interval limit nothing and are deleted. A
    message that reads without a session (public, DH fallback) stores its sender's bundle; of the identities
    first learned that way at most ``stranger_identities`` are kept (:meth:`SessionManager._merge_from_stranger`).

Concurrent sessions and interoperability
    Of two live sessions with one installation, the one whose shared key is first in byte order is used for
    sending and the other expires (the spec's rule). Expired sessions still decrypt, and lookup is by
    ``DRHeader.id`` like status-go, so a status-go peer that keeps sending on the other session is still
    understood, and it understands us, because it too decrypts on any session matching the header. A new
    incoming X3DH session that is *not* concurrent (our existing one is confirmed, or we were its responder)
    means the peer started over; it supersedes the old one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from agent.core import bundle as core_bundle
from agent.core import fallback, x3dh
from agent.core.errors import (
    BadBundle,
    DecryptFailed,
    IdentityMismatch,
    MalformedMessage,
    ProtocolError,
    UnknownSession,
)
from agent.core.keyops import KeyOps
from agent.core.keys import public_from_secret, require_compressed
from agent.core.ratchet import STATUS_GO, Header, Profile, Ratchet
from agent.core import secp256k1
from agent.core.wire import (
    NO_INSTALLATION,
    add_entry,
    check_entry_keys,
    decode_bundle,
    decode_protocol_message,
    dh_header,
    encode,
    encrypted_message,
    message_head,
    pb,
    protocol_message,
)
from backends.base import Backend
from backends.errors import KeyNotFound

from .installations import (
    MAX_INSTALLATIONS,
    apply_bundle,
    check_bundle_shape,
    choose_session,
    incoming_supersedes,
    new_installation_id,
    reply_allowed,
    select_enabled,
)
from .own_devices import DeviceInfo, OwnDevices
from .prekeys import SignedPrekeys
from .rollback import RollbackGuard, Superseded
from .session_cache import LiveSession, SessionCache
from .store.api import StateStore
from .store.rows import (DeleteInstallation, DeletePeerReply, DeleteStranger, InstallationRecord, Op, OwnSpkRecord,
                         PutInstallation, PutMeta, PutPeerReply, PutSession, PutStranger, SessionRecord, session_id)
from .throttle import Throttle

__all__ = [
    "SessionManager",
    "EncryptResult",
    "DecryptResult",
    "SessionInfo",
    "NoSession",
    "HOUR_NS",
    "DAY_NS",
]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

#: refused bundles on messages: log lines per window (seconds), the rest counted (as refused connections)
_REFUSED_LOG_BURST = 10
_REFUSED_LOG_WINDOW = 60.0

#: writes a later request need not wait for through ``_other_seq`` (rule 5): session and installation writes are
#: tracked per row (the cache's ``read_seq``), and the stranger list is read by nothing a request hands out
_TRACKED_ELSEWHERE = (PutSession, PutInstallation, DeleteInstallation, PutStranger, DeleteStranger)

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
_REF_TAG = b"\x01"
_REF_LEN = 1 + 16 + 33 + 4


class NoSession(UnknownSession):
    """No session of ours can read this message; ``reply`` (if not None) should be sent back to the sender.

    ``reason``: ``not_for_this_device`` (no entry for our installation), ``not_paired`` (from our own identity
    on an installation that does not encrypt to us), ``own_message`` (our own echo; no reply),
    ``unknown_prekey`` (X3DH to an SPK we do not have or destroyed), ``unknown_session`` (ratchet message for a
    session we do not have, e.g. after a restore).
    """

    def __init__(self, message: str, *, reason: str, reply: bytes | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reply = reply


@dataclass(frozen=True)
class EncryptResult:
    """``message``: ProtocolMessage bytes; ``forward_secrecy`` False when the DH fallback was used (no bundle);
    ``installations``: the installation ids (peer's and our own) that got a ratchet entry."""

    message: bytes
    forward_secrecy: bool
    installations: list[str]


@dataclass(frozen=True)
class DecryptResult:
    """A decrypted (or public) message.

    ``confirm_ref``: hand back to :meth:`SessionManager.confirm` once processed (frees the kept key; empty when
    there is nothing to confirm). ``reply``: bytes to send back to the sender (our bundle) or None.
    ``forward_secrecy`` False for DH-fallback and public messages; ``public`` True for an unencrypted
    ``public_message``; ``prekey`` True when reading it took our signed prekey (a new session's X3DH, or a DH
    ratchet step while our ratchet key was still the SPK).
    """

    payload: bytes
    installation_id: str
    confirm_ref: bytes
    reply: bytes | None
    forward_secrecy: bool = True
    public: bool = False
    prekey: bool = False


@dataclass(frozen=True)
class SessionInfo:
    identity: bytes
    installation_id: str
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int
    bundle_id: bytes


class _PrecomputedDH:
    """Our SPK with one DH result known in advance, so the ratchet's first step does not wait on the token
    under the state lock; any other DH goes to the token as usual."""

    __slots__ = ("_key", "_peer", "_value")

    def __init__(self, key: KeyOps, peer: bytes, value: bytes) -> None:
        self._key, self._peer, self._value = key, peer, value

    def public_key(self) -> bytes:
        return self._key.public_key()

    def sign(self, digest: bytes) -> bytes:
        return self._key.sign(digest)

    def dh(self, peer_public: bytes) -> bytes:
        return self._value if peer_public == self._peer else self._key.dh(peer_public)


class SessionManager:
    """One installation of one identity. Thread-safe; every result is durable before it is returned (under
    :meth:`run_deferred`: before the caller hands it out)."""

    def __init__(
        self,
        backend: Backend,
        store: StateStore,
        *,
        clock: Callable[[], int],
        rng: Callable[[int], bytes],
        profile: Profile = STATUS_GO,
        rotation_ns: int = DAY_NS,
        spk_grace_ns: int = 7 * DAY_NS,
        session_retention_ns: int = 30 * DAY_NS,
        reply_interval_ns: int = HOUR_NS,
        reply_peers: int = 1024,
        stranger_identities: int = 4096,
        bundle_refresh_ns: int = HOUR_NS,
        send_reserve: int = 64,
        cache_peers: int = 1024,
        cache_identities: int = 1024,
        rollback: RollbackGuard | None = None,
    ) -> None:
        if not 0 < send_reserve < profile.max_skip:
            raise ValueError("send_reserve must be below the peer's MaxSkip")
        if cache_peers < 1 or cache_identities < 1:
            raise ValueError("the caches must hold at least one entry")
        if reply_peers < 1 or stranger_identities < 1:
            raise ValueError("reply_peers and stranger_identities must be at least 1")
        self._backend = backend
        self._store = store
        # the embedded store: its turns (enter/leave) are no-ops and a result may leave before its commit
        self._embedded = store.kind == "sqlite"
        self._clock = clock
        self._rng = rng
        self._profile = profile
        self._retention_ns = session_retention_ns
        self._last_sweep = -(1 << 62)
        self._last_upkeep = -(1 << 62)  # _maintain's last look (its clock)
        self._reply_ns = reply_interval_ns
        self._reply_peers = reply_peers
        self._reply_cap_logged = -(1 << 62)  # when a reply was last refused for the cap (its clock), for the log
        self._max_strangers = stranger_identities
        self._refused_log = Throttle(burst=_REFUSED_LOG_BURST, window=_REFUSED_LOG_WINDOW)
        self._reserve = send_reserve
        self._lock = threading.RLock()
        self._ik: KeyOps = backend.identity()
        self.identity: bytes = self._ik.public_key()
        self._new_cache: Callable[[], SessionCache] = lambda: SessionCache(
            store, own_identity=self.identity, keygen=self._keygen, send_reserve=send_reserve,
            cache_peers=cache_peers, cache_identities=cache_identities)
        self._new_prekeys: Callable[[], SignedPrekeys] = lambda: SignedPrekeys(
            backend, store.load_own_spks(), clock=clock, rotation_ns=rotation_ns, grace_ns=spk_grace_ns)
        self._refresh_ns = bundle_refresh_ns
        self._verified: dict[bytes, bytes] = {}  # serialised bundle -> identity (every message repeats it)
        # our bundle as last handed out by a state transition: (the Bundle object, its bytes, the store batch
        # that covers every state it was built on), for durable_bundle()
        self._published: tuple[pb.Bundle, bytes, int] | None = None
        # our messages' head (installation id and bundle, wire.message_head) for the bundle object it was built from
        self._head: tuple[pb.Bundle, bytes] | None = None
        self._other_seq = 0  # the latest batch holding prekey, meta, reply-time or delete writes (rule 5)
        self._deferring = threading.local()  # see run_deferred()
        self.rollback = rollback  # rule 7

        store.enter()
        try:
            if rollback is not None:
                rollback.start()  # before anything is read: a restored store re-keys here (rule 7)
            self._load()
            ops: list[Op] = []
            iid = store.get_meta("installation_id")
            if iid is None:
                self.installation_id = new_installation_id(rng)
                ops.append(PutMeta("installation_id", self.installation_id.encode()))
            else:
                self.installation_id = iid.decode()
            self._own = OwnDevices(self._cache, self._prekeys, self._ik, identity=self.identity,
                                   installation_id=self.installation_id, clock=clock, refresh_ns=bundle_refresh_ns)
            with self._lock:
                self._maintain(ops)
                self._cache.flush(ops)
                if ops:
                    self._cache.submit(ops)
            store.sync()
        finally:
            store.leave()

    def _load(self) -> None:
        """(Re)build everything cached from the store: at start, and whenever the store says another agent
        wrote since our last turn (a shared store, :mod:`agent.daemon.store.postgres`). The caller holds the
        store's turn; nothing of ours is pending then (a turn ends only when its writes are durable or
        abandoned), so nothing is lost by dropping the old copies, and rule 3 applies to every reloaded session."""
        self._epoch = self._store.cache_epoch
        self._cache = self._new_cache()
        # peer -> when we last sent it our bundle, oldest first (so _forget_replies looks at the front only)
        self._replies: dict[bytes, int] = dict(sorted(self._store.load_peer_replies().items(),
                                                      key=lambda item: item[1]))
        # identities first learned from a message that reads without a session (a public or DH-fallback message),
        # oldest first: the ones we may forget again (_merge_from_stranger)
        self._strangers: dict[bytes, int] = dict(sorted(self._store.load_strangers().items(),
                                                        key=lambda item: (item[1], item[0])))
        self._prekeys = self._new_prekeys()
        if hasattr(self, "_own"):
            self._own = OwnDevices(self._cache, self._prekeys, self._ik, identity=self.identity,
                                   installation_id=self.installation_id, clock=self._clock,
                                   refresh_ns=self._refresh_ns)

    # ------------------------------------------------------------------ small helpers

    def _keygen(self) -> tuple[bytes, bytes]:
        secret = self._secret()
        return secret, public_from_secret(secret)

    def _secret(self) -> bytes:
        while True:
            s = self._rng(32)
            if secp256k1.valid_secret(s):
                return s

    # ------------------------------------------------------------------ one state transition

    def _run(self, work: Callable[[list[Op]], _T], *, sending: bool = False, upkeep: bool = False,
             owes: Callable[[_T], bool] | None = None) -> _T:
        """Run one state transition under the lock, submit its writes, wait for durability outside the lock.
        ``sending``: the transition may send on a ratchet, so the rollback anchor is checked first (rule 7);
        ``upkeep``: the idle tick, which checks it too but does not raise; ``owes(result)`` False: the result
        needs nothing on disk before it leaves, so under :meth:`run_deferred` it is not held for its batch (rule 8).

        If ``work`` fails half-way, what it already changed in memory is consistent (each step completes) and
        is written all the same, so memory and disk never diverge; the error is then re-raised.
        """
        ops: list[Op] = []
        error: BaseException | None = None
        result: _T | None = None
        store, embedded = self._store, self._embedded
        if not embedded:
            store.enter()  # rule 6: a shared store's turn (the embedded one has none)
        try:
            # rule 7, before the state lock: reading the anchor is a token round trip (milliseconds on a card)
            reload = self.rollback is not None and (sending or upkeep) and self._check_anchor(sending)
            with self._lock:
                try:
                    if reload or store.cache_epoch != self._epoch:  # re-keyed in place, or moved on without us
                        self._load()  # (rule 6): drop what was cached from before
                    self._cache.read_seq = 0  # (after a reload, which replaces the cache)
                    if not 0 <= self._clock() - self._last_upkeep < 10**9:  # at most once a second
                        self._maintain(ops)
                    result = work(ops)
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the partial state is durable
                    error = e
                if error is None:  # a failed request writes nothing it need not (cache upkeep waits for the next)
                    self._cache.evict(ops)
                self._cache.flush(ops)
                if ops:  # rule 5: our own batch; durability is monotone, so it covers every earlier one too
                    seq = self._cache.submit(ops)
                    for op in ops:
                        if not isinstance(op, _TRACKED_ELSEWHERE):
                            self._other_seq = seq
                            break
                elif error is None:  # rule 5: wrote nothing; only what it was built on must be durable
                    seq = max(self._other_seq, self._cache.read_seq)
                else:
                    seq = store.last_submitted()
                # our signed bundle, if new, is remembered with the batch that covers every state it was built on
                # (the newest signed one is enough here: durable_bundle checks it is current)
                signed = self._own.last_signed()
                if signed is not None and (self._published is None or self._published[0] is not signed):
                    self._published = (signed, encode(signed), store.last_submitted())
            if embedded and getattr(self._deferring, "on", False):
                if error is None and owes is not None and not owes(result):  # type: ignore[arg-type]
                    self._deferring.written = max(self._deferring.written, seq)  # rule 8: committed right after
                else:
                    self._deferring.seq = max(self._deferring.seq, seq)  # the caller waits before it answers
            else:
                store.wait(seq)
        finally:
            if not embedded:
                store.leave()  # only now may another agent load what we wrote
        if error is not None:
            raise error
        return result  # type: ignore[return-value]  # work() returned: result holds its value

    def run_deferred(self, fn: Callable[..., _T], *args: object) -> tuple[_T, int, int]:
        """``fn(*args)`` (calls of this manager) in this thread without waiting for durability; returns its result,
        the batch it needs on disk before it leaves (``seq``, rule 5; 0 = none) and a batch nobody waits for
        (``written``, rule 8; 0 = none).

        Each call inside returns as soon as its state transition is done and its batch submitted, and nothing
        derived from the result may leave before ``wait_durable(seq)`` returned. This lets an event loop do the CPU
        work itself and leave only the fsync to another thread (several answers then share one commit). A call
        that raises has its partial state submitted all the same (``fn`` may catch it; ``seq`` covers it).
        ``written``: the caller must start its commit right after answering (``wait_durable`` in another
        thread), not leave it for the next waiter. Only where :meth:`can_defer`; one call, not a context, because
        the event loop runs it for every request.
        """
        local = self._deferring
        if getattr(local, "on", False):
            raise RuntimeError("run_deferred() does not nest")
        local.on, local.seq, local.written = True, 0, 0
        try:
            result = fn(*args)
        finally:
            local.on = False
        return result, local.seq, local.written

    def can_defer(self) -> bool:
        """Only the embedded store: a shared one's turn lasts until the writes are durable (rule 6)."""
        return self._embedded

    def wait_durable(self, seq: int) -> None:
        """Block until batch ``seq`` (and every earlier one) is durable (committing it if nobody is)."""
        if seq:
            self._store.wait(seq)

    def is_durable(self, seq: int) -> bool:
        return seq <= self._store.durable()

    # ------------------------------------------------------------------ upkeep: our prekeys, old sessions

    def _maintain(self, ops: list[Op]) -> None:
        """Rotate the SPK when due (24 h from creation), destroy expired ones after the grace period, and drop
        expired sessions unused for the retention period (swept at most once a minute). :meth:`_run` calls it
        once per second of the manager's clock at most: the deadlines are hours and days, and every request
        passes there."""
        now = self._clock()
        self._last_upkeep = now
        if self._prekeys.rotation_due(now):
            self._rotate(ops)
        self._prekeys.destroy_expired(now, ops)
        self._forget_replies(now, ops)
        if now - self._last_sweep < 60 * 10**9:
            return
        self._last_sweep = now
        self._cache.sweep(now, self._retention_ns, ops)

    def _rotate(self, ops: list[Op]) -> OwnSpkRecord:
        rec, retired = self._prekeys.rotate(ops)
        for public in retired:
            # our responder sessions on it stop being used to send (the stored ones are loaded first)
            for live in self._cache.responder_sessions_on(public):
                live.rec.expired = True
                self._cache.mark_dirty(live.rec.sid)
        self._own.invalidate()
        return rec

    # ------------------------------------------------------------------ bundles and devices

    def _merge_bundle(self, identity: bytes, b: pb.Bundle, ops: list[Op], key: bytes | None = None) -> None:
        """Apply a verified bundle: device list, SPK versions; re-key sessions on a higher version.
        Raises BadBundle (nothing changed) when the acceptance rules refuse it. ``key``: its serialised bytes,
        when known: a bundle that changed nothing is not applied again while no installation changed (a sender
        attaches the same bundle to every message; its timestamp only passes the checks better as time goes on)."""
        self._cache.devices(identity)  # apply_bundle looks up this identity's installations only
        if key is not None and self._cache.unchanged_bundle.get(identity) == key:
            return
        up = apply_bundle(self._cache.installations, identity, b, our_identity=self.identity,
                          our_installation_id=self.installation_id, now_ns=self._clock())
        if key is not None and not up.records and not up.rekeyed:
            self._cache.remember(self._cache.unchanged_bundle, identity, key)
        for rec in up.records:
            self._cache.put_installation(rec)  # our bundle's cache key notices changes
            ops.append(PutInstallation(replace(rec)))
        for iid in up.rekeyed:
            new_spk = self._cache.installations[(identity, iid)].spk
            for live in self._cache.peer_sessions(identity, iid):
                if live.rec.initiator and live.rec.bundle_id != new_spk and not live.rec.expired:
                    live.rec.expired = True  # the next send runs a new X3DH to the new prekey
                    self._cache.mark_dirty(live.rec.sid)

    def _merge_received(self, identity: bytes, bundles: list[tuple[pb.Bundle, bytes]], ops: list[Op]) -> None:
        """Bundles that rode on a message (with their bytes): a refused one is dropped (the message still counts),
        never an error."""
        for b, key in bundles:
            try:
                self._merge_bundle(identity, b, ops, key)
            except BadBundle as exc:
                self._log_refused(f"a bundle on a message from {identity.hex()[:16]} was refused: {exc}")

    def _log_refused(self, line: str) -> None:
        """Log a refused bundle from a message, at most ``_REFUSED_LOG_BURST`` lines per ``_REFUSED_LOG_WINDOW``
        seconds (a remote peer decides how many such messages arrive); the lines held back are counted in the next
        one, like refused connections (agent/daemon/throttle.py)."""
        allowed, held = self._refused_log.allow("bundle")
        if allowed:
            log.info("%s%s", line, f" ({held} more refused bundles not logged)" if held else "")

    def _merge_from_stranger(self, identity: bytes, bundles: list[tuple[pb.Bundle, bytes]], ops: list[Op]) -> None:
        """Bundles on a message that reads without a session (public, DH fallback): anyone can send those from a
        fresh key each, so an identity first learned this way is remembered as a stranger, and past
        ``stranger_identities`` of them the one learned longest ago is forgotten again, unless we have a session
        with it by then. An identity known before (added by a client, or with a session) is never forgotten. The
        list is stored (``strangers``), so the cap holds across restarts and for every agent of a shared store."""
        known = identity == self.identity or bool(self._cache.devices(identity))
        self._merge_received(identity, bundles, ops)
        if known or identity in self._strangers or not self._cache.devices(identity):
            return  # known before, already remembered, or nothing stored (no bundle, or a refused one)
        now = self._clock()
        self._strangers[identity] = now
        ops.append(PutStranger(identity, now))
        while len(self._strangers) > self._max_strangers:
            oldest = next(iter(self._strangers))
            del self._strangers[oldest]
            ops.append(DeleteStranger(oldest))
            if not self._cache.has_sessions_with(oldest):  # a contact by now (a session either way) stays
                self._cache.forget_identity(oldest, ops)

    def _verify_bundle_bytes(self, data: bytes) -> tuple[bytes, pb.Bundle]:
        b = decode_bundle(data)
        return self._verify_keyed(b)[0], b

    def _verify_keyed(self, b: pb.Bundle) -> tuple[bytes, bytes]:
        """verify_bundle, remembered by the exact bytes: a sender attaches the same signed bundle to every
        message until it changes, and recovering the signer is the costliest step of a decrypt. Returns the
        signer and those bytes."""
        key = b.SerializeToString(deterministic=True)
        hit = self._verified.get(key)  # one dict read (atomic under the GIL); writers take the lock
        if hit is not None:
            return hit, key
        check_bundle_shape(b)  # a 1,000-entry bundle is refused before its signature material is hashed
        identity = core_bundle.verify_bundle(b)  # raises on a bad bundle: nothing is cached then
        with self._lock:
            if len(self._verified) >= 512:
                self._verified.clear()
            self._verified[key] = identity
        return identity, key

    def add_peer_bundle(self, bundle_bytes: bytes) -> bytes:
        """Verify and store a bundle (contact code, QR, file); return its identity. Our own → a new device."""
        identity, b = self._verify_bundle_bytes(bundle_bytes)
        self._run(lambda ops: self._merge_bundle(identity, b, ops))
        return identity

    def our_bundle(self) -> bytes:
        """Our current signed Bundle protobuf (self + up to 2 enabled own devices)."""
        return self._run(lambda ops: encode(self._own.bundle()))  # _run stamps it for durable_bundle

    def durable_bundle(self) -> bytes | None:
        """Our bundle from memory, or None (the caller then asks :meth:`our_bundle`): never waits, never signs.

        Only a bundle everything it names is durable for (the batch it was stamped with is), that needs no new
        signature and no prekey rotation now; the lock is only tried (a request holding it means "ask later").
        """
        if not self.can_defer() or not self._lock.acquire(blocking=False):
            return None  # a shared store: another agent may have moved our prekeys on (rule 6)
        try:
            if self._prekeys.rotation_due(self._clock()):
                return None
            b = self._own.cached_bundle()
            published = self._published
            if b is None or published is None or published[0] is not b:
                return None
        finally:
            self._lock.release()
        return published[1] if self._store.durable() >= published[2] else None

    def rotate_signed_prekey(self, min_interval_ns: int = 0) -> int:
        """Rotate now (version + 1, new backend key); returns the new version. Also happens every 24 h.

        Refused with :class:`~agent.daemon.prekeys.RotationTooSoon` when the current SPK is younger than
        ``min_interval_ns`` (a rotation flood would only churn the token; the owner's force passes 0).
        """

        def work(ops: list[Op]) -> int:
            self._prekeys.check_interval(self._clock(), min_interval_ns)
            return self._rotate(ops).version

        return self._run(work)

    def last_bundle(self) -> bytes | None:
        """The last bundle we signed, without signing or upkeep (what a locked agent answers); None if none yet."""
        with self._lock:
            last = self._own.last_signed()
        return encode(last) if last is not None else None

    def maintain(self) -> None:
        """Time-based upkeep (rotation, destroying expired SPKs; every request does it too) and the rollback
        anchor's check, so that ``status`` says an agent was superseded before its next send does."""
        self._run(lambda ops: None, upkeep=True)

    def _check_anchor(self, sending: bool) -> bool:
        """The anchor's check (True: the shared store re-keyed, reload); Superseded only for a send."""
        assert self.rollback is not None
        try:
            return self.rollback.check()
        except Superseded:
            if sending:
                raise
            return False

    def devices(self) -> list[DeviceInfo]:
        """Our installations: self first, then other devices newest first (enabled or awaiting approval)."""
        return self._run(lambda ops: self._own.infos())

    def _set_device(self, installation_id: str, enabled: bool) -> None:
        self._run(lambda ops: self._own.set_enabled(installation_id, enabled, ops))

    def approve_device(self, installation_id: str) -> None:
        """Pair one of our own devices: it receives our messages and appears in our bundle (newest 2 used)."""
        self._set_device(installation_id, True)

    def disable_device(self, installation_id: str) -> None:
        """Unpair one of our own devices: no more messages to it, no longer in our bundle."""
        self._set_device(installation_id, False)

    def list_sessions(self) -> list[SessionInfo]:
        """Every session, oldest first: the stored rows, with the cached copies (authoritative) on top."""
        return self._run(lambda ops: [
            SessionInfo(r.identity, r.installation_id, r.initiator, r.confirmed, r.expired, r.created_ns,
                        r.last_used_ns, r.bundle_id)
            for r in self._cache.rows()
        ])

    # ------------------------------------------------------------------ sending

    def _sending_session(
        self, inst: InstallationRecord, planned: dict[tuple[bytes, str, bytes], bytes]
    ) -> LiveSession | None:
        """The live session for this installation (tie-break by shared key), or a new X3DH one."""
        lives = self._cache.peer_sessions(inst.identity, inst.installation_id)
        chosen, losers = choose_session([live.rec for live in lives])
        for rec in losers:
            rec.expired = True
            self._cache.mark_dirty(rec.sid)
        if chosen is not None:
            return next(live for live in lives if live.rec is chosen)
        if inst.spk is None:
            return None
        pre = planned.pop((inst.identity, inst.installation_id, inst.spk), None)
        if pre is not None:
            eph, sk = pre[:32], pre[32:]
        else:
            eph = self._secret()
            sk = x3dh.initiate(self._ik, inst.identity, inst.spk, eph)
        ratchet = Ratchet.initiator(self._profile, sk, inst.spk, keygen=self._keygen)
        ek = public_from_secret(eph)
        now = self._clock()
        rec = SessionRecord(
            sid=session_id(inst.identity, inst.installation_id, inst.spk, ek),
            identity=inst.identity,
            installation_id=inst.installation_id,
            bundle_id=inst.spk,
            ephemeral=ek,
            initiator=True,
            confirmed=False,
            expired=False,
            created_ns=now,
            last_used_ns=now,
            send_hwm=0,
            sk=sk,
            state=b"",
        )
        live = LiveSession(rec, ratchet)
        self._cache.add(live)
        self._cache.mark_dirty(rec.sid)  # rule 1: a new chain is durable before anything encrypted on it leaves
        return live

    def _encrypt_on(self, live: LiveSession, payload: bytes, msg: pb.ProtocolMessage, installation_id: str) -> None:
        """Encrypt ``payload`` on ``live`` into ``msg``'s entry for ``installation_id``."""
        rec = live.rec
        _, pos = live.ratchet.sending_position()
        if pos >= rec.send_hwm:
            self._cache.mark_dirty(rec.sid)  # rule 2: reserve the next positions before handing this one out
        header, ct = live.ratchet.encrypt(payload)
        live.exact = False  # the row is behind memory now (a write happens only at the reservation mark)
        rec.last_used_ns = self._clock()
        add_entry(msg, installation_id, ct,
                  x3dh=(rec.ephemeral, rec.bundle_id) if rec.initiator and not rec.confirmed else None,
                  dr=(header.dh, header.n, header.pn, rec.bundle_id))

    def _devices_of(
        self, identity: bytes, overlay: Mapping[str, InstallationRecord] | None
    ) -> Iterable[InstallationRecord]:
        """The stored installations of ``identity``, with ``overlay`` (not yet applied updates) on top."""
        stored = self._cache.devices(identity)
        if not overlay:
            return stored.values()
        return {**stored, **overlay}.values()

    def _targets(
        self, peer: bytes, overlay: Mapping[bytes, Mapping[str, InstallationRecord]] | None = None
    ) -> list[InstallationRecord]:
        """Up to 3 of the peer's enabled installations, then up to 2 of our other enabled ones (newest first).

        ``overlay``: installation updates (by identity, then id) to see as if applied; None for the stored ones.
        """
        if not overlay:  # the stored ones: remembered while no installation changes (every encrypt asks twice)
            memo = self._cache.targets.get(peer)
            if memo is not None:
                self._cache.devices(peer)  # rule 5: the installations read still count for the wait (read_seq)
                self._cache.devices(self.identity)
                return list(memo)
            found = self._select_targets(peer, {})
            self._cache.remember(self._cache.targets, peer, tuple(found))
            return found
        return self._select_targets(peer, overlay)

    def _select_targets(
        self, peer: bytes, over: Mapping[bytes, Mapping[str, InstallationRecord]]
    ) -> list[InstallationRecord]:
        to_self = peer == self.identity
        targets = select_enabled(self._devices_of(peer, over.get(peer)), peer,
                                 exclude=self.installation_id if to_self else None,
                                 limit=MAX_INSTALLATIONS - 1 if to_self else MAX_INSTALLATIONS)
        if not to_self:
            targets += select_enabled(self._devices_of(self.identity, over.get(self.identity)), self.identity,
                                      exclude=self.installation_id, limit=MAX_INSTALLATIONS - 1)
        return targets

    def _plan_initiations(self, peer: bytes, verified: pb.Bundle | None) -> dict[tuple[bytes, str, bytes], bytes]:
        """Run the initiator X3DH (one DH with IK: a token round trip) for targets that will need a new
        session, before taking the state lock; maps (identity, installation, SPK) -> ephemeral secret ‖ SK.
        A wrong guess (state changed meanwhile) only wastes that DH: the locked phase recomputes."""
        with self._lock:
            overlay: dict[bytes, dict[str, InstallationRecord]] = {}
            if verified is not None:  # the updates the locked phase will apply, seen without applying them
                self._cache.devices(peer)
                up = apply_bundle(self._cache.installations, peer, verified, our_identity=self.identity,
                                  our_installation_id=self.installation_id, now_ns=self._clock())
                for rec in up.records:
                    overlay.setdefault(rec.identity, {})[rec.installation_id] = rec
            need = []
            for inst in self._targets(peer, overlay):
                lives = [live.rec for live in self._cache.peer_sessions(inst.identity, inst.installation_id)
                         if not live.rec.expired]
                if inst.spk is not None and not any(not r.initiator or r.bundle_id == inst.spk for r in lives):
                    need.append((inst.identity, inst.installation_id, inst.spk))
        out: dict[tuple[bytes, str, bytes], bytes] = {}
        for identity, iid, spk in need:
            eph = self._secret()
            out[(identity, iid, spk)] = eph + x3dh.initiate(self._ik, identity, spk, eph)
        return out

    def encrypt(self, peer_identity: bytes, payload: bytes, peer_bundle: bytes | None = None) -> EncryptResult:
        """Encrypt ``payload`` for every enabled installation of the peer (≤3) and of ourselves (≤2 others).

        ``peer_bundle`` (optional, verified, must be the peer's) is merged first. Without any usable
        installation the DH fallback is used (``forward_secrecy`` False). Our bundle rides on the message.
        """
        peer = require_compressed(peer_identity, "peer identity")
        if not isinstance(payload, (bytes, bytearray)):
            raise MalformedMessage("payload must be bytes")
        verified: pb.Bundle | None = None
        if peer_bundle is not None:
            ident, verified = self._verify_bundle_bytes(peer_bundle)
            if ident != peer:
                raise IdentityMismatch("the bundle is not the peer's")

        planned = self._plan_initiations(peer, verified)

        def work(ops: list[Op]) -> EncryptResult:
            ours = self._own.bundle()  # token signature first: a locked token fails before any change
            if verified is not None:
                self._merge_bundle(peer, verified, ops)
            msg = pb.ProtocolMessage()  # the entries only: our installation id and bundle are the cached head
            ids: list[str] = []
            peer_ids: list[str] = []
            for inst in self._targets(peer):
                live = self._sending_session(inst, planned)
                if live is None:
                    continue  # an installation without a prekey is skipped
                self._encrypt_on(live, bytes(payload), msg, inst.installation_id)
                ids.append(inst.installation_id)
                if inst.identity == peer:
                    peer_ids.append(inst.installation_id)
            fs = True
            if not peer_ids:
                eph_pub, ct = fallback.encrypt(peer, bytes(payload), self._secret(), self._rng(12))
                msg.encrypted_message[NO_INSTALLATION].CopyFrom(encrypted_message(ct, dh=dh_header(eph_pub)))
                fs = False
            head = self._head
            if head is None or head[0] is not ours:  # re-signed or first: serialise the new head once
                head = self._head = (ours, message_head(self.installation_id, [ours]))
            return EncryptResult(head[1] + encode(msg), fs, ids)

        return self._run(work, sending=True)

    def public_message(self, payload: bytes) -> bytes:
        """A ProtocolMessage carrying ``payload`` unencrypted in ``public_message`` (and our bundle)."""
        if not isinstance(payload, (bytes, bytearray)):
            raise MalformedMessage("payload must be bytes")
        return self._run(lambda ops: encode(
            protocol_message(self.installation_id, bundles=[self._own.bundle()], public_message=bytes(payload))))

    # ------------------------------------------------------------------ receiving

    def _reply(self, peer: bytes, ops: list[Op]) -> bytes | None:
        """An empty DH message carrying our bundle, at most once per peer per ``reply_interval_ns``."""
        now = self._clock()
        if not reply_allowed(self._replies.get(peer), now, self._reply_ns):
            return None
        self._forget_replies(now, ops)
        if peer not in self._replies and len(self._replies) >= self._reply_peers:
            if now - self._reply_cap_logged >= self._reply_ns:  # one line per interval, however long the flood
                self._reply_cap_logged = now
                log.warning("bundle replies to new peers paused: %d peers were answered within the last %d s "
                            "(the cap); messages still decrypt", len(self._replies), self._reply_ns // 10**9)
            return None
        eph_pub, ct = fallback.encrypt(peer, b"", self._secret(), self._rng(12))
        msg = protocol_message(self.installation_id, {NO_INSTALLATION: encrypted_message(ct, dh=dh_header(eph_pub))},
                               bundles=[self._own.bundle()])
        self._replies.pop(peer, None)  # to the end: the dict stays oldest first
        self._replies[peer] = now
        ops.append(PutPeerReply(peer, now))
        return encode(msg)

    def _forget_replies(self, now: int, ops: list[Op]) -> None:
        """Delete reply times older than the interval, oldest first: they limit nothing any more
        (:func:`reply_allowed` lets that peer have a reply again), and keeping them would let a flood of fresh
        sender keys grow the store and memory without bound."""
        replies = self._replies
        while replies:
            peer, at = next(iter(replies.items()))
            if now - at < self._reply_ns:  # (a time ahead of the clock counts as fresh: it still limits)
                return
            del replies[peer]
            ops.append(DeletePeerReply(peer))

    def decrypt(self, sender_identity: bytes, message: bytes) -> DecryptResult:
        """Decrypt a ProtocolMessage from ``sender_identity`` (the transport signature key).

        Order: the entry for our installation (else ``"none"``); X3DH header (passive X3DH with the SPK it
        names, also an expired one within the grace period), then the ratchet, then the DH fallback.
        Bundles in the message must verify and be the sender's, else nothing changes (IdentityMismatch).
        Raises :class:`NoSession` (with a bundle ``reply``) when no session of ours can read it.
        """
        sender = require_compressed(sender_identity, "sender identity")
        msg = decode_protocol_message(message)
        bundles: list[tuple[pb.Bundle, bytes]] = []
        for b in msg.bundles:
            try:
                signer, key = self._verify_keyed(b)
            except BadBundle as exc:  # validly formed message, bundle refused: read it, keep the bundle out
                self._log_refused(f"a bundle on a message was refused: {exc}")
                continue
            if signer != sender:  # name the key that did sign it: usually a wrong --from
                from agent.core.identity import zq3_encode

                raise IdentityMismatch(f"the message was sent by {zq3_encode(signer)} (its bundle is signed by that "
                                       f"key), not by the given sender {zq3_encode(sender)}")
            bundles.append((b, key))
        sender_iid = msg.installation_id
        if sender == self.identity and sender_iid == self.installation_id:
            raise NoSession("our own message", reason="own_message", reply=None)
        if self.installation_id in msg.encrypted_message:
            entry: pb.EncryptedMessageProtocol | None = msg.encrypted_message[self.installation_id]
        elif NO_INSTALLATION in msg.encrypted_message:
            entry = msg.encrypted_message[NO_INSTALLATION]
        else:
            entry = None
        if entry is not None:
            check_entry_keys(entry)  # junk header keys are refused before any session is touched
        # Token work that depends only on the message is done before taking the state lock, so a slow token
        # (a smart card DH takes tens of ms) does not stall every other request: the passive X3DH of a new
        # incoming session (3 DHs with IK and SPK) and the DH-fallback decryption (1 DH with IK).
        x3dh_pre: tuple[bytes, KeyOps] | None = None
        dh_plain: bytes | None = None
        if entry is not None and entry.HasField("DR_header") and entry.HasField("X3DH_header"):
            x3dh_pre = self._precompute_x3dh(sender, sender_iid, entry.X3DH_header, bytes(entry.DR_header.key))
        elif entry is not None and entry.HasField("DH_header"):
            dh_plain = fallback.decrypt(self._ik, bytes(entry.DH_header.key), bytes(entry.payload))

        def work(ops: list[Op]) -> DecryptResult | NoSession:
            def no_session(text: str, reason: str) -> NoSession:
                # A message we cannot read is anyone's to craft: its bundles are not stored, except our own
                # identity's (only our own devices hold the key that signed them; that is how an unpaired
                # device of ours gets listed for approval).
                if sender == self.identity:
                    self._merge_received(sender, bundles, ops)
                return NoSession(text, reason=reason, reply=self._reply(sender, ops))

            if entry is None:
                if msg.public_message:
                    self._merge_from_stranger(sender, bundles, ops)
                    return DecryptResult(bytes(msg.public_message), sender_iid, b"", None, False, True)
                if sender == self.identity:
                    return no_session("a device of ours that is not paired with this one", "not_paired")
                return no_session("the message has no entry for this installation", "not_for_this_device")
            if entry.HasField("DR_header"):
                got = self._decrypt_dr(sender, sender_iid, entry, x3dh_pre)
                if isinstance(got, str):
                    return no_session(f"no session for this message ({got})", got)
                self._merge_received(sender, bundles, ops)
                return got
            if dh_plain is not None:
                pt = dh_plain
                self._merge_from_stranger(sender, bundles, ops)
                # the sender had no bundle of ours: answer with it (an empty payload is itself such an answer)
                reply = self._reply(sender, ops) if pt else None
                return DecryptResult(pt, sender_iid, b"", reply, False, False)
            if entry.HasField("HR_header"):
                raise MalformedMessage("hash-ratchet (group) messages are not handled by 1:1 sessions")
            raise MalformedMessage("no key specified")

        # rule 8: a plaintext alone needs nothing on disk; a result carrying a reply (our bundle) or a NoSession
        # (raised with one) waits for its batch like any other, and so does one our SPK was needed for (the SPK may
        # be destroyed soon after: once the decrypt is on disk, that no longer matters)
        result = self._run(work, owes=lambda r: not isinstance(r, DecryptResult) or r.reply is not None or r.prekey)
        if isinstance(result, NoSession):
            raise result
        return result

    def _precompute_x3dh(
        self, sender: bytes, sender_iid: str, header: pb.X3DHHeader, ratchet_key: bytes
    ) -> tuple[bytes, KeyOps] | None:
        """For an X3DH header that would start a new session: the responder's SK, and our SPK with its DH to
        the sender's first ratchet key already done (the new session's first DH ratchet step needs exactly
        that). None when the session exists or our SPK is gone."""
        ek, spk_pub = bytes(header.key), bytes(header.id)
        sid = session_id(sender, sender_iid, spk_pub, ek)
        if sid in self._cache.sessions:  # the usual case: a sender repeats its X3DH header until we reply. A
            return None  # dict read needs no lock; a wrong guess only costs _decrypt_dr the X3DH under the lock
        with self._lock:
            if self._cache.session(sender, sender_iid, sid) is not None:
                return None
            rec = self._prekeys.by_public(spk_pub)
            if rec is None or rec.destroyed:
                return None
            version = rec.version
        try:
            spk = self._backend.signed_prekey(version)
        except KeyNotFound:
            return None
        sk = x3dh.respond(self._ik, spk, sender, ek)
        return sk, _PrecomputedDH(spk, ratchet_key, spk.dh(ratchet_key))

    def _decrypt_dr(
        self, sender: bytes, sender_iid: str, entry: pb.EncryptedMessageProtocol,
        x3dh_pre: tuple[bytes, KeyOps] | None,
    ) -> DecryptResult | str:
        dr = entry.DR_header
        bundle_id = bytes(dr.id)
        header = Header(bytes(dr.key), int(dr.n), int(dr.pn))
        fresh: LiveSession | None = None
        fresh_spk: KeyOps | None = None
        if entry.HasField("X3DH_header"):
            ek = require_compressed(bytes(entry.X3DH_header.key), "X3DH ephemeral key")
            spk_pub = bytes(entry.X3DH_header.id)
            sid = session_id(sender, sender_iid, spk_pub, ek)
            known = self._cache.session(sender, sender_iid, sid)
            if known is not None:
                candidates = [known]
            else:
                if x3dh_pre is not None:
                    sk, fresh_spk = x3dh_pre
                else:  # not precomputed (the session existed then) or our SPK is gone
                    spk = self._prekeys.key(spk_pub)
                    if spk is None:
                        return "unknown_prekey"
                    sk, fresh_spk = x3dh.respond(self._ik, spk, sender, ek), spk
                now = self._clock()
                rec = SessionRecord(sid, sender, sender_iid, spk_pub, ek, False, False, False, now, now, 0, sk, b"")
                fresh = LiveSession(rec, Ratchet.responder(self._profile, sk, spk_pub, None, keygen=self._keygen))
                candidates = [fresh]
        else:
            candidates = [live for live in self._cache.peer_sessions(sender, sender_iid) if live.rec.bundle_id == bundle_id]
            candidates.sort(key=lambda live: (live.rec.expired, -live.rec.last_used_ns))
            if not candidates:
                return "unknown_session"
        error: ProtocolError | None = None
        for live in candidates:
            # the token SPK is only needed while the responder's ratchet key is still its SPK
            needs_spk = not live.rec.initiator and live.ratchet.sending_position()[0] == live.rec.bundle_id
            spk_key = None
            if needs_spk:
                spk_key = fresh_spk if live is fresh else self._prekeys.key(live.rec.bundle_id)
            try:
                pt = live.ratchet.decrypt(header, bytes(entry.payload), spk=spk_key)
            except ProtocolError as e:  # DecryptFailed, MessageKeyGone, TooManySkipped, InvalidState...
                error = e
                continue
            rec = live.rec
            if live is fresh:
                for other in self._cache.peer_sessions(sender, sender_iid):
                    if not other.rec.expired and incoming_supersedes(other.rec):
                        other.rec.expired = True
                        self._cache.mark_dirty(other.rec.sid)
                self._cache.add(live)
            rec.confirmed = True  # a reply on our session: stop resending the X3DH header
            rec.last_used_ns = self._clock()
            self._cache.mark_dirty(rec.sid)
            ref = _REF_TAG + rec.sid + header.dh + header.n.to_bytes(4, "big")
            return DecryptResult(pt, sender_iid, ref, None, prekey=live is fresh or spk_key is not None)
        assert error is not None
        if isinstance(error, DecryptFailed):
            raise error
        raise DecryptFailed(f"can't decrypt: {error}") from error

    def confirm(self, refs: Iterable[bytes]) -> None:
        """The application processed these messages: delete their kept keys (duplicates no longer decrypt)."""
        parsed: list[tuple[bytes, bytes, int]] = []
        for ref in refs:
            if not isinstance(ref, (bytes, bytearray)) or len(ref) != _REF_LEN or ref[:1] != _REF_TAG:
                raise MalformedMessage("not a confirmation reference")
            parsed.append((bytes(ref[1:17]), bytes(ref[17:50]), int.from_bytes(ref[50:54], "big")))

        def work(ops: list[Op]) -> None:
            for sid, dh, n in parsed:
                live = self._cache.lookup(sid)
                if live is not None and live.ratchet.has_message_key(dh, n):
                    live.ratchet.delete_message_key(dh, n)
                    self._cache.mark_dirty(sid)

        self._run(work)

    def close(self) -> None:
        """Write exact sending positions of the cached sessions (the others' rows already hold theirs, see
        "State lives on disk"), so a clean restart leaves no gap; then close the store."""
        try:
            self._store.enter()
            try:
                with self._lock:
                    # a stale cache (another agent wrote since) has nothing of ours left to write
                    ops = self._cache.closing_writes() if self._store.cache_epoch == self._epoch else []
                    if ops:
                        self._store.write(ops)
                    if self.rollback is not None:
                        self.rollback.stop()  # after the last write: the anchor says "stopped cleanly"
            finally:
                self._store.leave()
        finally:
            self._store.close()  # also after a failed store: the connection is released either way


