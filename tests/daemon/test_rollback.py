"""Rollback detection with real agents (issue 15): a restored or copied home never sends a message key twice.

The attack from the issue: copy the home, send, restore the copy, send again: two plaintexts went out under one
(ratchet key, n). Here every message the token agent sends is recorded as the (ratchet key, n) pairs of its
entries; after each restore the next message must use none of them, the peer must still read everything, and
the agent must say why it re-keyed (status, audit). The anchor is a data object on the SoftHSM2 token
(agent/daemon/rollback.py); OpenSC's pkcs11-tool, a client we did not write, counts it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from agent.client import AgentError
from agent.core.wire import decode_protocol_message
from tests.daemon.agentproc import KEYAGENT, AgentFactory, AgentProc, make_token_home
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken

pytestmark = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")

@pytest.fixture
def token() -> Iterator[SoftHSMToken]:
    with SoftHSMToken() as tok:
        yield tok


def _token_agent(agents: AgentFactory, tok: SoftHSMToken, home: Path | None = None) -> AgentProc:
    if home is None:
        home = make_token_home(agents.root / f"token-home-{len(agents.agents)}", tok.module, tok.label, tok.pin,
                               tok.env)
    agent = agents.new(home=home)
    agent.extra_env["SOFTHSM2_CONF"] = tok.conf
    agent.extra_env["KEYAGENT_PIN"] = tok.pin
    return agent


def _start(agent: AgentProc) -> None:
    if "KEYAGENT_PIN" in agent.extra_env:
        agent.start(passphrase=None)
    else:
        agent.start()


class Peer:
    """Bob: a software agent that reads what the token agent sends."""

    def __init__(self, agent: AgentProc) -> None:
        self.agent = agent
        agent.start()
        self.pub = agent.identity().identity_public_key
        with agent.client() as c:
            self.bundle = c.bundle()

    def read(self, sender: bytes, message: bytes) -> bytes:
        with self.agent.client() as c:
            return c.decrypt(sender, message).payload


def _keys(message: bytes) -> set[tuple[bytes, int]]:
    """The (ratchet key, n) of every ratcheted entry: what names a message key."""
    m = decode_protocol_message(message)
    out = {(e.DR_header.key, e.DR_header.n) for e in m.encrypted_message.values() if e.HasField("DR_header")}
    assert out, "the message was not ratcheted"
    return out


def _send(agent: AgentProc, peer: Peer, text: bytes, used: set[tuple[bytes, int]]) -> bytes:
    with agent.client() as c:
        message = c.encrypt(peer.pub, text, peer_bundle=peer.bundle).message
    keys = _keys(message)
    assert not keys & used, f"a message key was used twice: {keys & used}"
    used |= keys
    return message


def _copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)


def _hard_kill(agent: AgentProc) -> None:
    os.kill(agent.pid, signal.SIGKILL)
    assert agent.wait_exit(10)


def _doctor(agent: AgentProc) -> str:
    cp = subprocess.run([*KEYAGENT, "--home", str(agent.home), "doctor", "--check", "anchor"], env=agent.env,
                        capture_output=True, text=True, timeout=60)
    return cp.stdout + cp.stderr


def _anchor_objects(tok: SoftHSMToken) -> list[str]:
    cp = tok.pkcs11_tool("--list-objects", "--type", "data", login=True)
    return [line for line in cp.splitlines() if "keyagent-anchor-" in line]


@pytest.mark.parametrize("while_running", [False, True], ids=["copy-while-stopped", "copy-while-running"])
def test_a_restored_copy_of_the_home_re_keys_and_never_reuses_a_message_key(
        agents: AgentFactory, token: SoftHSMToken, while_running: bool) -> None:
    alice, bob = _token_agent(agents, token), Peer(agents.new())
    used: set[tuple[bytes, int]] = set()
    _start(alice)
    a_pub = alice.identity().identity_public_key
    sent = [_send(alice, bob, b"before the copy", used)]
    snapshot = agents.root / "snapshot"
    if not while_running:
        alice.kill()  # SIGTERM: a clean stop
    _copy(alice.home, snapshot)  # a backup, or a filesystem snapshot of the running agent
    if not while_running:
        _start(alice)
    sent += [_send(alice, bob, b"after the copy %d" % i, used) for i in range(3)]
    alice.kill()
    _copy(snapshot, alice.home)  # the restore
    _start(alice)
    sent += [_send(alice, bob, b"after the restore %d" % i, used) for i in range(3)]  # _send checks no reuse
    with alice.client() as c:
        st = c.status()
    assert st.rekeyed and "older than its anchor" in st.rekeyed and st.anchor == "token"
    assert [bob.read(a_pub, m) for m in sent] == [
        b"before the copy", *[b"after the copy %d" % i for i in range(3)], *[b"after the restore %d" % i for i in range(3)]]
    rekeys = [line for line in alice.audit_lines() if line.get("type") == "rekey"]
    assert len(rekeys) == 1 and "older than its anchor" in rekeys[0]["detail"]
    assert "re-keying every session" in (alice.home / "agent.log").read_text()


def test_a_copy_started_beside_the_original_takes_over_and_the_original_refuses_to_send(
        agents: AgentFactory, token: SoftHSMToken) -> None:
    alice, bob = _token_agent(agents, token), Peer(agents.new())
    used: set[tuple[bytes, int]] = set()
    _start(alice)
    a_pub = alice.identity().identity_public_key
    first = _send(alice, bob, b"one", used)
    copy = _token_agent(agents, token, home=agents.root / "alice-copy")
    _copy(alice.home, copy.home)
    _start(copy)  # same token, same identity and installation, its own socket
    with copy.client() as c:
        assert "did not stop cleanly" in c.status().rekeyed  # the copy's store said "running"
    from_copy = _send(copy, bob, b"from the copy", used)  # a fresh X3DH: none of alice's keys
    time.sleep(2.2)  # the original reads the anchor again at most every 2 s
    with alice.client() as c:
        with pytest.raises(AgentError) as err:
            c.encrypt(bob.pub, b"two", peer_bundle=bob.bundle)
        assert err.value.code == "SUPERSEDED" and "copy" in err.value.message
        assert c.status().superseded
    assert "FAIL" in _doctor(alice) and "copy of this home" in _doctor(alice)  # no more "all OK"
    assert "re-keyed every session" in _doctor(copy)
    assert bob.read(a_pub, first) == b"one" and bob.read(a_pub, from_copy) == b"from the copy"
    # the original stops without touching the anchor that is no longer its own; the copy goes on
    alice.kill()
    _send(copy, bob, b"still the copy", used)
    copy.kill()
    _start(copy)
    with copy.client() as c:
        assert c.status().rekeyed == ""  # its own clean stop: nothing to re-key


def test_a_clean_stop_keeps_the_sessions_and_costs_two_token_writes_per_run(
        agents: AgentFactory, token: SoftHSMToken) -> None:
    alice, bob = _token_agent(agents, token), Peer(agents.new())
    used: set[tuple[bytes, int]] = set()
    epochs = []
    ratchet_keys = []
    for run in range(3):
        _start(alice)
        ratchet_keys.append({k for k, _ in _keys(_send(alice, bob, b"run %d" % run, used))})
        with alice.client() as c:
            st = c.status()
        assert st.rekeyed == "" and st.anchor == "token"
        epochs.append(st.anchor_epoch)
        alice.kill()
        # offline, doctor knows the anchor is on the token (it needs the PIN), not a missing anchor file
        assert "token's anchor needs the PIN" in _doctor(alice)
    assert epochs == [1, 3, 5]  # +1 at each start and +1 at each clean stop: two token writes per run
    assert len(_anchor_objects(token)) == 1  # a write replaces the object (create, then destroy the old one)
    assert ratchet_keys[0] == ratchet_keys[1] == ratchet_keys[2]  # the same session all along


def test_kill_9_re_keys_at_the_next_start_and_the_peer_reads_everything(
        agents: AgentFactory, token: SoftHSMToken) -> None:
    alice, bob = _token_agent(agents, token), Peer(agents.new())
    used: set[tuple[bytes, int]] = set()
    _start(alice)
    a_pub = alice.identity().identity_public_key
    sent = [_send(alice, bob, b"before the crash", used)]
    _hard_kill(alice)
    _start(alice)
    with alice.client() as c:
        assert "did not stop cleanly" in c.status().rekeyed
    sent.append(_send(alice, bob, b"after the crash", used))
    assert [bob.read(a_pub, m) for m in sent] == [b"before the crash", b"after the crash"]


def test_a_removed_token_anchor_re_keys(agents: AgentFactory, token: SoftHSMToken) -> None:
    alice, bob = _token_agent(agents, token), Peer(agents.new())
    used: set[tuple[bytes, int]] = set()
    _start(alice)
    _send(alice, bob, b"one", used)
    alice.kill()
    (label,) = [line.split("'")[1] for line in _anchor_objects(token)]
    token.pkcs11_tool("--delete-object", "--type", "data", "--label", label, login=True)
    _start(alice)
    with alice.client() as c:
        assert "missing" in c.status().rekeyed
    _send(alice, bob, b"two", used)


def test_a_key_file_home_restored_on_its_own_is_caught_by_the_anchor_outside_the_home(
        agents: AgentFactory, tmp_path: Path) -> None:
    """What the key-file anchor can see: a home restored or copied without ``$XDG_STATE_HOME`` (here: the
    agent's own state dir) is caught; a restore of both is the documented limit (no token, nothing to hold on)."""
    state = tmp_path / "state"
    alice, bob = agents.new(), Peer(agents.new())
    alice.extra_env["XDG_STATE_HOME"] = str(state)
    used: set[tuple[bytes, int]] = set()
    _start(alice)
    _send(alice, bob, b"one", used)
    alice.kill()
    snapshot, state_snapshot = tmp_path / "home-copy", tmp_path / "state-copy"
    _copy(alice.home, snapshot)
    _copy(state, state_snapshot)
    _start(alice)
    _send(alice, bob, b"two", used)
    alice.kill()
    _copy(snapshot, alice.home)  # the home alone goes back
    assert "next start will re-key" in _doctor(alice)  # offline: store and anchor file compared
    _start(alice)
    _send(alice, bob, b"three", used)
    with alice.client() as c:
        st = c.status()
    assert st.anchor == "file" and "older than its anchor" in st.rekeyed
    alice.kill()
    # the limit: home and anchor restored together look like a clean stop
    _copy(snapshot, alice.home)
    _copy(state_snapshot, state)
    _start(alice)
    with alice.client() as c:
        assert c.status().rekeyed == ""
    anchors = list((state / "keyagent" / "anchors").iterdir())
    assert len(anchors) == 1 and (anchors[0].stat().st_mode & 0o077) == 0
