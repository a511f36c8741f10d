"""A locked agent answers ``bundle`` with the last bundle it signed and signs nothing, even when a fresh bundle
is due (the refresh interval passed, or the prekey rotation): the identity key is not used while locked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.core.keyops import KeyOps
from agent.daemon.agent_lock import LockManager
from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, Home
from agent.daemon.handler_api import ClientContext
from agent.daemon.peercred import PeerCred
from agent.daemon.service import Service
from agent.daemon.sessions import SessionManager
from agent.daemon.store import Store
from agent.pb.keyagent import agent_pb2 as pb
from backends.memory import MemoryKey
from tests.sessions.harness import DAY, HOUR, Clock, MemoryBackend


class CountingKey:
    """The identity key, counting its signatures."""

    def __init__(self, inner: MemoryKey) -> None:
        self.inner, self.signs = inner, 0

    def public_key(self) -> bytes:
        return self.inner.public_key()

    def sign(self, digest: bytes) -> bytes:
        self.signs += 1
        return self.inner.sign(digest)

    def dh(self, peer_public: bytes) -> bytes:
        return self.inner.dh(peer_public)


def test_locked_bundle_is_the_last_signed_one(tmp_path: Path) -> None:
    ik = CountingKey(MemoryKey(b"5" * 32))
    backend = MemoryBackend(ik)  # type: ignore[arg-type]
    clock = Clock()

    def factory() -> SessionManager:
        return SessionManager(backend, Store(tmp_path / "state.db", ik), clock=clock, rng=os.urandom)

    svc = Service(home=Home.at(tmp_path), config=AgentConfig(), backend=backend,  # type: ignore[arg-type]
                  lock=LockManager(backend), audit=AuditLog(tmp_path / "audit.log"),  # type: ignore[arg-type]
                  executor=ThreadPoolExecutor(1), sessions=factory, socket_path="x",
                  on_stop=lambda: None, on_release=lambda: None)
    ctx = ClientContext(PeerCred(os.getpid(), os.getuid(), os.getgid()), "/bin/test", 1, True)
    bundle = pb.Request(bundle=pb.BundleRequest())
    try:
        first, _ = svc.process(bundle, ctx)
        assert first.WhichOneof("response") == "bundle"
        svc.process(pb.Request(lock=pb.LockRequest(password="pw")), ctx)
        signs = ik.signs
        clock.advance(2 * DAY + HOUR)  # a refresh and a rotation are both due now
        svc.maintain()
        locked, fields = svc.process(bundle, ctx)
        assert locked.bundle.bundle == first.bundle.bundle
        assert ik.signs == signs and fields["key"] == ""
        svc.process(pb.Request(unlock=pb.UnlockRequest(secret="pw")), ctx)
        fresh, _ = svc.process(bundle, ctx)
        assert fresh.bundle.bundle != first.bundle.bundle and ik.signs > signs  # unlocked: re-signed at once
    finally:
        svc.close()
        svc.audit.close()
