"""The asyncio Unix-socket server: framing, peer credentials, limits, signals and shutdown.

Frames are a 4-byte big-endian length and one protobuf message (ssh-agent's framing without the type byte: the
type is the Request oneof). A length of 0 or above ``max_frame`` closes the connection, as does a frame that
does not parse; nothing a client sends can affect another connection. Limits, so one client cannot starve the
agent: ``max_connections`` (further connections are closed at once), one request at a time per connection (the
next frame is not read until the reply is written: backpressure), ``frame_timeout`` from a frame's first byte to
its last (slow-loris), ``idle_timeout`` between frames (0 = none) and ``request_timeout`` per request.

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
import struct
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from google.protobuf.message import DecodeError

from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, Home
from agent.daemon.lock import LockManager
from agent.daemon.peercred import PeerPolicy, exe_of, peer_cred
from agent.daemon.service import ClientContext, Service, SessionFactory, default_session_factory
from agent.daemon.socketdir import ClaimedSocket, claim_socket
from agent.daemon.token_gate import BUSY_BACKOFF
from agent.pb.keyagent import agent_pb2 as pb
from backends.base import Backend

__all__ = ["AgentServer", "read_frame", "encode_frame", "FrameError"]

log = logging.getLogger("keyagent.server")

_LEN = struct.Struct(">I")
#: Seconds between idle upkeep runs (SPK rotation is due every 24 h; requests also trigger it).
_UPKEEP_INTERVAL = 600.0


class FrameError(Exception):
    """A frame that breaks the framing rules; the connection is closed."""


def encode_frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


async def read_frame(
    reader: asyncio.StreamReader, *, max_frame: int, frame_timeout: float, idle_timeout: float
) -> bytes | None:
    """Read one frame; None at a clean end of stream. Raises FrameError / asyncio.TimeoutError to close."""
    try:
        if idle_timeout > 0:
            first = await asyncio.wait_for(reader.readexactly(1), idle_timeout)
        else:
            first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None  # closed between frames: the normal way to hang up

    try:
        async with asyncio.timeout(frame_timeout):  # no extra task per frame (wait_for would make one)
            head = first + await reader.readexactly(3)
            (length,) = _LEN.unpack(head)
            if length == 0 or length > max_frame:
                raise FrameError(f"frame length {length} outside 1..{max_frame}")
            return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError("truncated frame") from exc


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
        self._active = 0
        self._next_conn = 0
        self._stop: asyncio.Event | None = None
        self._exit_reason = "stopped"
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections between reading a request and replying

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
        release = getattr(self.backend, "release", None)
        if callable(release):
            release()
        else:  # a backend without a separate release: forgetting the secret is the closest equivalent
            self.backend.lock()
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
        audit = AuditLog(self.home.audit)
        self.service = Service(
            home=self.home, config=self.config, backend=self.backend, lock=self.lock, audit=audit,
            executor=executor, sessions=self._factory, socket_path=self.socket_path,
            on_stop=lambda: self._stop_soon(loop),
            on_release=self.release_token, connections=lambda: self._active,
        )
        server: asyncio.base_events.Server | None = None
        try:
            await loop.run_in_executor(executor, self.service.try_open_sessions)
            server = await asyncio.start_unix_server(self._on_client, sock=sock)
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
            if server is not None:
                server.close()
            await self._drain_connections()
            if claimed is not None:
                claimed.release()
            executor.shutdown(wait=True)
            try:
                self.service.close()
            finally:
                self.backend.close()
                audit.close()
        log.info("agent stopped: %s", self._exit_reason)
        return self._exit_reason

    async def _drain_connections(self) -> None:
        """Cancel idle connections at once; let ones mid-request finish their reply (bounded wait)."""
        for task in list(self._tasks - self._busy):
            task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=min(5.0, self.config.request_timeout))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_client(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in one connection's handling must not go unlogged or touch the others
            log.exception("connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next_conn += 1
        conn = self._next_conn
        try:
            cred = peer_cred(writer.get_extra_info("socket"))
        except OSError:
            log.warning("conn %d: no peer credentials; closing", conn)
            return
        exe = exe_of(cred.pid)
        if not self.policy.allows(cred):
            log.warning("conn %d: refused uid=%d gid=%d pid=%d exe=%s", conn, cred.uid, cred.gid, cred.pid, exe)
            self.service.audit.record(cred, exe, type="connect", result="DENIED", conn=conn)
            return
        if self._active >= self.config.max_connections:
            log.warning("conn %d: too many connections (%d); closing", conn, self._active)
            self.service.audit.record(cred, exe, type="connect", result="BUSY", conn=conn)
            return
        self._active += 1
        ctx = ClientContext(cred=cred, exe=exe, conn=conn, owner=self.policy.is_owner(cred))
        try:
            await self._loop(reader, writer, ctx)
        finally:
            self._active -= 1

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ClientContext) -> None:
        cfg = self.config
        while True:
            try:
                frame = await read_frame(reader, max_frame=cfg.max_frame, frame_timeout=cfg.frame_timeout,
                                         idle_timeout=cfg.idle_timeout)
            except (FrameError, asyncio.TimeoutError) as exc:
                reason = str(exc) or "frame timeout"
                log.info("conn %d: closing: %s", ctx.conn, reason)
                self._audit_bad(ctx, "BAD_REQUEST", reason)
                return
            except ConnectionError:
                return
            if frame is None:
                return
            try:
                request = pb.Request.FromString(frame)
            except (DecodeError, RuntimeWarning, ValueError):
                log.info("conn %d: closing: frame is not a Request", ctx.conn)
                self._audit_bad(ctx, "BAD_REQUEST", "undecodable frame")
                await self._send(writer, pb.Response(error=pb.Error(
                    code=pb.Error.BAD_REQUEST, message="frame is not a keyagent Request")))
                return
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                response = await self.service.handle(request, ctx)
                sent = await self._send(writer, response)
            finally:
                self._busy.discard(task)
            if not sent:
                return
            if response.WhichOneof("response") == "error" and response.error.code == pb.Error.BUSY:
                await asyncio.sleep(BUSY_BACKOFF)  # answered at once; this connection's next request waits

    def _audit_bad(self, ctx: ClientContext, result: str, detail: str) -> None:
        self.service.audit.record(ctx.cred, ctx.exe, type="frame", result=result, conn=ctx.conn, detail=detail)

    async def _send(self, writer: asyncio.StreamWriter, response: pb.Response) -> bool:
        try:
            writer.write(encode_frame(response.SerializeToString()))
            if writer.transport.get_write_buffer_size():  # a slow reader: wait, bounded, for room
                async with asyncio.timeout(self.config.frame_timeout * 3):
                    await writer.drain()
            return True
        except (ConnectionError, asyncio.TimeoutError):
            return False
