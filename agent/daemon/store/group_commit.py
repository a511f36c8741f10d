"""Group commit, shared by the store engines: many requests' write batches, one durable commit.

``submit(batch)`` only queues a batch and returns its sequence number; ``wait(seq)`` blocks until that batch
is durable. The first waiter that finds no commit in progress becomes the leader: it takes *every* queued
batch, hands them to the engine's ``_commit`` (applied in submission order inside one transaction, committed
once); the others sleep on a condition and wake when their sequence number is covered. Concurrent requests
thus share one fsync (SQLite) or one commit round trip (PostgreSQL), and durability is monotone: batch *n*
durable implies every batch before it is durable. If a commit fails the store is poisoned (``StoreFailed``):
the in-memory copy may no longer match the database, so the agent must restart and reload. An engine whose
server may come back (PostgreSQL) raises :class:`StoreUnavailable` instead: every queued batch is then
abandoned (its waiters get the error; none of their results was handed out) and the engine's ``_abandon``
tells the session manager to reload its cache from the database, whatever of those batches reached it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .rows import Op, PutSession, RowCodec, StoreFailed, StoreUnavailable, Write

__all__ = ["GroupCommit"]

Batch = tuple[int, list[Write]]
#: A batch as queued: a session's row is still its record (sealed by the commit leader, see ``submit``).
_Queued = tuple[int, list[Write | PutSession]]


class GroupCommit:
    """The queue, the leader election and the durability counter; engines implement ``_commit``."""

    _codec: RowCodec

    def __init__(self) -> None:
        self._mu = threading.Lock()  # taken directly where nothing waits (the Condition's own methods are Python)
        self._cond = threading.Condition(self._mu)
        self._queue: list[_Queued] = []
        self._submitted = 0
        self._durable = 0
        self._leader = False
        self._failed: BaseException | None = None
        self._lost = 0  # batches up to this one were abandoned (StoreUnavailable): never reported durable
        self._closed = False
        self.commits = 0  # number of durable commits: the group-commit benchmark and tests read it

    def _commit(self, batch: list[Batch]) -> None:
        """Apply every write of ``batch`` in order in one transaction and make it durable (engine's job)."""
        raise NotImplementedError

    def _abandon(self) -> None:
        """Queued batches were thrown away after an unavailable commit: the engine invalidates caches."""

    def submit(self, ops: Sequence[Op]) -> int:
        """Queue a batch (applied atomically, in submission order); return its sequence number for ``wait``.

        Rows are encoded here, in the caller's thread (a bad op fails its caller), except a session's: its sealing
        (the whole ratchet state, encrypted and MAC'd) is left to the commit leader, which seals only the last
        version of each session in the batches it commits together — the earlier ones would be overwritten in
        the same transaction, so no reader could ever see them. A busy session (every decrypt rewrites it) is
        then sealed once per commit instead of once per request.
        """
        rows: list[Write | PutSession] = []
        for op in ops:  # (a loop, not a comprehension: one call less per request)
            rows.append(op if isinstance(op, PutSession) else self._codec.encode(op))
        with self._mu:
            self._check_usable()
            self._submitted += 1
            self._queue.append((self._submitted, rows))
            return self._submitted

    def last_submitted(self) -> int:
        return self._submitted  # one attribute read is atomic (the GIL); every request asks

    def durable(self) -> int:
        return self._durable  # as last_submitted: a value at most as new as the truth, never newer

    def wait(self, seq: int) -> None:
        """Block until batch ``seq`` (and so every earlier one) is durable; commit it ourselves if nobody is."""
        with self._cond:
            if seq > self._submitted:
                raise ValueError("waiting for a batch that was never submitted")
            while self._durable < seq:
                if seq <= self._lost:
                    raise StoreUnavailable("the state database went away before this change was stored; retry")
                self._check_usable()
                if self._leader:
                    self._cond.wait()
                    continue
                if not self._queue:  # cannot happen: batches are taken in order; never spin on it
                    raise StoreFailed("store queue out of order")
                self._leader = True
                queued, self._queue = self._queue, []
                self._cond.release()
                error: BaseException | None = None
                batch: list[Batch] = []
                try:
                    batch = self._seal_sessions(queued)
                    self._commit(batch)
                except BaseException as e:  # noqa: BLE001 - any failure poisons the store (but see below)
                    error = e
                finally:
                    self._cond.acquire()
                    self._leader = False
                    if isinstance(error, StoreUnavailable):
                        # abandoned with everything queued behind it (built on it); the cache is reloaded
                        self._queue = []
                        self._lost = self._submitted
                        self._abandon()
                    elif error is not None:
                        self._failed = error
                    elif batch:
                        self._durable = batch[-1][0]
                        self.commits += 1
                    self._cond.notify_all()
                if isinstance(error, StoreUnavailable):
                    raise error
                if error is not None:
                    raise StoreFailed("committing agent state failed; restart the agent") from error

    def _seal_sessions(self, queued: list[_Queued]) -> list[Batch]:
        """The rows to commit: each session's last version sealed, its earlier ones in these batches dropped."""
        last: dict[bytes, PutSession] = {}
        for _, rows in queued:
            for w in rows:
                if isinstance(w, PutSession):
                    last[w.rec.sid] = w
        encode = self._codec.encode
        return [(seq, [w if not isinstance(w, PutSession) else encode(w) for w in rows
                       if not isinstance(w, PutSession) or last[w.rec.sid] is w]) for seq, rows in queued]

    def write(self, ops: Sequence[Op]) -> None:
        """Submit a batch and wait until it is durable."""
        self.wait(self.submit(ops))

    def sync(self) -> None:
        """Wait until everything submitted so far is durable."""
        self.wait(self.last_submitted())

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StoreFailed("an earlier commit failed; restart the agent") from self._failed
        if self._closed:
            raise StoreFailed("the store is closed")

    def _drain_for_close(self) -> None:
        """Commit anything queued (best effort: a failed store closes all the same), then refuse new work."""
        with self._cond:
            pending = self._submitted
            failed = self._failed is not None
            closed = self._closed
        if not failed and not closed:
            try:
                self.wait(pending)
            except StoreFailed:
                pass
        with self._cond:
            self._closed = True
