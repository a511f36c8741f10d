"""The Unix-socket server: peer credentials, limits, signals and shutdown.

Frames (agent/framing.py) are a 4-byte big-endian length and one protobuf message (ssh-agent's framing without the
type byte: the type is the Request oneof). A length of 0 or above ``max_frame`` closes the connection, as does a
frame that does not parse; nothing a client sends can affect another connection. Limits, so one client cannot
starve the agent: connection slots (agent/daemon/admission.py: ``max_connections``, a per-uid cap for uids other
than the owner's, slots reserved for the owner; a connection that gets no slot is closed at once), one request at a
time per connection (the next frame is not read until the reply is written: backpressure), ``frame_timeout`` from a
frame's first byte to its last (slow-loris), ``idle_timeout`` between frames (0 = none) and ``request_timeout`` per
request. Refused connections and broken frames from uids other than the owner's are logged at most
``refusal_log_burst`` times per ``refusal_log_window`` per uid (agent/daemon/throttle.py), so an outsider cannot fill
the logs with them.

Threads: asyncio runs the control side (accepting, signals, the socket watch, upkeep); each admitted connection
gets its own thread doing blocking I/O and running its requests inline. A request thus costs one thread wake-up
(the connection thread leaving ``recv``) instead of three (event loop, executor worker, event loop again); on this
VM that was ~250 µs of a ~275 µs status round trip. Per-request timeouts are kept by a watchdog thread: a request
still running past its limit gets a TIMEOUT answer at once, and its connection is closed when the work ends (its
late result is dropped; the state change it made, if any, is durable and harmless: see sessions.py).

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
from typing import Callable

from google.protobuf.message import DecodeError

from agent.daemon.admission import SlotPolicy, Slots, Verdict
from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, Home
from agent.daemon.agent_lock import LockManager
from agent.daemon.peercred import PeerPolicy, exe_of, peer_cred
from agent.daemon.service import ClientContext, Service, SessionFactory, default_session_factory
from agent.daemon.logcap import cap  # length only: the log formatter escapes
from agent.daemon.socketdir import ClaimedSocket, claim_socket
from agent.daemon.throttle import Throttle
from agent.daemon.token_gate import BUSY_BACKOFF
from agent.framing import FrameError, FrameReader, encode_frame
from agent.pb.keyagent import agent_pb2 as pb
from backends.base import Backend

__all__ = ["AgentServer"]

log = logging.getLogger("keyagent.server")

#: Seconds between idle upkeep runs (SPK rotation is due every 24 h; requests also trigger it).
_UPKEEP_INTERVAL = 600.0
#: Seconds between watchdog scans for requests past their time limit (the TIMEOUT answer is this late at most).
_WATCHDOG_TICK = 0.1


class _Connection:
    """One admitted client: its socket, its thread, and the state the watchdog needs."""

    def __init__(self, server: "AgentServer", sock: socket.socket, ctx: ClientContext) -> None:
        self.server = server
        self.sock = sock
        self.ctx = ctx
        self.send_mu = threading.Lock()  # one writer at a time: this thread, or the watchdog's TIMEOUT answer
        self.request: pb.Request | None = None  # running request (None between requests)
        self.started = 0.0
        self.deadline = 0.0
        self.timed_out = False
        self.thread = threading.Thread(target=self.run, name=f"keyagent-conn-{ctx.conn}", daemon=True)

    def run(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug in one connection's handling must not go unlogged or touch the others
            log.exception("conn %d failed", self.ctx.conn)
        finally:
            self.server._forget(self)
            try:
                self.sock.close()
            except OSError:
                pass

    def _serve(self) -> None:
        server, ctx, cfg = self.server, self.ctx, self.server.config
        reader = FrameReader(self.sock, max_frame=cfg.max_frame, frame_timeout=cfg.frame_timeout,
                             idle_timeout=cfg.idle_timeout)
        service = server.service
        while not server.stopping:
            try:
                frame = reader.read()
            except FrameError as exc:
                server._bad_frame(ctx, str(exc))
                return
            except OSError:
                return
            if frame is None:
                return
            try:
                request = pb.Request.FromString(frame)
            except (DecodeError, RuntimeWarning, ValueError):
                server._bad_frame(ctx, "undecodable frame")
                self._send(pb.Response(error=pb.Error(code=pb.Error.BAD_REQUEST,
                                                      message="frame is not a keyagent Request")))
                return
            with self.send_mu:
                self.request, self.started = request, time.monotonic()
                self.deadline = self.started + service.limit(request.WhichOneof("request"))
            response, fields = service.process(request, ctx)
            with self.send_mu:
                self.request = None
                if self.timed_out:  # the watchdog answered TIMEOUT (and audited it); the result is dropped
                    return
                service.record(ctx, fields)  # audited before the client can see the answer
                sent = self._send(response)
            if not sent:
                return
            if response.WhichOneof("response") == "error" and response.error.code == pb.Error.BUSY:
                time.sleep(BUSY_BACKOFF)  # answered at once; this connection's next request waits

    def _send(self, response: pb.Response) -> bool:
        """Write one response frame (caller holds send_mu or is the only writer); False if the client is gone."""
        try:
            self.sock.settimeout(self.server.config.frame_timeout * 3)  # a client that never reads is dropped
            self.sock.sendall(encode_frame(response.SerializeToString()))
            return True
        except OSError:
            return False

    def expire(self, now: float) -> None:
        """Watchdog: answer TIMEOUT if the running request is past its limit (the connection ends after it)."""
        if not self.send_mu.acquire(blocking=False):
            return  # the connection thread is sending right now: it is not stuck
        try:
            request = self.request
            if request is None or self.timed_out or now < self.deadline:
                return
            self.timed_out = True
            response, fields = self.server.service.timeout_response(request, self.ctx, self.started)
            log.warning("conn %d: %s request timed out", self.ctx.conn, request.WhichOneof("request"))
            self.server.service.record(self.ctx, fields)
            self._send(response)
        finally:
            self.send_mu.release()

    def shutdown(self) -> None:
        """Unblock the thread's recv/send (stop)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


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
        self._throttle_mu = threading.Lock()
        self.stopping = False

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
        accepting = False
        watchdog = threading.Thread(target=self._watchdog, name="keyagent-watchdog", daemon=True)
        try:
            await loop.run_in_executor(executor, self.service.try_open_sessions)
            loop.add_reader(sock.fileno(), self._accept, sock)
            accepting = True
            watchdog.start()
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
            await loop.run_in_executor(None, self._drain_connections)
            if watchdog.is_alive():
                watchdog.join()
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

    def _drain_connections(self) -> None:
        """Close idle connections at once; let ones mid-request finish their reply (bounded wait), then close all."""
        with self._conns_mu:
            conns = list(self._conns)
        for conn in conns:
            if conn.request is None:
                conn.shutdown()
        deadline = time.monotonic() + min(5.0, self.config.request_timeout)
        for conn in conns:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.shutdown()
            conn.thread.join(1.0)

    def _watchdog(self) -> None:
        """Answer TIMEOUT for requests past their limit (see :meth:`_Connection.expire`)."""
        while not self.stopping:
            time.sleep(_WATCHDOG_TICK)
            now = time.monotonic()
            with self._conns_mu:
                busy = [c for c in self._conns if c.request is not None and now >= c.deadline]
            for conn in busy:
                conn.expire(now)

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
        sock.setblocking(True)
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
            conn = _Connection(self, sock, ctx) if verdict is Verdict.ADMIT else None
            if conn is not None:
                self._conns.add(conn)
        if conn is None:
            self._refused(ctx, "BUSY", "per-uid connection cap" if verdict is Verdict.UID_FULL
                          else "too many connections")
            sock.close()  # after the audit line, so a client that saw the close finds it recorded
            return
        conn.thread.start()

    def _quiet(self, ctx: ClientContext, kind: str) -> tuple[bool, int]:
        """Whether to log this refusal/broken frame (owner: always) and how many were held back before it."""
        if ctx.owner:
            return True, 0
        with self._throttle_mu:
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
