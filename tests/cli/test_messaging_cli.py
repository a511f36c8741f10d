"""Messaging commands as a newcomer meets them (issue 19): no silent encrypt to a mistyped key, no binary on a
terminal, replies and duplicates said plainly. Two real agents, the real CLI (a pty where a terminal matters)."""

from __future__ import annotations

import json
import os
import pty
import subprocess

from agent.core.identity import zq3_encode
from tests.daemon.agentproc import KEYAGENT, AgentFactory, AgentProc


def _on_tty(agent: AgentProc, *args: str, input: bytes = b"x") -> tuple[int, bytes, bytes]:
    """Run the CLI with stdout on a pseudo-terminal (stdin piped): what a person at a shell sees."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*KEYAGENT, *args], stdin=subprocess.PIPE, stdout=slave, stderr=subprocess.PIPE,
                                env=dict(agent.env, KEYAGENT_SOCK=agent.sock))
        os.close(slave)
        _, err = proc.communicate(input, timeout=60)
        out = b""
        try:
            while chunk := os.read(master, 4096):
                out += chunk
        except OSError:
            pass
        return proc.returncode, out, err
    finally:
        os.close(master)


def _typo(zq3: str) -> str:
    """The key with one letter changed (still a valid base58 string of a valid point, or not: either is a typo)."""
    for i in range(len(zq3) - 1, 4, -1):
        for c in "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz":
            if c == zq3[i]:
                continue
            cand = zq3[:i] + c + zq3[i + 1:]
            try:
                from agent.core.identity import parse_peer_identity

                parse_peer_identity(cand)
                return cand
            except ValueError:
                continue
    raise AssertionError("no typo that parses")


def test_encrypt_to_a_never_seen_key_needs_new_peer(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    alice.start()
    bob.start()
    b_zq3 = json.loads(bob.cli("whoami", "--json").stdout)["compressed_key"]
    typo = _typo(b_zq3)
    cp = alice.cli("encrypt", "--to", typo, input=b"secret")
    assert cp.returncode == 2 and cp.stdout == b"", cp.stderr
    assert b"NEW_PEER" in cp.stderr and b"--new-peer" in cp.stderr and typo.encode() in cp.stderr
    ok = alice.cli("encrypt", "--to", b_zq3, "--new-peer", input=b"hello")
    assert ok.returncode == 0 and ok.stdout
    alias = json.loads(bob.cli("whoami", "--json").stdout)["alias"]
    assert alias.encode() in ok.stderr  # the recipient's three-word name is shown for a new peer
    # the first message made it: bob answers in a session, and the reply is said, not dropped
    dec = bob.cli("decrypt", "--from", json.loads(alice.cli("whoami", "--json").stdout)["compressed_key"],
                  input=ok.stdout)
    assert dec.returncode == 0 and dec.stdout == b"hello"
    assert b"--reply-out" in dec.stderr


def test_duplicates_and_a_wrong_sender_are_named(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    alice.start()
    bob.start()
    bundle = agents.root / "bob.json"
    bundle.write_bytes(bob.cli("bundle", "--json").stdout)
    b_zq3 = json.loads(bob.cli("whoami", "--json").stdout)["compressed_key"]
    a_zq3 = json.loads(alice.cli("whoami", "--json").stdout)["compressed_key"]
    m = alice.cli("encrypt", "--to", b_zq3, "--bundle", str(bundle), input=b"once").stdout
    assert bob.cli("decrypt", "--from", a_zq3, input=m).stdout == b"once"
    m2 = alice.cli("encrypt", "--to", b_zq3, input=b"twice").stdout
    assert bob.cli("decrypt", "--from", a_zq3, input=m2).stdout == b"twice"
    dup = bob.cli("decrypt", "--from", a_zq3, input=m2)
    assert dup.returncode == 1 and b"already decrypted (duplicate)" in dup.stderr, dup.stderr
    assert b"bad until" not in dup.stderr
    carol = agents.new()
    carol.start()
    c_zq3 = json.loads(carol.cli("whoami", "--json").stdout)["compressed_key"]
    wrong = bob.cli("decrypt", "--from", c_zq3, input=m2)
    assert wrong.returncode == 1 and a_zq3.encode() in wrong.stderr, wrong.stderr
    rows = bob.cli("sessions").stdout.decode().splitlines()
    assert rows[0].startswith("PEER") and rows[1].startswith(a_zq3)


def test_binary_output_is_refused_on_a_terminal(agents: AgentFactory) -> None:
    alice = agents.new()
    alice.start()
    me = json.loads(alice.cli("whoami", "--json").stdout)
    rc, out, err = _on_tty(alice, "encrypt", "--to", me["compressed_key"], "--new-peer")
    assert rc == 2 and b"terminal" in err and out == b"", err
    rc, out, err = _on_tty(alice, "waku", "seal", "--to", me["public_key"][2:])  # 130 hex digits, no 0x
    assert rc == 2 and b"terminal" in err and out == b"", err
    piped = alice.cli("waku", "seal", "--to", me["public_key"][2:], input=b"x")
    assert piped.returncode == 0 and piped.stdout, piped.stderr
    rc, out, err = _on_tty(alice, "bundle")
    assert rc == 0 and all(c in b"0123456789abcdef\r\n" for c in out)
