"""The session manager's write-back cache over the sealed store rows: sessions and installations, LRU-bounded.

State lives on disk; memory holds a bounded cache
    Sessions are loaded on demand, all sessions of one installation at a time, and kept in an LRU of at most
    ``cache_peers`` installations (installations likewise, by identity, ``cache_identities``); nothing is read
    at start-up. The sealed SQLite rows are the source of truth, so a cached session may only be dropped when
    reloading its row gives back exactly what memory holds: nothing of it is waiting to be written (dirty),
    its latest write is durable (the store reads committed rows only), and its row holds its exact sending
    position (rule 3 would otherwise skip the reserved positions on reload). A session that does not yet meet
    the last condition gets an exact-position write first (safe: every position handed out is below it) and is
    dropped by a later request, once that write is durable. Until then the cache may exceed its bound.

Rule 3 of "why a message key is never used twice" (the argument is in :mod:`agent.daemon.sessions`) lives here
    3. On load, a session whose stored position is below its mark is advanced to the mark
       (``advance_sending_chain``) before its first use. Positions handed out before a crash are all below
       the mark, so none is reused; the peer absorbs the gap with its skipped-key handling (MaxSkip 1000 >
       ``send_reserve``). A clean ``close()`` writes exact positions, so only crashes leave gaps.

    The mark of rule 2 is also written here: every request's write of a session (``flush``) stores
    ``send_hwm`` = current position + ``send_reserve``; only the eviction and close writes store the exact
    position.

Not thread-safe: the session manager calls it under its state lock only.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from agent.core.ratchet import Ratchet

from .store.api import StateStore
from .store.rows import (DeleteInstallation, DeleteSession, InstallationRecord, Op, PutSession, SessionRecord,
                         SessionSummary)

__all__ = ["LiveSession", "SessionCache"]

#: Entries a memo of :class:`SessionCache` holds before it starts over (one per peer identity in use).
_MEMO_CAP = 4096
_V = TypeVar("_V")


class LiveSession:
    """A cached session record and its ratchet (authoritative while cached).

    ``exact``: reloading the stored row gives this very state (nothing unwritten, and the row's mark is the
    position or the reload's jump to it is already done); ``seq``: the store batch of its latest write.
    """

    __slots__ = ("rec", "ratchet", "exact", "seq")

    def __init__(self, rec: SessionRecord, ratchet: Ratchet, exact: bool = False) -> None:
        self.rec = rec
        self.ratchet = ratchet
        self.exact = exact
        self.seq = 0


class SessionCache:
    """Sessions by id and by installation, installations by identity; read on demand, written in request batches."""

    def __init__(
        self,
        store: StateStore,
        *,
        own_identity: bytes,
        keygen: Callable[[], tuple[bytes, bytes]],
        send_reserve: int,
        cache_peers: int,
        cache_identities: int,
    ) -> None:
        self._store = store
        self._own_identity = own_identity
        self._keygen = keygen
        self._reserve = send_reserve
        # sessions by id, and the same by installation in LRU order; a cached installation always holds *all*
        # its sessions
        self.sessions: dict[bytes, LiveSession] = {}
        self._by_peer: OrderedDict[tuple[bytes, str], list[LiveSession]] = OrderedDict()
        self._cache_peers = cache_peers
        self._tombstones: dict[bytes, int] = {}  # deleted sessions -> batch of the delete (until durable)
        self._written: list[LiveSession] = []  # sessions written by the current request (their seq is set on submit)
        # installations of the cached identities, flat and by identity in LRU order (a message's targets are
        # found in O(devices of that identity)); our own devices are the entry for our identity, never dropped
        self.installations: dict[tuple[bytes, str], InstallationRecord] = {}
        self._by_identity: OrderedDict[bytes, dict[str, InstallationRecord]] = OrderedDict()
        self._cache_identities = cache_identities
        self._inst_seq: dict[bytes, int] = {}  # identity -> batch of its latest installation write
        # what sessions.py derives from the cached installations, emptied whenever any of them changes (written,
        # loaded, dropped): a peer's message targets, and per identity the received bundle (its bytes) that last
        # changed nothing
        self.targets: dict[bytes, tuple[InstallationRecord, ...]] = {}
        self.unchanged_bundle: dict[bytes, bytes] = {}
        # our bundle's entries (own_devices.py) with the SPK record they were built with
        self.own_bundle_key: tuple[object, tuple[tuple[str, bytes, int, int], ...]] | None = None
        self._inst_written: set[bytes] = set()
        self._dirty: set[bytes] = set()
        # the latest store batch any session or installation this request looked at was written in (rule 5 in
        # sessions.py: a request that writes nothing waits for that batch only); reset per request by the manager
        self.read_seq = 0

    # ------------------------------------------------------------------ installations

    def devices(self, identity: bytes) -> dict[str, InstallationRecord]:
        """The installations of ``identity`` (cached, else read from the store), by installation id."""
        group = self._by_identity.get(identity)
        seq = self._inst_seq.get(identity, 0)
        if seq > self.read_seq:
            self.read_seq = seq
        if group is None:
            self._installations_changed()
            group = {rec.installation_id: rec for rec in self._store.load_installations_of(identity)}
            self._by_identity[identity] = group
            for rec in group.values():
                self.installations[(identity, rec.installation_id)] = rec
        else:
            self._by_identity.move_to_end(identity)
        return group

    def put_installation(self, rec: InstallationRecord) -> None:
        """Record a changed installation in the cache; the caller writes it (the same request)."""
        self.devices(rec.identity)[rec.installation_id] = rec
        self.installations[(rec.identity, rec.installation_id)] = rec
        self._installations_changed()
        self._inst_written.add(rec.identity)

    def forget_identity(self, identity: bytes, ops: list[Op]) -> None:
        """Delete every installation of ``identity`` (the caller made sure we have no session with it). The
        identity stays cached with no installations, written by this request, so no read before the delete is
        durable can bring the old rows back into memory."""
        group = self.devices(identity)
        for iid in sorted(group):
            ops.append(DeleteInstallation(identity, iid))
            del self.installations[(identity, iid)]
        group.clear()
        self._installations_changed()
        self._inst_written.add(identity)

    def has_sessions_with(self, identity: bytes) -> bool:
        """Whether we hold any session with ``identity``, stored or only cached (not yet committed)."""
        return (any(live.rec.identity == identity for live in self.sessions.values())
                or self._store.has_sessions_with(identity))

    def _installations_changed(self) -> None:
        self.targets.clear()
        self.unchanged_bundle.clear()
        self.own_bundle_key = None

    @staticmethod
    def remember(memo: dict[bytes, _V], key: bytes, value: _V) -> None:
        """Keep ``value`` in one of the memos above (bounded: a full one starts over)."""
        if len(memo) >= _MEMO_CAP:
            memo.clear()
        memo[key] = value

    # ------------------------------------------------------------------ sessions

    def peer_sessions(self, identity: bytes, installation_id: str) -> list[LiveSession]:
        """All sessions with one installation (cached, else loaded: rule 3 applies to each loaded one)."""
        key = (identity, installation_id)
        group = self._by_peer.get(key)
        if group is not None:
            self._by_peer.move_to_end(key)
            for live in group:
                if live.seq > self.read_seq:
                    self.read_seq = live.seq
            return list(group)
        group = []
        for rec in self._store.load_peer_sessions(identity, installation_id):
            if rec.sid in self._tombstones:
                continue  # its delete is not yet durable
            ratchet = Ratchet.from_bytes(rec.state, keygen=self._keygen)
            _, pos = ratchet.sending_position()
            if pos < rec.send_hwm:
                ratchet.advance_sending_chain(rec.send_hwm - pos)  # rule 3: jump past reserved positions
            group.append(LiveSession(rec, ratchet, exact=True))  # a reload would do exactly the same
        self._by_peer[key] = group
        for live in group:
            self.sessions[live.rec.sid] = live
        return list(group)

    def session(self, identity: bytes, installation_id: str, sid: bytes) -> LiveSession | None:
        for live in self.peer_sessions(identity, installation_id):
            if live.rec.sid == sid:
                return live
        return None

    def lookup(self, sid: bytes) -> LiveSession | None:
        """A session by id alone (cached, else loaded with its installation's others); None if gone."""
        live = self.sessions.get(sid)
        if live is None:
            deleted = self._tombstones.get(sid)
            if deleted is not None:  # gone, by a delete that may not be durable yet: an answer built on it waits
                self.read_seq = max(self.read_seq, deleted)
                return None
            peer = self._store.session_peer(sid)
            live = None if peer is None else self.session(peer[0], peer[1], sid)
        if live is not None and live.seq > self.read_seq:  # (a confirm of a key already gone waits for its delete)
            self.read_seq = live.seq
        return live

    def responder_sessions_on(self, spk_public: bytes) -> list[LiveSession]:
        """Our live (not expired) responder sessions started on one of our SPKs; the stored ones are loaded."""
        for row in self._store.live_responder_sessions(spk_public):
            self.peer_sessions(row.identity, row.installation_id)
        return [live for live in self.sessions.values()
                if not live.rec.initiator and live.rec.bundle_id == spk_public and not live.rec.expired]

    def rows(self) -> list[SessionRecord | SessionSummary]:
        """Every session, oldest first: the stored rows, with the cached copies (authoritative) on top."""
        rows: dict[bytes, SessionRecord | SessionSummary] = {
            r.sid: r for r in self._store.session_summaries() if r.sid not in self._tombstones}
        for sid, live in self.sessions.items():
            rows[sid] = live.rec
        return sorted(rows.values(), key=lambda r: (r.created_ns, r.sid))

    def add(self, live: LiveSession) -> None:
        self.peer_sessions(live.rec.identity, live.rec.installation_id)  # its installation's others first
        self._by_peer[(live.rec.identity, live.rec.installation_id)].append(live)
        self.sessions[live.rec.sid] = live

    def mark_dirty(self, sid: bytes) -> None:
        """This request changed the session: it is written (with a fresh mark) when the request's batch is."""
        self._dirty.add(sid)

    def drop(self, sid: bytes, ops: list[Op]) -> None:
        """Delete a session for good (memory now, disk with this request's batch)."""
        live = self.sessions.pop(sid, None)
        if live is not None:
            self._by_peer[(live.rec.identity, live.rec.installation_id)].remove(live)
        self._dirty.discard(sid)
        self._tombstones[sid] = 0  # the batch number is set on submit
        ops.append(DeleteSession(sid))

    def sweep(self, now: int, retention_ns: int, ops: list[Op]) -> None:
        """Forget durable deletes; drop expired sessions unused for ``retention_ns``."""
        durable = self._store.durable()
        self._tombstones = {sid: seq for sid, seq in self._tombstones.items() if seq == 0 or seq > durable}
        # an expired session only serves late messages; after the retention period its kept keys go too. The
        # cached copy decides for a cached session, the stored row for any other.
        doomed = {sid for sid, live in self.sessions.items()
                  if live.rec.expired and now - live.rec.last_used_ns >= retention_ns}
        for row in self._store.expired_before(now - retention_ns):
            if row.sid not in self.sessions and row.sid not in self._tombstones:
                doomed.add(row.sid)
        for sid in sorted(doomed):
            self.drop(sid, ops)

    # ------------------------------------------------------------------ write-back and eviction

    def evict(self, ops: list[Op]) -> None:
        """Drop least recently used entries beyond the bounds, if reloading them gives back the same state."""
        durable = self._store.durable()
        over = len(self._by_peer) - self._cache_peers
        if over > 0:
            for key in list(itertools.islice(self._by_peer, over + 32)):
                if over <= 0:
                    break
                group = self._by_peer[key]
                if any(live.rec.sid in self._dirty or live.seq > durable for live in group):
                    continue
                inexact = [live for live in group if not live.exact]
                if inexact:  # write exact positions now; dropped by a later request once durable
                    for live in inexact:
                        self._write(live, ops, exact=True)
                    continue
                del self._by_peer[key]
                for live in group:
                    del self.sessions[live.rec.sid]
                over -= 1
        over = len(self._by_identity) - self._cache_identities
        if over > 0:
            for ident in list(itertools.islice(self._by_identity, over + 32)):
                if over <= 0:
                    break
                if (ident == self._own_identity or ident in self._inst_written
                        or self._inst_seq.get(ident, 0) > durable):
                    continue
                self._installations_changed()
                for iid in self._by_identity.pop(ident):
                    del self.installations[(ident, iid)]
                self._inst_seq.pop(ident, None)
                over -= 1

    def _write(self, live: LiveSession, ops: list[Op], *, exact: bool) -> None:
        _, pos = live.ratchet.sending_position()
        live.rec.state = b""  # memory keeps the ratchet; the write takes a snapshot, serialised when committed
        live.rec.send_hwm = pos if exact else pos + self._reserve
        live.exact = exact
        ops.append(PutSession(live.rec.copy(), live.ratchet.snapshot()))
        self._written.append(live)

    def flush(self, ops: list[Op]) -> None:
        """Turn every session touched by this request into a write, with a fresh reservation mark (rule 2)."""
        for sid in sorted(self._dirty):
            self._write(self.sessions[sid], ops, exact=False)
        self._dirty.clear()

    def submit(self, ops: list[Op]) -> int:
        """Submit this request's batch and note its number on everything it wrote (for eviction); returns it."""
        try:
            seq = self._store.submit(ops)
        finally:
            written, self._written = self._written, []
            idents, self._inst_written = self._inst_written, set()
        for live in written:
            live.seq = seq
        for ident in idents:
            self._inst_seq[ident] = seq
        for op in ops:
            if isinstance(op, DeleteSession):
                self._tombstones[op.sid] = seq
        return seq

    def closing_writes(self) -> list[Op]:
        """Writes of the exact sending positions of every cached session (the others' rows already hold theirs),
        so a clean restart leaves no gap."""
        ops: list[Op] = []
        for live in self.sessions.values():
            self._write(live, ops, exact=True)
        self._written.clear()  # the caller writes these itself, not through submit
        return ops
