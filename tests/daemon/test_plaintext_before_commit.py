"""Rule 8 (agent/daemon/sessions.py) against a real agent process: a plaintext is answered before its commit, and a
kill -9 in between loses nothing. The message decrypts again to the same payload after the restart (from the
ratchet state before it, since its kept key never reached the disk), a confirm then holds, and the conversation
goes on. The kill comes right after the answer, well inside the 5 ms the commit thread waits to gather batches;
the test checks on a copy of the crashed database that the decrypt really was lost (at least once in a few
tries), so it cannot pass without exercising the path."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from agent.client import AgentClient, AgentError
from agent.core.ratchet import Ratchet
from agent.daemon.config import Home
from agent.daemon.store import Store
from backends.memory import MemoryKey
from tests.daemon.agentproc import PASSPHRASE, AgentFactory
from tests.proof.common import home_backend
from tests.sessions.harness import Clock, World


def _kept_on_disk(home: Path, ref: bytes, scratch: Path) -> bool:
    """Whether the crashed home's database (a copy: the restart must see the files untouched) keeps the message
    key ``ref`` names (confirm_ref = tag ‖ session id 16 ‖ ratchet key 33 ‖ n 4)."""
    sid, dh, n = ref[1:17], ref[17:50], int.from_bytes(ref[50:54], "big")
    state = Home.at(home).state
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for suffix in ("", "-wal"):
        src = Path(str(state) + suffix)
        if src.exists():
            shutil.copyfile(src, scratch / ("state.db" + suffix))
    backend = home_backend(home, PASSPHRASE)
    backend.unlock(PASSPHRASE)
    store = Store(scratch / "state.db", backend.identity())
    try:
        peer = store.session_peer(sid)
        if peer is None:
            return False
        rec = next(r for r in store.load_peer_sessions(*peer) if r.sid == sid)
        return Ratchet.from_bytes(rec.state).has_message_key(dh, n)
    finally:
        store.close()
        backend.close()


def test_a_kill_between_a_plaintext_and_its_commit_loses_nothing(agents: AgentFactory, tmp_path: Path) -> None:
    (tmp_path / "peers").mkdir()
    world = World(tmp_path / "peers", Clock(time.time_ns()))
    peer = world.device("peer", MemoryKey(b"\x0e" * 32))
    a = agents.new()
    a.start()
    with AgentClient(a.sock) as c:
        me, bundle = c.identity().identity_public_key, c.bundle()
        first = c.decrypt(peer.identity, peer.send(me, b"first", bundle).message)  # X3DH: waits for its commit
        c.confirm([first.confirm_ref])
    lost = 0
    for attempt in range(5):
        text = b"answered before its commit %d" % attempt
        m = peer.send(me, text).message
        with AgentClient(a.sock) as c:
            got = c.decrypt(peer.identity, m)
            os.kill(a.pid, signal.SIGKILL)  # at once: the commit thread is still gathering (5 ms); no clean stop
        assert a.wait_exit(30)
        assert got.payload == text
        if not _kept_on_disk(a.home, got.confirm_ref, tmp_path / "copy"):
            lost += 1
        a.start()
        with AgentClient(a.sock) as c:
            again = c.decrypt(peer.identity, m)  # the same message, delivered again after the crash
            assert again.payload == text
            c.confirm([again.confirm_ref])
            with pytest.raises(AgentError) as gone:
                c.decrypt(peer.identity, m)  # confirmed (and durable): no longer decrypts
            assert gone.value.code == "DECRYPT_FAILED"
            after = peer.send(me, b"and the next one")
            assert c.decrypt(peer.identity, after.message).payload == b"and the next one"
        if lost:
            break
    assert lost, "the kill never came before the decrypt's commit: the path under test was not exercised"
