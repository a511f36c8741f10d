"""A token-held identity behind the agent: a SoftHSM2 agent and a software agent converse through the CLI and the
Python client, two apps share the token agent concurrently, both agents restart and keep going, and the PIN
gates the token agent's lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from agent.client import AgentClient, AgentError
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory, AgentProc, make_token_home
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken

pytestmark = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")

@pytest.fixture
def token() -> Iterator[SoftHSMToken]:
    with SoftHSMToken() as tok:
        yield tok


def _token_agent(agents: AgentFactory, tok: SoftHSMToken) -> AgentProc:
    home = make_token_home(agents.root / f"token-home-{len(agents.agents)}", tok.module, tok.label, tok.pin, tok.env)
    (home / "agent.json").write_text(json.dumps(OWNER_SIGNS))  # these tests sign raw digests (opt-in)
    agent = agents.new(home=home)
    agent.extra_env["SOFTHSM2_CONF"] = tok.conf
    return agent


def _start_with_pin(agent: AgentProc, pin: str) -> None:
    agent.extra_env["KEYAGENT_PIN"] = pin
    try:
        agent.start(passphrase=None)
    finally:
        del agent.extra_env["KEYAGENT_PIN"]


def _cli(a: AgentProc, *args: str, input: bytes | None = None) -> bytes:
    cp = a.cli(*args, input=input)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_token_agent_and_software_agent_converse_and_survive_restarts(
    agents: AgentFactory, token: SoftHSMToken
) -> None:
    alice = _token_agent(agents, token)
    _start_with_pin(alice, token.pin)
    bob = agents.new()
    bob.start()
    st = json.loads(_cli(alice, "status", "--json"))
    assert st["backend"] == "pkcs11" and st["backend_unlocked"] and st["sessions_open"]

    a_id = json.loads(_cli(alice, "whoami", "--json"))["public_key"]
    b_id = json.loads(_cli(bob, "whoami", "--json"))["public_key"]
    bundle = agents.root / "alice.json"
    bundle.write_bytes(_cli(alice, "bundle", "--json"))
    m = _cli(bob, "encrypt", "--to", a_id, "--bundle", str(bundle), input=b"hello token")
    assert _cli(alice, "decrypt", "--from", b_id, input=m) == b"hello token"

    # two apps share the token-held identity at once, both talking to bob
    a33, b33 = bytes.fromhex(a_id[2:]), bytes.fromhex(b_id[2:])
    out: dict[int, list[bytes]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def app(k: int) -> None:
        try:
            with AgentClient(alice.sock) as c:
                for i in range(5):
                    out[k].append(c.encrypt(b33, f"app {k} msg {i}".encode()).message)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with AgentClient(bob.sock) as cb:
        for k in (0, 1):
            assert [cb.decrypt(a33, msg).payload for msg in out[k]] == [f"app {k} msg {i}".encode() for i in range(5)]

    for agent in (alice, bob):
        assert agent.cli("stop").returncode == 0
        assert agent.wait_exit()
    _start_with_pin(alice, token.pin)
    bob.start()
    with AgentClient(alice.sock) as ca, AgentClient(bob.sock) as cb:
        for i in range(3):
            r = cb.encrypt(a33, f"after restart {i}".encode())
            assert r.forward_secrecy
            assert ca.decrypt(b33, r.message).payload == f"after restart {i}".encode()
            back = ca.encrypt(b33, f"reply {i}".encode())
            assert cb.decrypt(a33, back.message).payload == f"reply {i}".encode()


def test_sighup_logs_out_of_the_token_and_the_cached_pin_logs_in_again(
        agents: AgentFactory, token: SoftHSMToken) -> None:
    alice = _token_agent(agents, token)
    _start_with_pin(alice, token.pin)
    with alice.client() as c:
        assert c.status().backend_unlocked
    os.kill(alice.pid, signal.SIGHUP)
    with alice.client() as c:
        for _ in range(200):  # the release runs on the token worker right after the signal
            if not c.status().backend_unlocked:
                break
            time.sleep(0.01)
        assert not c.status().backend_unlocked  # logged out: another program can have the token now
        assert len(c.sign(b"\x07" * 32)) == 65  # no unlock needed: the PIN is cached within its TTL
        assert c.status().backend_unlocked


def test_token_agent_lock_needs_the_pin(agents: AgentFactory, token: SoftHSMToken) -> None:
    alice = _token_agent(agents, token)
    _start_with_pin(alice, token.pin)
    with alice.client() as c:
        assert len(c.sign(b"\x07" * 32)) == 65
        c.lock()
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x07" * 32)
        assert ei.value.code == "LOCKED"
        with pytest.raises(AgentError) as ei:
            c.unlock("0000")
        assert ei.value.code == "PIN_INCORRECT"
        assert c.status().unlock_failures == 1
        c.unlock(token.pin)
        assert len(c.sign(b"\x07" * 32)) == 65


def test_token_agent_started_without_pin_asks_for_it(agents: AgentFactory, token: SoftHSMToken) -> None:
    alice = _token_agent(agents, token)
    alice.start(passphrase=None)
    with alice.client() as c:
        assert len(c.identity().identity_public_key) == 33
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x07" * 32)
        assert ei.value.code == "PIN_REQUIRED"
        c.unlock(token.pin)
        assert c.status().sessions_open
        assert len(c.sign(b"\x07" * 32)) == 65


def test_start_with_a_wrong_pin_fails_cleanly(agents: AgentFactory, token: SoftHSMToken) -> None:
    alice = _token_agent(agents, token)
    alice.extra_env["KEYAGENT_PIN"] = "9999"
    cp = alice.start(passphrase=None, check=False)
    assert cp.returncode == 1 and "PIN_INCORRECT" in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
