"""Scenario harness: several SessionManagers (one home each) over an in-process transport.

Each device has its own home directory and SQLite store; devices of one identity share the identity key
(as one token would be shared by restoring the same account). The backend is an in-memory implementation of
the Backend protocol that records which signed prekeys were destroyed; one scenario uses the real software
backend (key file) so that keys survive a process restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.core.bundle import sign_bundle
from agent.core.keyops import KeyOps
from agent.core.wire import decode_protocol_message, encode, pb, protocol_message
from agent.daemon.sessions import DecryptResult, EncryptResult, NoSession, SessionManager
from agent.daemon.store import Store
from backends.base import BackendStatus, SignedPrekeyInfo
from backends.errors import KeyExists, KeyNotFound
from backends.memory import MemoryKey

HOUR = 3600 * 10**9
DAY = 24 * HOUR


class MemoryBackend:
    """The Backend protocol over in-process keys; ``destroyed`` lists destroyed SPK versions."""

    kind = "memory"

    def __init__(self, identity: MemoryKey) -> None:
        self._ik = identity
        self.spks: dict[int, MemoryKey] = {}
        self.destroyed: list[int] = []

    def identity(self) -> KeyOps:
        return self._ik

    def create_signed_prekey(self, version: int) -> KeyOps:
        if version in self.spks:
            raise KeyExists(str(version))
        self.spks[version] = MemoryKey.generate()
        return self.spks[version]

    def signed_prekey(self, version: int) -> KeyOps:
        try:
            return self.spks[version]
        except KeyError:
            raise KeyNotFound(str(version)) from None

    def list_signed_prekeys(self) -> list[SignedPrekeyInfo]:
        return [SignedPrekeyInfo(v, k.public_key()) for v, k in sorted(self.spks.items())]

    def destroy_signed_prekey(self, version: int) -> None:
        if version not in self.spks:
            raise KeyNotFound(str(version))
        del self.spks[version]
        self.destroyed.append(version)

    def status(self) -> BackendStatus:
        return BackendStatus("memory", True, True, self._ik.public_key(), "memory")

    def release(self) -> None:
        pass

    def lock(self) -> None:
        pass

    def unlock(self, secret: str, *, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    """A simulated nanosecond clock that only moves when a test says so."""

    def __init__(self, start: int = 1_700_000_000 * 10**9) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1  # strictly increasing, like a real clock between calls
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


@dataclass
class Device:
    name: str
    mgr: SessionManager
    backend: MemoryBackend
    home: Path
    inbox: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def identity(self) -> bytes:
        return self.mgr.identity

    @property
    def iid(self) -> str:
        return self.mgr.installation_id

    def send(self, to: "Device | bytes", text: bytes, bundle: bytes | None = None) -> EncryptResult:
        peer = to.identity if isinstance(to, Device) else to
        return self.mgr.encrypt(peer, text, bundle)

    def recv(self, sender: "Device | bytes", message: bytes) -> DecryptResult | NoSession:
        ident = sender.identity if isinstance(sender, Device) else sender
        try:
            return self.mgr.decrypt(ident, message)
        except NoSession as e:
            return e


@dataclass
class World:
    tmp: Path
    clock: Clock
    seed: int = 1
    devices: list[Device] = field(default_factory=list)

    def rng(self, name: str) -> Callable[[int], bytes]:
        r = random.Random(f"{self.seed}/{name}")
        return r.randbytes

    def device(self, name: str, key: MemoryKey, **kw: object) -> Device:
        home = self.tmp / name
        home.mkdir()
        backend = MemoryBackend(key)
        store = Store(home / "state.db", key, rng=self.rng(name + "/store"))
        mgr = SessionManager(backend, store, clock=self.clock, rng=self.rng(name), **kw)  # type: ignore[arg-type]
        dev = Device(name, mgr, backend, home)
        self.devices.append(dev)
        return dev

    def reopen(self, dev: Device, *, crash: bool, **kw: object) -> Device:
        """Restart a device on its home: after a clean close, or as if killed (no close)."""
        if not crash:
            dev.mgr.close()
        store = Store(dev.home / "state.db", dev.backend.identity(), rng=self.rng(dev.name + "/store2"))
        dev.mgr = SessionManager(dev.backend, store, clock=self.clock, rng=self.rng(dev.name + "/2"),
                                 **kw)  # type: ignore[arg-type]
        return dev


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, Clock())


def entries(message: bytes) -> dict[str, pb.EncryptedMessageProtocol]:
    """The per-installation entries of a ProtocolMessage."""
    return dict(decode_protocol_message(message).encrypted_message)


def pair(a: Device, b: Device) -> None:
    """Pair two devices of one identity the way the spec does: bundles exchanged, approved on both sides."""
    a.mgr.add_peer_bundle(b.mgr.our_bundle())
    b.mgr.add_peer_bundle(a.mgr.our_bundle())
    a.mgr.approve_device(b.iid)
    b.mgr.approve_device(a.iid)


def public_from(world: World, key: MemoryKey, text: bytes) -> bytes:
    """A public message from ``key`` with a bundle it signed itself (what anyone can make with a fresh key)."""
    iid = key.public_key().hex()[2:10] + "-0000-4000-8000-000000000000"
    spk = MemoryKey(bytes(reversed(key.public_key()[1:]))).public_key()
    bundle = sign_bundle(key, {iid: (spk, 1, 1)}, world.clock.now)
    return encode(protocol_message(iid, bundles=[bundle], public_message=text))
