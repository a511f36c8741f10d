"""Rollback detection: the store must match an epoch kept outside it, or every session re-keys before sending.

The threat
    A message key is a function of (session, sending chain, position). Restore an older copy of the store (a
    backup, a VM or filesystem snapshot, a home moved to a new machine, a copy started beside the original) and
    the agent would send again at positions it already used: two plaintexts under one key and IV. Row MACs
    (:mod:`agent.daemon.store.rows`) cannot see this: an older row is a valid row. Only a value the copy did not
    take along can.

The anchor
    An *anchor* holds ``(epoch, running|stopped)`` outside the store; the store keeps the same pair in its meta
    row ``anchor`` (MAC'd like every row). With a token it is a private data object on the token
    (:mod:`backends.pkcs11.anchor_object`; the PIN is needed to read or change it), so a copy of the disk does
    not take it along. A key-file home keeps it in ``$XDG_STATE_HOME/keyagent/anchors/<store id>``, outside the
    home (see *What the key-file anchor can see* below). The store's id (meta ``store_id``, random) names it, so
    a copied home finds the original's anchor.

One agent on its own store (SQLite)
    * start: the anchor is read; ``clean`` only if store and anchor hold the same epoch and both say
      *stopped*. Anything else re-keys (below): store older than the anchor (a restored copy, stopped or
      running), equal but *running* (the last run did not stop: a crash, a power loss, or a copy taken while it
      ran - these cannot be told apart, so both re-key), store newer or anchor missing (the anchor was reset).
      Then the anchor is set to ``(E+1, running)`` first and the store second, so a crash between the two leaves
      the store behind the anchor: detected next time.
    * running: before sending, the anchor is read again at most every ``check_interval`` (2 s): if it moved, an
      agent started on a copy of this store has taken over; this one answers SUPERSEDED to every encrypt from
      then on (it still decrypts). The copy re-keyed at its start (its store said *running*), so even in the
      seconds before this agent notices, the two never send on one chain.
    * clean stop: ``(E+1, stopped)`` to the anchor, then the store - unless the anchor is no longer ours.
    So an agent costs two anchor writes per run (start and stop), whatever its traffic: a smartcard rated for
    100,000 writes lasts 50,000 runs. Reads: at most one per ``check_interval`` while it sends.

Re-keying
    Every session row is marked expired in one durable write before the agent serves: expired sessions still
    decrypt (late messages on the old chains are read) but are never chosen for sending, so the next message to
    each peer device runs a fresh X3DH with its bundle. The peer sees a new session, as after a reinstall: no
    manual step, no message lost. What is reported: the reason in ``status`` (``rekeyed``), the log, the audit
    log (``type: rekey``) and ``doctor --check anchor``.

Several agents on one store (PostgreSQL)
    Agents come and go, crash, and share the epoch, so there is no *stopped*; only "the database is behind the
    anchor" counts. Each agent start, and each hour the epoch has not moved, bumps the epoch: the database
    first, then the anchor, inside the store's turn. A crash between the two leaves the database ahead, which
    is harmless (the anchor is raised to it), so a crashed agent never re-keys the others. A database restored
    (or failed over to a replica) to a point before the last bump has an epoch below the anchor: the next start
    re-keys, and a running agent notices within ``check_interval`` of its next send and re-keys in place, in
    its turn. Undetected window: a restore to a point after the last bump, i.e. losing at most the last hour -
    use synchronous replication for failover.

What the key-file anchor can see
    It lives outside the home, under the user's ``$XDG_STATE_HOME``: it catches a home restored or copied on
    its own (a backup of ``~/.local/share``, a copy started beside the original, an old copy moved back). It
    cannot catch a restore of the user's whole files or a snapshot of the whole machine: the anchor goes back
    with them. A key file carries no secure monotonic storage; only a token does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from agent.core.error_codes import CodedError, ErrorCode
from agent.home_trust import check_home
from backends.base import AnchorHolder, Backend
from backends.errors import Locked, TokenAbsent
from backends.files import read_capped, write_atomic

from .store.api import StateStore
from .store.rows import Op, PutMeta, PutSession, StoreCorrupt

__all__ = [
    "Anchor", "AnchorSlot", "TokenAnchor", "FileAnchor", "Superseded", "RollbackGuard", "verdict",
    "expire_all_sessions", "anchor_dir", "slot_for", "ANCHOR_META", "STORE_ID_META",
]

log = logging.getLogger(__name__)

ANCHOR_META = "anchor"
STORE_ID_META = "store_id"
_RUNNING, _STOPPED = 1, 2


class Superseded(CodedError, RuntimeError):
    """Another agent took over this state (a copy of the home started beside this one): this one must not send."""

    code = ErrorCode.SUPERSEDED


@dataclass(frozen=True)
class Anchor:
    """An epoch and whether the agent that set it was running (a shared store has only running)."""

    epoch: int
    running: bool

    def encode(self) -> bytes:
        return self.epoch.to_bytes(8, "big") + bytes([_RUNNING if self.running else _STOPPED])

    @classmethod
    def decode(cls, raw: bytes | None) -> "Anchor | None":
        """The anchor in ``raw``; None for nothing or for anything that is not exactly an anchor (a damaged value
        then counts as missing, which re-keys)."""
        if raw is None or len(raw) != 9 or raw[8] not in (_RUNNING, _STOPPED):
            return None
        return cls(int.from_bytes(raw[:8], "big"), raw[8] == _RUNNING)


class AnchorSlot(Protocol):
    """Where an anchor value is kept outside the store."""

    where: str  #: "token", "file" (status and doctor say it)

    def read(self) -> bytes | None: ...
    def write(self, value: bytes) -> None: ...


class TokenAnchor:
    """The anchor as a private data object on the identity's token."""

    where = "token"

    def __init__(self, holder: AnchorHolder, name: str) -> None:
        self._holder, self._name = holder, name

    def read(self) -> bytes | None:
        return self._holder.read_anchor(self._name)

    def write(self, value: bytes) -> None:
        self._holder.write_anchor(self._name, value)


def anchor_dir() -> Path:
    """``$XDG_STATE_HOME/keyagent/anchors`` (``~/.local/state/keyagent/anchors``): outside the home on purpose."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "keyagent" / "anchors"


class FileAnchor:
    """The anchor of a key-file home: a 0600 file in a 0700 directory of the user's, outside the home."""

    where = "file"

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        self._dir = directory

    def _checked_dir(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_home(self._dir)  # ours and writable by nobody else, up to / (else UnsafeHome names the fix)

    def read(self) -> bytes | None:
        if not self._dir.exists():
            return None  # (a read creates nothing: doctor reads too)
        check_home(self._dir)
        try:
            return read_capped(self.path, 64)
        except FileNotFoundError:
            return None

    def write(self, value: bytes) -> None:
        self._checked_dir()
        write_atomic(str(self.path), value)


def slot_for(backend: Backend, store_name: str) -> AnchorSlot:
    """The token when the backend has one, else the anchor file. Never a file for a token backend."""
    if isinstance(backend, AnchorHolder):
        return TokenAnchor(backend, store_name)
    return FileAnchor(anchor_dir(), store_name)


def verdict(stored: Anchor | None, held: Anchor | None, *, shared: bool) -> str | None:
    """Why the store cannot be trusted to be the latest (re-key), or None. ``stored``: the store's copy,
    ``held``: the anchor's. Pure: the whole decision table of the module docstring."""
    if stored is None and held is None:
        return None  # a store that never had an anchor, and no anchor: first start with rollback detection
    if held is None:
        return "the rollback anchor is missing (token reset, another token, or the anchor file was removed)"
    if stored is None:
        return "the store has no anchor but one exists: the store is a copy from before it was last used"
    if stored.epoch < held.epoch:
        return (f"the store is older than its anchor (epoch {stored.epoch} < {held.epoch}): it was restored "
                "from a backup or snapshot, or copied while in use")
    if shared:
        return None  # a database ahead of the anchor: a crash between the two writes of a bump (harmless)
    if stored.epoch > held.epoch:
        return f"the anchor is older than the store (epoch {held.epoch} < {stored.epoch}): the anchor was restored"
    if stored.running or held.running:
        return ("the last run did not stop cleanly (a crash or power loss, or this store is a copy taken while "
                "the agent ran)")
    return None


def expire_all_sessions(store: StateStore) -> int:
    """Mark every live session expired in one durable write (they still decrypt, never send); the count."""
    ops: list[Op] = []
    pairs = {(s.identity, s.installation_id) for s in store.session_summaries() if not s.expired}
    for identity, iid in sorted(pairs):
        ops += [PutSession(replace(rec, expired=True)) for rec in store.load_peer_sessions(identity, iid)
                if not rec.expired]
    if ops:
        store.write(ops)
    return len(ops)


class RollbackGuard:
    """The anchor protocol for one agent over one store (the module docstring has the argument).

    ``start`` runs once before the session manager reads anything; ``check`` before each send (inside the
    store's turn, outside the state lock: several threads may check at once, so it holds a lock of its own);
    ``stop`` at a clean stop."""

    def __init__(self, store: StateStore, slot_factory: Callable[[str], AnchorSlot], *,
                 rng: Callable[[int], bytes] = os.urandom, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = 2.0, bump_interval: float = 3600.0) -> None:
        self._store = store
        self._shared = store.kind != "sqlite"
        self._clock = clock
        self._check_interval = check_interval
        self._bump_interval = bump_interval
        self._rng = rng
        self._slot_factory = slot_factory
        self._new_name = False
        self.name = ""  #: the store's id, which names its anchor (read in the first turn: agents may race)
        self.where = ""
        self.epoch = 0
        self.rekeyed = ""  #: why this start re-keyed every session ("" when it did not)
        self.rekeyed_sessions = 0
        self.superseded = False
        self._checked_at = float("-inf")
        self._moved_at = clock()
        self._mu = threading.Lock()

    # ---- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Compare, re-key if needed, then move the epoch on (anchor and store). Inside the store's turn."""
        name = self._store.get_meta(STORE_ID_META)
        self._new_name = name is None
        self.name = self._rng(16).hex() if name is None else name.decode("ascii", "replace")
        if len(self.name) != 32 or any(c not in "0123456789abcdef" for c in self.name):
            raise StoreCorrupt("the store's id is not one keyagent writes")
        self.slot = self._slot_factory(self.name)
        self.where = self.slot.where if not self._shared else f"{self.slot.where} + shared database"
        stored = Anchor.decode(self._store.get_meta(ANCHOR_META))
        held = Anchor.decode(self.slot.read())
        reason = verdict(stored, held, shared=self._shared)
        if reason is not None:
            self._rekey(reason)
        self._bump_past(stored, held)
        log.info("rollback anchor (%s) at epoch %d%s", self.where, self.epoch,
                 f"; re-keyed {self.rekeyed_sessions} sessions" if reason else "")

    def _rekey(self, reason: str) -> None:
        self.rekeyed = reason
        self.rekeyed_sessions = expire_all_sessions(self._store)
        log.warning("re-keying every session (%d) before sending: %s", self.rekeyed_sessions, reason)

    def _bump_past(self, stored: Anchor | None, held: Anchor | None) -> None:
        """Move the epoch past both copies (a running agent's anchor)."""
        self._bump(Anchor(max(stored.epoch if stored else 0, held.epoch if held else 0) + 1, True))

    def _bump(self, new: Anchor) -> None:
        meta: list[Op] = [PutMeta(ANCHOR_META, new.encode())]
        if self._new_name:
            meta.append(PutMeta(STORE_ID_META, self.name.encode()))
            self._new_name = False
        if self._shared:  # the database first: a crash before the anchor write leaves it ahead (harmless)
            self._store.write(meta)
            self.slot.write(new.encode())
        else:  # the anchor first: a crash before the store write leaves the store behind (re-keys next start)
            self.slot.write(new.encode())
            self._store.write(meta)
        self.epoch = new.epoch
        self._moved_at = self._clock()

    # ---- while running -------------------------------------------------------------------------------------
    def check(self) -> bool:
        """Before a send. Raises Superseded when a copy took over (own store); in a shared store re-keys in
        place when the database fell behind the anchor and returns True (the caller reloads what it cached)."""
        with self._mu:
            return self._check()

    def _check(self) -> bool:
        if self.superseded:
            raise Superseded("another agent started on a copy of this agent's state and sends for it now: this "
                             "one no longer sends (stop it; keep one copy of the home)")
        now = self._clock()
        if now - self._checked_at < self._check_interval:
            return False
        try:
            raw = self.slot.read()
        except (TokenAbsent, Locked) as exc:
            # The token is away or logged out: no copy can move the anchor through it meanwhile without us
            # failing the same way at its start, and a copy re-keys anyway, so sending on goes on; read again
            # at the next send.
            log.info("rollback anchor not readable now (%s); checked again at the next send", type(exc).__name__)
            return False
        held = Anchor.decode(raw)
        self._checked_at = now
        if not self._shared:
            if held != Anchor(self.epoch, True):
                self.superseded = True
                log.warning("the rollback anchor moved to %s under this agent: another agent runs on a copy of "
                            "this state; refusing to send", held)
                return self._check()
            return False
        stored = Anchor.decode(self._store.get_meta(ANCHOR_META))
        reason = verdict(stored, held, shared=True)
        if reason is not None:
            self._rekey(reason)
            self._bump_past(stored, held)
            return True
        if stored is not None and (held is None or stored.epoch > held.epoch):
            self.slot.write(stored.encode())  # a bump that crashed between its two writes: finish it
        epoch = stored.epoch if stored else 0
        if epoch != self.epoch:
            self.epoch, self._moved_at = epoch, now
        elif now - self._moved_at >= self._bump_interval:
            self._bump(Anchor(epoch + 1, True))
        return False

    # ---- stop ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """A clean stop of an agent on its own store: ``(E+1, stopped)``, unless the anchor is not ours."""
        if self._shared or self.superseded or self.epoch == 0:
            return
        try:
            if Anchor.decode(self.slot.read()) != Anchor(self.epoch, True):
                self.superseded = True
                return
            new = Anchor(self.epoch + 1, False)
            self.slot.write(new.encode())
        except (TokenAbsent, Locked) as exc:  # the anchor keeps saying "running": the next start re-keys
            log.warning("rollback anchor not marked stopped (%s): the next start re-keys every session",
                        type(exc).__name__)
            return
        self._store.write([PutMeta(ANCHOR_META, new.encode())])
        self.epoch = new.epoch
