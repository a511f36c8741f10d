"""Requests run on the event loop are answered only once the state they owe is on disk, a plaintext before its own
commit, which starts by itself (an in-process agent server whose store commits can be held)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.client import AgentClient, AgentError
from agent.daemon.config import AgentConfig, Home
from agent.daemon.server import AgentServer
from agent.daemon.sessions import SessionManager
from agent.daemon.store import Store
from agent.pb.keyagent import agent_pb2 as pb
from backends.memory import MemoryKey
from tests.daemon.agentproc import PASSPHRASE, make_software_home, read_response, send_request
from tests.daemon.test_commit_waits import CommitGate
from tests.proof.common import home_backend
from tests.sessions.harness import Clock, Device, World


def _serve(tmp: Path, client: Callable[[str, SessionManager, CommitGate], None]) -> None:
    """Run an agent server on a software home in this thread while ``client`` talks to it from another."""
    home = make_software_home(tmp / "home")
    backend = home_backend(home, PASSPHRASE)
    backend.unlock(PASSPHRASE)
    opened: list[tuple[SessionManager, CommitGate]] = []

    def factory() -> SessionManager:
        store = Store(Home.at(home).state, backend.identity())
        manager = SessionManager(backend, store, clock=time.time_ns, rng=os.urandom)
        opened.append((manager, CommitGate(store)))
        return manager

    rundir = Path(tempfile.mkdtemp(prefix="kdur"))  # short: sun_path is 108 bytes
    sock = str(rundir / "agent.sock")
    server = AgentServer(home=Home.at(home), config=AgentConfig(), backend=backend, socket_path=sock,
                         session_factory=factory)
    errors: list[BaseException] = []

    def talk() -> None:
        try:
            manager, gate = opened[0]
            client(sock, manager, gate)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)
        finally:
            loop.call_soon_threadsafe(server.request_stop, "test done")

    async def main() -> None:
        global loop, serving
        loop, serving = asyncio.get_running_loop(), server
        await server.run(ready=lambda _: threading.Thread(target=talk, daemon=True).start())

    asyncio.run(main())
    if errors:
        raise errors[0]


loop: asyncio.AbstractEventLoop
serving: AgentServer


def _peer(tmp_path: Path, seed: bytes) -> Device:
    """An in-process peer device (its own store under ``tmp_path``), on real time like the agent."""
    (tmp_path / "peers").mkdir()
    world = World(tmp_path / "peers", Clock(time.time_ns()))
    return world.device("alice", MemoryKey(seed * 32))


def test_a_new_sessions_first_plaintext_is_answered_only_once_durable(tmp_path: Path) -> None:
    """The protection where rule 8 does not apply: the first message of a new session (its X3DH took our signed
    prekey) is not handed out while the decrypt's batch is still being committed."""
    alice = _peer(tmp_path, b"\x0a")

    def client(sock: str, manager: SessionManager, gate: CommitGate) -> None:
        with AgentClient(sock) as c:
            bob_id, bundle = c.identity().identity_public_key, c.bundle()
        m = alice.send(bob_id, b"secret", bundle)
        gate.close()  # every commit of the agent's store is held from now on
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(0.7)
        req = pb.Request(decrypt=pb.DecryptRequest(sender_identity=alice.identity, message=m.message))
        send_request(s, req.SerializeToString())
        assert gate.entered.wait(10)  # the decrypt ran and its batch is being committed
        try:
            early = s.recv(1)
        except TimeoutError:
            early = b""
        assert early == b"", "the plaintext was sent before the decrypt's state was durable"
        with AgentClient(sock) as c:  # meanwhile other clients are served (status from memory)
            assert c.status().sessions_open
        gate.open.set()
        s.settimeout(10)
        resp = read_response(s)
        s.close()
        assert resp is not None and resp.decrypt.payload == b"secret"
        assert manager.is_durable(manager._store.last_submitted())

    _serve(tmp_path, client)


def test_a_plaintext_is_answered_before_its_commit_which_starts_unasked(tmp_path: Path) -> None:
    """Rule 8 (sessions.py): a message on a known session is answered while its batch is still held, the commit
    of that batch starts by itself (no further request), and the confirm that builds on it is answered only once
    both are on disk."""
    alice = _peer(tmp_path, b"\x0c")

    def client(sock: str, manager: SessionManager, gate: CommitGate) -> None:
        with AgentClient(sock) as c:
            bob_id, bundle = c.identity().identity_public_key, c.bundle()
            first = c.decrypt(alice.identity, alice.send(bob_id, b"one", bundle).message)  # X3DH: waits
            c.confirm([first.confirm_ref])
            second = alice.send(bob_id, b"two")
            gate.close()
            got = c.decrypt(alice.identity, second.message)  # answered with every commit held
            assert got.payload == b"two"
            # within one gathering delay (5 ms), not at the next upkeep tick (_UPKEEP_INTERVAL) or the next waiter
            assert gate.entered.wait(1.0), "nobody started the commit of the decrypt's batch"
            assert not manager.is_durable(manager._store.last_submitted())
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(0.7)
        send_request(s, pb.Request(confirm=pb.ConfirmRequest(refs=[got.confirm_ref])).SerializeToString())
        try:
            early = s.recv(1)
        except TimeoutError:
            early = b""
        assert early == b"", "a confirm was answered before it was durable"
        gate.open.set()
        s.settimeout(10)
        resp = read_response(s)
        s.close()
        assert resp is not None and resp.WhichOneof("response") == "confirm"
        assert manager.is_durable(manager._store.last_submitted())

    _serve(tmp_path, client)


def test_a_background_commit_that_fails_leaves_the_agent_refusing_not_hanging(tmp_path: Path) -> None:
    """Rule 8's commit after the answer can fail (a full disk): the plaintext already answered stands (a crash would
    leave the same state), and every later request that needs the store is refused with a typed error, at once."""
    alice = _peer(tmp_path, b"\x0d")

    def client(sock: str, manager: SessionManager, gate: CommitGate) -> None:
        with AgentClient(sock, timeout=10) as c:
            bob_id, bundle = c.identity().identity_public_key, c.bundle()
            first = c.decrypt(alice.identity, alice.send(bob_id, b"one", bundle).message)  # X3DH: waits
            c.confirm([first.confirm_ref])
            store = manager._store

            def failing(batch: object) -> None:
                raise OSError(28, "No space left on device")

            setattr(store, "_commit", failing)
            assert c.decrypt(alice.identity, alice.send(bob_id, b"two").message).payload == b"two"
            deadline = time.monotonic() + 5
            while getattr(store, "_failed") is None and time.monotonic() < deadline:  # the commit ran and failed
                time.sleep(0.01)
            assert getattr(store, "_failed") is not None
            try:
                c.encrypt(alice.identity, b"after the failure")
            except AgentError as exc:
                assert exc.code not in ("TIMEOUT", "INTERNAL"), exc.code
            else:
                raise AssertionError("an encrypt was answered on a failed store")
            assert c.status() is not None  # still serving what needs no store

    _serve(tmp_path, client)


def test_answers_of_concurrent_loop_requests_share_commits(tmp_path: Path) -> None:
    """Decrypts from several clients, each run on the loop, are committed together, not one fsync each."""
    (tmp_path / "peers").mkdir()
    world = World(tmp_path / "peers", Clock(time.time_ns()))  # the agent runs on real time
    senders = [world.device(f"p{k}", MemoryKey(bytes([0x20 + k]) * 32)) for k in range(6)]

    def client(sock: str, manager: SessionManager, gate: CommitGate) -> None:
        with AgentClient(sock) as c:
            bob_id, bundle = c.identity().identity_public_key, c.bundle()
        messages = [p.send(bob_id, b"m%d" % i, bundle) for i, p in enumerate(senders)]
        before = manager._store.commits
        gate.close()
        conns = []
        for p, m in zip(senders, messages):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            send_request(s, pb.Request(decrypt=pb.DecryptRequest(sender_identity=p.identity,
                                                                 message=m.message)).SerializeToString())
            conns.append(s)
        assert gate.entered.wait(10)
        time.sleep(0.3)  # the others run meanwhile and queue behind the held commit
        gate.open.set()
        for i, s in enumerate(conns):
            s.settimeout(10)
            resp = read_response(s)
            s.close()
            assert resp is not None and resp.decrypt.payload == b"m%d" % i
        assert manager._store.commits - before <= 2, manager._store.commits - before

    _serve(tmp_path, client)


def test_a_client_pipelining_behind_a_held_commit_is_read_no_further_than_one_frame(tmp_path: Path) -> None:
    """Backpressure while an answer waits for its commit: reading goes on (no epoll change per request), but
    what the client sends meanwhile is buffered only up to one frame, then the agent stops reading; once the
    commit is through, every pipelined request is answered, in order."""
    alice = _peer(tmp_path, b"\x0b")
    status = pb.Request(status=pb.StatusRequest()).SerializeToString()
    flood = 4 * 1024 * 1024 // (len(status) + 4)  # 4 MiB of pipelined requests: far above one frame + a read

    def client(sock: str, manager: SessionManager, gate: CommitGate) -> None:
        with AgentClient(sock) as c:
            bob_id, bundle = c.identity().identity_public_key, c.bundle()
        m = alice.send(bob_id, b"secret", bundle)
        gate.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        send_request(s, pb.Request(decrypt=pb.DecryptRequest(sender_identity=alice.identity,
                                                             message=m.message)).SerializeToString())
        assert gate.entered.wait(10)
        frames = (len(status).to_bytes(4, "big") + status) * flood
        sender = threading.Thread(target=s.sendall, args=(frames,), daemon=True)
        sender.start()  # blocks once the kernel's buffers are full: the agent stopped reading
        try:
            time.sleep(0.5)
            held = [conn.frames.buffered for conn in list(serving._conns) if conn.request is not None]
            assert len(held) == 1
            limit = serving.config.max_frame + 4 + 256 * 1024  # one frame, plus at most one read of the transport
            assert held[0] <= limit, f"{held[0]} bytes buffered behind a held commit"
            assert sender.is_alive()  # the rest waits in the kernel: nothing more was read
        finally:
            gate.open.set()
        s.settimeout(20)
        first = read_response(s)
        assert first is not None and first.decrypt.payload == b"secret"
        for _ in range(flood):
            r = read_response(s)
            assert r is not None and r.WhichOneof("response") == "status"
        sender.join(20)
        assert not sender.is_alive()
        s.close()

    _serve(tmp_path, client)
