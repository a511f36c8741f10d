"""State integrity with real agents (issue 15): rows edited offline are refused, never used for another peer.

The attack from the issue: stop the agent, change one session row's identity from C to B in ``state.db``, start it
again; a message "to B" was then encrypted on C's session, and C could read it. Every row now carries a MAC bound
into its sealed values, and a session's id is recomputed from its parts (agent/daemon/store/rows.py), so the edited
row is refused with STATE_ERROR and C keeps working on a session of its own.
"""

from __future__ import annotations

import sqlite3

import pytest

from agent.client import AgentError
from agent.core.wire import decode_protocol_message, encode, protocol_message
from tests.daemon.agentproc import AgentFactory, AgentProc


def _pub(agent: AgentProc) -> bytes:
    return agent.identity().identity_public_key


def _alice_and_carol(agents: AgentFactory) -> tuple[AgentProc, AgentProc, bytes, bytes]:
    """Two running agents, and Carol's key and bundle."""
    alice, carol = agents.new(), agents.new()
    for x in (alice, carol):
        x.start()
    with carol.client() as c:
        return alice, carol, _pub(carol), c.bundle()


def _relay_to(message: bytes, iid: str) -> bytes:
    """What a relaying attacker does: the single entry of a message re-addressed to installation ``iid``."""
    m = decode_protocol_message(message)
    (entry,) = m.encrypted_message.values()
    return encode(protocol_message(m.installation_id, {iid: entry}))


def _edit(db: str, sql: str, params: tuple[object, ...]) -> int:
    conn = sqlite3.connect(db)
    try:
        n = conn.execute(sql, params).rowcount
        conn.commit()
        return n
    finally:
        conn.close()


def test_a_session_re_attributed_offline_is_refused_not_used_for_the_other_peer(agents: AgentFactory) -> None:
    alice, bob, carol = agents.new(), agents.new(), agents.new()
    for x in (alice, bob, carol):
        x.start()
    a_pub, b_pub, c_pub = _pub(alice), _pub(bob), _pub(carol)
    b_iid, c_iid = bob.identity().installation_id, carol.identity().installation_id
    with carol.client() as c:
        carol_bundle = c.bundle()
    with bob.client() as b:
        bob_bundle = b.bundle()
    with alice.client() as a:
        m = a.encrypt(c_pub, b"hello carol", peer_bundle=carol_bundle).message
    with carol.client() as c:
        assert c.decrypt(a_pub, m).payload == b"hello carol"
    alice.kill()
    # offline: Carol's session row now says it belongs to Bob (identity and installation)
    assert _edit(str(alice.home / "state.db"), "UPDATE sessions SET identity=?, installation_id=? WHERE identity=?",
                 (b_pub, b_iid, c_pub)) == 1
    alice.start()
    with alice.client() as a:
        with pytest.raises(AgentError) as err:
            a.encrypt(b_pub, b"for bob only", peer_bundle=bob_bundle)
        assert err.value.code == "STATE_ERROR" and "authentication" in err.value.message
        # Carol is not affected: Alice no longer has a (valid) session with her and starts a fresh one
        again = a.encrypt(c_pub, b"still carol", peer_bundle=carol_bundle).message
    with carol.client() as c:
        assert c.decrypt(a_pub, again).payload == b"still carol"


def test_the_attack_works_without_the_protection_shown_by_the_relay(agents: AgentFactory) -> None:
    """The control for the test above, without editing the product: what the attacker would get if the agent
    sent on Carol's session for Bob is a message Carol reads. A message Alice encrypts on a session with
    Carol, re-addressed, decrypts at Carol; so any use of that session "for Bob" is readable by Carol."""
    alice, carol = agents.new(), agents.new()
    for x in (alice, carol):
        x.start()
    a_pub, c_pub, c_iid = _pub(alice), _pub(carol), carol.identity().installation_id
    with carol.client() as c:
        carol_bundle = c.bundle()
    with alice.client() as a:
        m = a.encrypt(c_pub, b"meant for bob", peer_bundle=carol_bundle).message
    with carol.client() as c:
        assert c.decrypt(a_pub, _relay_to(m, c_iid)).payload == b"meant for bob"


@pytest.mark.parametrize("sql", [
    "UPDATE sessions SET send_hwm=0",  # a lowered mark would let the next send reuse a handed-out position
    "UPDATE sessions SET expired=1 - expired",
])
def test_an_edited_session_row_is_refused_with_state_error(agents: AgentFactory, sql: str) -> None:
    alice, carol, c_pub, carol_bundle = _alice_and_carol(agents)
    with alice.client() as a:
        a.encrypt(c_pub, b"one", peer_bundle=carol_bundle)
    alice.kill()
    assert _edit(str(alice.home / "state.db"), sql, ()) == 1
    alice.start()
    with alice.client() as a, pytest.raises(AgentError) as err:
        a.encrypt(c_pub, b"two", peer_bundle=carol_bundle)
    assert err.value.code == "STATE_ERROR"


def test_an_edited_installation_or_own_row_is_refused(agents: AgentFactory) -> None:
    """A peer's device row (its prekey) and our own installation id are authenticated too: an edited
    installation is refused when it is read; with an edited meta row the agent serves no session request (it
    cannot know which installation it is), with the reason in the error."""
    alice, carol, c_pub, carol_bundle = _alice_and_carol(agents)
    with alice.client() as a:
        a.add_bundle(carol_bundle)
    alice.kill()
    db = str(alice.home / "state.db")
    assert _edit(db, "UPDATE installations SET spk=? WHERE identity=?", (b"\x02" + b"\x66" * 32, c_pub)) == 1
    alice.start()
    with alice.client() as a, pytest.raises(AgentError) as err:
        a.encrypt(c_pub, b"to carol")
    assert err.value.code == "STATE_ERROR"
    alice.kill()
    assert _edit(db, "UPDATE meta SET value=? WHERE key='installation_id'", (b"someone-else",)) == 1
    alice.start()
    with alice.client() as a, pytest.raises(AgentError) as err:
        a.encrypt(c_pub, b"to carol")
    assert err.value.code == "STATE_ERROR" and "meta row failed authentication" in err.value.message
