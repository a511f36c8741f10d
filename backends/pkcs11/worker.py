"""The threads that own every PKCS#11 call, and the reader/writer lock between operations and management.

python-pkcs11 0.10.1 calls ``C_Initialize(NULL)``; SoftHSM2 then disables its own mutexes, and since
python-pkcs11 releases the GIL around every C call, two threads on the token at once crash the process
(SIGSEGV, heap corruption, livelock; measured). So every PKCS#11 call runs on a worker thread owned by the
backend, fed FIFO from a queue. With ``os_locking=True`` the module is initialised with ``CKF_OS_LOCKING_OK``
(its own mutexes on, see :mod:`backends.pkcs11.lib`) and ``workers`` > 1 threads may run token calls in
parallel, each on its own session; management (login, keygen, reconnect) then takes the exclusive lock.
"""

from __future__ import annotations

import _thread
import queue
import threading
from typing import Any, Callable, TypeVar

from backends.errors import BackendConfigError

__all__ = ["RWLock", "Worker"]

T = TypeVar("T")


class RWLock:
    """Many readers (parallel sign/dh) or one writer (login, keygen, reconnect).

    The writer may re-enter (a PIN source or a nested call on the same worker must not deadlock it).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0

    def acquire_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            while self._writer is not None:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            if self._writer == threading.get_ident():
                self._depth -= 1
                return
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._writer, self._depth = me, 1

    def release_write(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                self._cond.notify_all()


class Worker:
    """FIFO queue in front of ``n`` threads that own every PKCS#11 call.

    The hand-off is a bare lock per call (acquired by the caller, released by the worker): measurably cheaper
    than a concurrent.futures.Future, and this sits in front of every token operation.
    """

    def __init__(self, n: int, name: str) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], Any] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(n)]
        self._idents: set[int] = set()
        self._stopped = False
        for t in self._threads:
            t.start()
            assert t.ident is not None
            self._idents.add(t.ident)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, box, done = item
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller, never lost
                box.append((False, exc))
            finally:
                done.release()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() in self._idents:  # already on a worker: run inline (no self-deadlock)
            return fn()
        if self._stopped:
            raise BackendConfigError("backend is closed")
        done = _thread.allocate_lock()
        done.acquire()
        box: list[tuple[bool, Any]] = []
        self._q.put((fn, box, done))
        done.acquire()
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def stop(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            if t.ident != threading.get_ident():
                t.join(timeout=10)
