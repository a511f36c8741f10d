"""The Unix-socket server: peer credentials, limits, signals and shutdown.

Frames (agent/framing.py) are a 4-byte big-endian length and one protobuf message (ssh-agent's framing without the
type byte: the type is the Request oneof). A length of 0 or above ``max_frame`` closes the connection, as does a
frame that does not parse; nothing a client sends can affect another connection. Limits, so one client cannot
starve the agent: connection slots (agent/daemon/admission.py: ``max_connections``, a per-uid cap for uids other
than the owner's, slots reserved for the owner; a connection that gets no slot is closed at once), one request at a
time per connection (the next frame is not served until the reply is written, and at most one frame of it is read
meanwhile: backpressure), ``frame_timeout`` from a
frame's first byte to its last (slow-loris), ``idle_timeout`` between frames (0 = none) and ``request_timeout`` per
request. Refused connections and broken frames from uids other than the owner's are logged at most
``refusal_log_burst`` times per ``refusal_log_window`` per uid (agent/daemon/throttle.py), so an outsider cannot fill
the logs with them.

Serving model: one event loop serves every connection (accepting, reading, framing, writing, timers, signals, the
socket watch, upkeep). Each request takes one of three paths:

* cheap requests (``status``, ``identity``, ``bundle``) are answered right there from memory
  (:meth:`Service.answer_from_memory`), touching neither the store nor the token;
* when the backend's keys are in this process (a key file), session and key requests run on the loop too
  (:meth:`Service.answer_inline`): their work is CPU, which the GIL serialises anyway, and only the wait for
  durability leaves the loop - one commit thread (:class:`_DurableAnswers`) waits for the batch each answer needs
  and hands the answers back, so answers queued meanwhile share one fsync and none leaves before the state it
  owes is on disk (sessions.py, rule 5); a plaintext owes none (rule 8): it is answered at once, and the same
  thread commits its batch right after, gathered for at most ``UNWAITED_COMMIT_DELAY`` with the others;
* everything else (every request to a token, whose operations are device round trips; confirmation hooks; a cheap
  request whose answer is not in memory) runs on a bounded pool of ``workers`` threads.

So most requests cost no thread hand-off at all (on this VM a hand-off costs ~100-150 µs of CPU, more than the
request), and more clients mean more requests per loop pass instead of more threads convoying on the GIL (the
thread-per-connection model this replaces served 8 clients no faster than 1, and identity slower). The answers of
one loop pass share one audit write, written before any of them is sent. Per-request time limits are loop timers:
a request still running on a worker past its limit gets a TIMEOUT answer at once, and its connection is closed when
the work ends (its late result is dropped; the state change it made, if any, is durable and harmless: see
sessions.py).

Process behaviour: SIGTERM/SIGINT stop cleanly (listener closed, socket removed if still ours, state closed);
SIGHUP releases the token so other programs can use it; the agent exits when its socket file is deleted or
replaced (nobody can reach it any more, and a new agent may be starting there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from google.protobuf.message import DecodeError

from agent.daemon.admission import SlotPolicy, Slots, Verdict
from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, Home
from agent.daemon.agent_lock import LockManager
from agent.daemon.peercred import PeerPolicy, exe_of, peer_cred
from agent.daemon.service import FROM_MEMORY, ClientContext, Service, SessionFactory, default_session_factory
from agent.daemon.logcap import cap  # length only: the log formatter escapes
from agent.daemon.socketdir import ClaimedSocket, claim_socket
from agent.daemon.throttle import Throttle
from agent.daemon.token_gate import BUSY_BACKOFF
from agent.framing import FrameDecoder, FrameError, encode_frame
from agent.pb.keyagent import agent_pb2 as pb
from backends.base import Backend

__all__ = ["AgentServer"]

log = logging.getLogger("keyagent.server")

#: Seconds between idle upkeep runs (SPK rotation is due every 24 h; requests also trigger it).
_UPKEEP_INTERVAL = 600.0


class _Connection(asyncio.Protocol):
    """One admitted client, served on the event loop: frames in, one request at a time, answers out.

    Cheap requests are answered inline from memory (:meth:`Service.answer_from_memory`); any other goes to the
    bounded worker pool, and the connection reads nothing more until its answer is written (backpressure: the
    client's next frames wait in the kernel's socket buffer). A request run on the loop that only waits for its
    commit keeps reading (pausing and resuming costs two epoll_ctl calls per request) but buffers at most one
    frame before it pauses too. One timer runs at a time: the idle clock between
    frames, the frame clock from a frame's first byte to its last, or the request's time limit.
    """

    def __init__(self, server: "AgentServer", ctx: ClientContext) -> None:
        self.server = server
        self.ctx = ctx
        self.frames = FrameDecoder(server.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set in connection_made, like the transport
        self.request: pb.Request | None = None  # running on a worker (None between requests)
        self.started = 0.0
        self.timed_out = False  # TIMEOUT was answered; the connection ends when the work does
        self.closing = False
        self._eof = False  # the client shut down its writing side: serve what arrived, then close
        self._held = False  # BUSY backoff: the next request waits
        self._write_paused = False  # the client does not read its answers
        self._timer: asyncio.TimerHandle | None = None
        self._clock = ""  # which clock _timer is: "frame", "request", "write", "close"
        # the idle clock is lazy: each request only moves its deadline; one timer re-checks when it fires
        self._idle_at: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # asyncio.get_running_loop() makes a getpid() system call each time: the connection's clocks, hand-offs
        # and the server's answer queue use this one
        self._loop = asyncio.get_running_loop()
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        if self.request is not None:  # a pipelining client while its request waits for durability: hold at
            if self.frames.buffered > self.frames.max_frame + 4:  # most one frame, then stop reading (backpressure)
                assert self.transport is not None
                self.transport.pause_reading()
            return
        server = self.server
        server._reading = True  # answers from memory go out at the end of this callback, not one loop pass later
        try:
            self._pump()
        finally:
            server._reading = False
            server._flush_answers()

    def eof_received(self) -> bool:
        self._eof = True
        self._pump()
        return True  # keep our side open: an answer may still be owed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        self._idle_at = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.server._forget(self)

    def pause_writing(self) -> None:
        """The client is not reading its answers: read nothing more; drop it if it stays so (frame_timeout x 3)."""
        self._write_paused = True
        assert self.transport is not None
        self.transport.pause_reading()
        self._arm("write", self.server.config.frame_timeout * 3, self._abort)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._clock == "write":
            self._cancel_timer()
        self._continue()

    # --- requests ----------------------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Take whole frames and serve them while nothing holds the connection back."""
        server, ctx = self.server, self.ctx
        while self.request is None and not (self._held or self._write_paused or self.closing):
            if server.stopping:
                self._close()
                return
            frames = self.frames
            try:  # (nothing buffered, the usual case once a read's frame was served: no call into the decoder)
                frame = frames.next() if frames.buf else None
            except FrameError as exc:
                server._bad_frame(ctx, str(exc))
                self._close()
                return
            if frame is None:
                if self._eof:
                    if frames.buf:
                        server._bad_frame(ctx, "truncated frame")
                    self._close()
                elif frames.buf:
                    self._idle_at = None
                    if self._clock != "frame":  # from the frame's first byte (slow-loris)
                        self._arm("frame", server.config.frame_timeout, self._frame_timeout)
                else:
                    self._arm_idle()
                return
            self._idle_at = None
            if self._clock == "frame":
                self._cancel_timer()
            try:
                request = pb.Request.FromString(frame)
            except (DecodeError, RuntimeWarning, ValueError):
                server._bad_frame(ctx, "undecodable frame")
                self._write(pb.Response(error=pb.Error(code=pb.Error.BAD_REQUEST,
                                                       message="frame is not a keyagent Request")))
                self._close()
                return
            kind = request.WhichOneof("request")
            inline = None
            if kind in FROM_MEMORY:
                try:
                    inline = server.service.answer_from_memory(request, ctx)
                except Exception:  # a bug in the fast path must not cost the answer: the worker path gives it
                    log.exception("conn %d: answering from memory failed", ctx.conn)
            if inline is not None:
                self._answer(*inline)
                continue
            try:
                ran = server.service.answer_inline(request, ctx, kind)
            except Exception:  # process() answers every error itself: this is a bug; do not run it twice
                log.exception("conn %d: running a request inline failed", ctx.conn)
                self._close()
                return
            if ran is None:
                self._submit(request)
                return
            response, fields, seq, written, manager = ran
            if written > seq:  # a batch nothing waits for (a decrypt's, sessions.py rule 8): commit it right away
                server._durable.commit(written, manager)
            if not seq or manager.is_durable(seq):
                self._answer(response, fields)
                continue
            # one request at a time, as on a worker; reading goes on (no epoll_ctl pair per request): what the
            # client sends meanwhile is only buffered, up to one frame (data_received)
            self.request, self.started = request, time.monotonic()
            server._durable.add(self, request, response, fields, seq, manager)
            return

    def _submit(self, request: pb.Request) -> None:
        """Run a request on the worker pool; nothing more is read from this client until it is answered."""
        assert self.transport is not None
        service = self.server.service
        self.request, self.started = request, time.monotonic()
        self.transport.pause_reading()
        self._arm("request", service.limit(request.WhichOneof("request")), self._expire)
        future = self._loop.run_in_executor(self.server.executor, service.process, request, self.ctx)
        future.add_done_callback(self._done)

    def _done(self, future: "asyncio.Future[tuple[pb.Response, dict[str, object]]]") -> None:
        self.request = None
        if self._clock == "request":
            self._cancel_timer()
        if future.cancelled():
            self._close()
            return
        exc = future.exception()
        if exc is not None:  # process() never raises: a bug, or the pool was shut down under us
            log.error("conn %d: request failed outside its handler", self.ctx.conn, exc_info=exc)
            self._close()
            return
        response, fields = future.result()
        if self.timed_out:  # the client got TIMEOUT (audited then); the late result is dropped with the connection
            self._close()
            return
        if self.closing:  # the client left: what was done is still audited
            self.server.service.record(self.ctx, fields)
            return
        self._answer(response, fields)
        self._continue()

    def _durable_answer(self, request: pb.Request, response: pb.Response, fields: dict[str, object],
                        error: BaseException | None) -> None:
        """Event loop: the state of an inline request is on disk (or the store failed): answer it now."""
        self.request = None
        if error is not None:
            response, fields = self.server.service.durability_failed(request, fields, error)
        if self.closing:  # the client left: what was done is still audited
            self.server.service.record(self.ctx, fields)
            return
        self._answer(response, fields)
        self._continue()

    def _answer(self, response: pb.Response | bytes, fields: dict[str, object]) -> None:
        """Queue the answer until the end of the callback that made it (a read: every frame it brought shares one
        audit write) or of this loop pass (answers from workers and the commit thread: every one ready in the pass
        shares one write). Flushing at the end of a read rather than one pass later saves an event-loop iteration
        (a zero-timeout epoll) per request."""
        server = self.server
        server._answers.append((self, response, fields))
        if len(server._answers) == 1 and not server._reading:
            self._loop.call_soon(server._flush_answers)
        if (not isinstance(response, bytes) and response.WhichOneof("response") == "error"
                and response.error.code == pb.Error.BUSY):
            self._held = True  # answered at once; this connection's next request waits
            self._loop.call_later(BUSY_BACKOFF, self._unhold)

    def _unhold(self) -> None:
        self._held = False
        self._continue()

    def _continue(self) -> None:
        """Serve the next frame (already buffered, or read on)."""
        if self.closing or self.request is not None or self._held or self._write_paused:
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._pump()

    def _expire(self) -> None:
        """The running request is past its limit: answer TIMEOUT now (the connection ends when the work does)."""
        self._clock, self._timer = "", None
        request = self.request
        if request is None or self.closing:
            return
        self.timed_out = True
        service = self.server.service
        response, fields = service.timeout_response(request, self.ctx, self.started)
        log.warning("conn %d: %s request timed out", self.ctx.conn, request.WhichOneof("request"))
        service.record(self.ctx, fields)
        self._write(response)

    def _write(self, response: pb.Response) -> None:
        """Write an answer now, after any still queued (answers go out in request order)."""
        self.server._flush_answers()
        self._send(response)

    def _send(self, response: pb.Response | bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(response if isinstance(response, bytes) else response.SerializeToString()))

    # --- clocks and closing --------------------------------------------------------------------------------
    def _arm(self, clock: str, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._clock = clock
        self._timer = self._loop.call_later(seconds, callback)

    def _arm_idle(self) -> None:
        """Start (or restart) the idle clock: between frames, with no request running."""
        idle = self.server.config.idle_timeout
        if idle <= 0:
            return
        loop = self._loop
        self._idle_at = loop.time() + idle
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_at, self._idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._clock = None, ""

    def _idle(self) -> None:
        self._idle_timer = None
        if self._idle_at is None or self.closing:
            return  # a request is running or a frame is arriving: their clocks apply (the next idle one re-arms)
        loop = self._loop
        if loop.time() < self._idle_at:
            self._idle_timer = loop.call_at(self._idle_at, self._idle)
            return
        self._close()  # idle too long: hang up like a clean close

    def _frame_timeout(self) -> None:
        self._clock, self._timer = "", None
        self.server._bad_frame(self.ctx, "frame timeout")
        self._close()

    def _close(self) -> None:
        """Close after what is written so far has gone out (a client that never reads it is cut after a while)."""
        if self.closing:
            return
        self.server._flush_answers()  # what was answered goes out before the close
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            self._arm("close", self.server.config.frame_timeout * 3, self._abort)
        else:
            self._cancel_timer()
        transport.close()

    def _abort(self) -> None:
        self._clock, self._timer = "", None
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Stop: close now (buffered answers still go out)."""
        self._close()


#: How long a batch nobody waits for (a decrypt's, sessions.py rule 8) may wait to share a commit with others (an
#: answer that does wait for its batch ends the wait at once). Measured with bench_socket when it came in:
#: committing each such batch at once costs an fsync'd commit per message (1 client: 0.06 of core); 2 ms
#: 0.05-0.06, 5 ms 0.07, 20 ms 0.07 — and it bounds what a power loss can make decrypt again (rule 8).
UNWAITED_COMMIT_DELAY = 0.005


def _note_latest(latest: dict[int, tuple[Any, int]], manager: Any, seq: int) -> None:
    """Keep the highest batch per session manager (one, unless reopened): durability is monotone, so waiting for
    it covers the others."""
    prev = latest.get(id(manager))
    if prev is None or seq > prev[1]:
        latest[id(manager)] = (manager, seq)


class _DurableAnswers:
    """Answers computed on the event loop whose state is not yet on disk: one thread waits for the commit (becoming
    the store's commit leader), then hands them back to the loop. Answers queued meanwhile share that commit, and
    so do batches nobody waits for (:meth:`commit`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._mu = threading.Lock()  # taken directly by commit() (every decrypt): the Condition's methods are Python
        self._cond = threading.Condition(self._mu)
        self._items: list[tuple[_Connection, pb.Request, pb.Response, dict[str, object], int, Any]] = []
        self._unwaited: dict[int, tuple[Any, int]] = {}  # per session manager: the latest batch to commit anyway
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="keyagent-commit", daemon=True)
        self._thread.start()

    def add(self, conn: _Connection, request: pb.Request, response: pb.Response, fields: dict[str, object],
            seq: int, manager: Any) -> None:
        with self._cond:
            self._items.append((conn, request, response, fields, seq, manager))
            self._cond.notify()

    def commit(self, seq: int, manager: Any) -> None:
        """Make batch ``seq`` durable soon, with no answer waiting for it (a decrypt's, sessions.py rule 8)."""
        with self._mu:
            idle = not self._unwaited and not self._items  # else the thread is already on its way: no wake-up
            _note_latest(self._unwaited, manager, seq)
            if idle:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._unwaited and not self._stopping:
                    self._cond.wait()
                if not self._items and not self._unwaited:
                    return
                if not self._items and not self._stopping:  # nobody waits: gather more into this commit (bounded)
                    self._cond.wait_for(lambda: self._items or self._stopping, UNWAITED_COMMIT_DELAY)
                items, self._items = self._items, []
                latest, self._unwaited = self._unwaited, {}  # per session manager (one, unless reopened)
            for _, _, _, _, seq, manager in items:
                _note_latest(latest, manager, seq)
            error: BaseException | None = None
            try:
                for manager, seq in latest.values():
                    manager.wait_durable(seq)  # durability is monotone: the highest covers the others
            except BaseException as exc:  # noqa: BLE001 - every waiting client is told
                error = exc
            if not items:  # only batches nobody waits for: no answer to hand back, no loop wake-up
                if error is not None:  # the store is failed now: every later request is refused with it
                    log.error("committing agent state failed: %s", error)
                continue
            try:
                self._loop.call_soon_threadsafe(self._deliver, items, error)
            except RuntimeError:  # the loop is closed: the agent is gone
                return

    @staticmethod
    def _deliver(items: list[tuple[_Connection, pb.Request, pb.Response, dict[str, object], int, Any]],
                 error: BaseException | None) -> None:
        """Event loop: answer what became durable; the answers (and those of requests they let through) go out at
        the end of this callback, with one audit write, rather than one loop pass later."""
        server = items[0][0].server
        server._reading = True
        try:
            for conn, request, response, fields, _, _ in items:
                conn._durable_answer(request, response, fields, error)
        finally:
            server._reading = False
            server._flush_answers()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(10)


class AgentServer:
    """Serves one home's agent on one socket until stopped."""

    def __init__(
        self,
        *,
        home: Home,
        config: AgentConfig,
        backend: Backend,
        socket_path: str,
        session_factory: SessionFactory | None = None,
        listen_sock: socket.socket | None = None,
        claimed: ClaimedSocket | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.backend = backend
        self.socket_path = socket_path
        self._listen_sock = listen_sock  # systemd socket activation: already bound by systemd
        self._claimed = claimed  # claimed by the caller before it opened the backend (fail fast if taken)
        self._factory = session_factory or default_session_factory(home, backend)
        self.policy = PeerPolicy(os.getuid(), frozenset(config.allow_uids), frozenset(config.allow_gids))
        self.lock = LockManager(backend, ttl=config.unlock_ttl)
        self._next_conn = 0
        self._stop: asyncio.Event | None = None
        self._exit_reason = "stopped"
        self._conns: set[_Connection] = set()
        self._conns_mu = threading.Lock()
        self._slots = Slots(SlotPolicy(config.max_connections, config.max_connections_per_uid,
                                       config.owner_reserved_connections))
        self._throttle = Throttle(burst=config.refusal_log_burst, window=config.refusal_log_window)
        self.stopping = False
        self._answers: list[tuple[_Connection, pb.Response | bytes, dict[str, object]]] = []
        self._reading = False  # inside a data_received: it flushes the answers itself when it returns

    # --- answers: audited together, then sent ------------------------------------------------------------------
    def _flush_answers(self) -> None:
        """Audit every queued answer (one write), then send them: audited before any client can see its answer."""
        answers, self._answers = self._answers, []
        if len(answers) == 1:  # the usual case: one request's answer
            conn, response, fields = answers[0]
            self.service.record(conn.ctx, fields)
            conn._send(response)
            return
        self.service.record_all([(conn.ctx, fields) for conn, _, fields in answers])
        for conn, response, _ in answers:
            conn._send(response)

    # --- callbacks the service and signals use ----------------------------------------------------------------
    @staticmethod
    def shared_socket(config: AgentConfig) -> bool:
        """Other uids/gids are admitted: the socket must be reachable by them (SO_PEERCRED still decides)."""
        return bool(config.allow_uids or config.allow_gids)

    def request_stop(self, reason: str = "stop requested") -> None:
        self._exit_reason = reason
        if self._stop is not None:
            self._stop.set()

    def _stop_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """From a worker thread: stop after the current reply is written."""
        loop.call_soon_threadsafe(loop.call_later, 0.05, self.request_stop, "stop request")

    def release_token(self) -> None:
        """Close the token session so other programs can use it (SIGHUP); the backend reconnects when needed."""
        self.backend.release()
        log.info("token released")

    # --- main loop ----------------------------------------------------------------------------------------------
    async def run(self, ready: Callable[[str], None] | None = None) -> str:
        """Serve until stopped; returns why it stopped. ``ready(socket_path)`` is called once accepting."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        claimed = self._claimed
        if self._listen_sock is not None:
            sock = self._listen_sock
            sock.setblocking(False)
        else:
            if claimed is None:
                claimed = claim_socket(Path(self.socket_path), shared=self.shared_socket(self.config))
            sock = claimed.sock
        executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="keyagent-req")
        audit = AuditLog(self.home.audit, max_bytes=self.config.audit_log_max_bytes,
                         backups=self.config.audit_log_backups)
        self.service = Service(
            home=self.home, config=self.config, backend=self.backend, lock=self.lock, audit=audit,
            executor=executor, sessions=self._factory, socket_path=self.socket_path,
            on_stop=lambda: self._stop_soon(loop),
            on_release=self.release_token, connections=self.connection_count,
        )
        self.executor = executor
        self._durable = _DurableAnswers(loop)
        accepting = False
        try:
            await loop.run_in_executor(executor, self.service.try_open_sessions)
            loop.add_reader(sock.fileno(), self._accept, sock)
            accepting = True
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(executor, self.release_token))
            watcher = asyncio.create_task(self._watch(claimed))
            log.info("listening on %s (pid %d)", self.socket_path, os.getpid())
            if ready is not None:
                ready(self.socket_path)
            await self._stop.wait()
            watcher.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if accepting:
                loop.remove_reader(sock.fileno())
            self.stopping = True
            await self._drain_connections()
            self._durable.close()
            if claimed is not None:
                claimed.release()
            else:
                sock.close()
            executor.shutdown(wait=True)
            try:
                self.service.close()
            finally:
                self.backend.close()
                audit.close()
        log.info("agent stopped: %s", self._exit_reason)
        return self._exit_reason

    def connection_count(self) -> int:
        with self._conns_mu:
            return len(self._conns)

    def _forget(self, conn: _Connection) -> None:
        with self._conns_mu:
            if conn in self._conns:
                self._conns.discard(conn)
                self._slots.give_back(conn.ctx.cred.uid)

    async def _drain_connections(self) -> None:
        """Close idle connections at once; let ones mid-request finish their reply (bounded wait), then close all."""
        with self._conns_mu:
            conns = list(self._conns)
        for conn in conns:
            if conn.request is None:
                conn.shutdown()
        deadline = time.monotonic() + min(5.0, self.config.request_timeout)
        while any(conn.request is not None for conn in conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in conns:
            conn.shutdown()
        deadline = time.monotonic() + 1.0
        while self.connection_count() and time.monotonic() < deadline:  # answers flushed, transports closed
            await asyncio.sleep(0.01)

    async def _watch(self, claimed: ClaimedSocket | None) -> None:
        """Exit when our socket file disappears; auto-lock when the unlock TTL expires; periodic upkeep."""
        loop = asyncio.get_running_loop()
        next_upkeep = loop.time() + _UPKEEP_INTERVAL
        while True:
            await asyncio.sleep(self.config.socket_check_interval)
            if loop.time() >= next_upkeep:
                next_upkeep = loop.time() + _UPKEEP_INTERVAL
                await loop.run_in_executor(None, self.service.maintain)
            if claimed is not None and not claimed.still_ours():
                log.warning("socket %s was deleted or replaced; exiting", self.socket_path)
                self.request_stop("socket deleted")
                return
            try:
                if await loop.run_in_executor(None, self.lock.tick):
                    log.info("unlock TTL expired; agent locked")
            except Exception:
                log.exception("auto-lock failed")

    # --- connections --------------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        """Event loop: accept every pending connection; admitted ones get their own thread."""
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave the rest queued; the next readiness retries
                log.warning("accept failed: %s", exc.strerror)
                return
            try:
                self._admit(sock)
            except Exception:
                log.exception("cannot admit a connection")
                sock.close()

    def _admit(self, sock: socket.socket) -> None:
        self._next_conn += 1
        conn_id = self._next_conn
        try:
            cred = peer_cred(sock)
        except OSError:
            log.warning("conn %d: no peer credentials; closing", conn_id)
            sock.close()
            return
        exe = exe_of(cred.pid)
        if not self.policy.allows(cred):
            # audited before the client can see the close, like every answer
            self._refused(ClientContext(cred, exe, conn_id, False), "DENIED", "uid not admitted")
            sock.close()
            return
        ctx = ClientContext(cred=cred, exe=exe, conn=conn_id, owner=self.policy.is_owner(cred))
        with self._conns_mu:
            verdict = self._slots.take(cred.uid, ctx.owner)
            conn = _Connection(self, ctx) if verdict is Verdict.ADMIT else None
            if conn is not None:
                self._conns.add(conn)
        if conn is None:
            self._refused(ctx, "BUSY", "per-uid connection cap" if verdict is Verdict.UID_FULL
                          else "too many connections")
            sock.close()  # after the audit line, so a client that saw the close finds it recorded
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))

        def attached(t: "asyncio.Task[tuple[asyncio.Transport, asyncio.BaseProtocol]]") -> None:
            if t.cancelled() or t.exception() is not None:  # no transport: the slot goes back, the socket closes
                self._forget(conn)
                sock.close()

        task.add_done_callback(attached)

    def _quiet(self, ctx: ClientContext, kind: str) -> tuple[bool, int]:
        """Whether to log this refusal/broken frame (owner: always) and how many were held back before it."""
        if ctx.owner:
            return True, 0
        return self._throttle.allow((kind, ctx.cred.uid))

    def _refused(self, ctx: ClientContext, result: str, why: str) -> None:
        """Log and audit a connection closed at admission, throttled per uid."""
        logged, held = self._quiet(ctx, "connect")
        if not logged:
            return
        cred = ctx.cred
        note = f" ({held} more from uid {cred.uid} not logged)" if held else ""
        log.warning("conn %d: refused uid=%d gid=%d pid=%d exe=%s: %s%s", ctx.conn, cred.uid, cred.gid, cred.pid,
                    cap(ctx.exe, 512), why, note)
        self.service.record(ctx, {"type": "connect", "result": result, "conn": ctx.conn, "detail": why,
                                  "suppressed": held or None})

    def _bad_frame(self, ctx: ClientContext, detail: str) -> None:
        """Log and audit a connection closed for a broken frame, throttled per uid."""
        logged, held = self._quiet(ctx, "frame")
        if not logged:
            return
        note = f" ({held} more from uid {ctx.cred.uid} not logged)" if held else ""
        log.info("conn %d: closing: %s%s", ctx.conn, cap(detail), note)
        self.service.record(ctx, {"type": "frame", "result": "BAD_REQUEST", "conn": ctx.conn, "detail": detail,
                                  "suppressed": held or None})
