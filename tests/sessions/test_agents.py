"""Multi-device rules through real agent processes (``keyagent start``, Unix sockets, the Python client).

Several daemons, some sharing one identity (same key, separate homes = separate installations), exchange
messages through the test (an in-process transport): restore on a fresh home, a device that was never
paired, both sides starting X3DH at once, and a restart in the middle. Device approval has no socket request
yet; it is covered in-process by test_multidevice.py.
"""

from __future__ import annotations


import pytest

from agent.client import AgentClient, AgentError
from backends.home import provision_identity
from tests.daemon.agentproc import PASSPHRASE, AgentFactory, AgentProc

ALICE_SECRET = b"\xa1" * 32
BOB_SECRET = b"\xb0" * 32


def device(agents: AgentFactory, name: str, secret: bytes) -> tuple[AgentProc, AgentClient]:
    home = agents.root / name
    home.mkdir(mode=0o700)
    provision_identity(str(home), "software", passphrase=PASSPHRASE, scrypt_n=1 << 12, import_secret=secret)
    proc = agents.new(home=home)
    proc.start()
    return proc, proc.client()


def identity(c: AgentClient) -> bytes:
    return c.identity().identity_public_key


def test_restore_never_paired_and_concurrent_x3dh_across_real_agents(agents: AgentFactory) -> None:
    a_proc, a = device(agents, "alice", ALICE_SECRET)
    b_proc, b = device(agents, "bob", BOB_SECRET)
    alice, bob = identity(a), identity(b)
    # both sides start X3DH at once (each has the other's bundle), messages cross
    ma = a.encrypt(bob, b"alice first", b.bundle())
    mb = b.encrypt(alice, b"bob first", a.bundle())
    assert b.decrypt(alice, ma.message).payload == b"alice first"
    assert a.decrypt(bob, mb.message).payload == b"bob first"
    for _ in range(3):  # and they converge: both directions keep working
        assert b.decrypt(alice, a.encrypt(bob, b"a").message).payload == b"a"
        assert a.decrypt(bob, b.encrypt(alice, b"b").message).payload == b"b"
    live = [s for s in a.list_sessions() if not s.expired]
    assert len(live) == 1 and [s.expired for s in b.list_sessions()].count(False) == 1
    # Alice restores her account on a fresh home: a new installation that Bob does not know yet
    r_proc, restored = device(agents, "alice-restored", ALICE_SECRET)
    assert restored.identity().installation_id != a.identity().installation_id
    to_alice = b.encrypt(alice, b"are you there?")
    with pytest.raises(AgentError) as exc:
        restored.decrypt(bob, to_alice.message)
    assert exc.value.code == "NO_SESSION" and exc.value.reason == "not_for_this_device" and exc.value.reply
    assert b.decrypt(alice, exc.value.reply).payload == b""  # Bob learns the restored installation
    both = b.encrypt(alice, b"now to both")
    assert restored.identity().installation_id in both.installations
    assert restored.decrypt(bob, both.message).payload == b"now to both"
    assert a.decrypt(bob, both.message).payload == b"now to both"
    # the restored device sees Alice's own messages but is not paired: typed answer with our bundle
    from_a = a.encrypt(bob, b"hello again")
    with pytest.raises(AgentError) as exc2:
        restored.decrypt(alice, from_a.message)
    assert exc2.value.code == "NO_SESSION" and exc2.value.reason == "not_paired" and exc2.value.reply
    # a restart of Bob in the middle changes nothing for the others
    b.close()
    b_proc.kill()
    b_proc.start()
    b = b_proc.client()
    assert b.decrypt(alice, from_a.message).payload == b"hello again"
    again = b.encrypt(alice, b"after restart")
    assert a.decrypt(bob, again.message).payload == b"after restart"
    assert restored.decrypt(bob, again.message).payload == b"after restart"
    for c in (a, b, restored):
        c.close()
