"""The socket API against a real agent: framing abuse, unknown requests, lock, audit, ecdh policy, concurrency,
and two agents holding a conversation through the CLI and the Python client across restarts."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
from typing import Iterator

import coincurve
import pytest

from agent.client import AgentClient, AgentError, AgentUnavailable
from agent.core import secp256k1
from agent.core.wire import decode_protocol_message
from agent.pb.keyagent import agent_pb2 as pb
from tests.daemon.agentproc import (
    OWNER_SIGNS,
    PASSPHRASE,
    AgentFactory,
    AgentProc,
    raw_connect,
    read_response,
    recv_all_or_eof,
    send_request,
    status_bytes,
)


@pytest.fixture(scope="module")
def module_agents() -> Iterator[AgentFactory]:
    factory = AgentFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def shared(module_agents: AgentFactory) -> AgentProc:
    """One agent with tight limits for the framing tests (each test uses its own connections)."""
    a = module_agents.new(config={"max_frame": 4096, "frame_timeout": 0.5, **OWNER_SIGNS})
    a.start()
    return a


def _assert_closed_without_answer(s: socket.socket) -> None:
    assert recv_all_or_eof(s) == b""


def _assert_serving(a: AgentProc) -> None:
    with a.client() as c:
        assert c.status().pid == a.pid


# --- framing ------------------------------------------------------------------------------------------------------


def test_oversized_frame_closes_only_that_connection(shared: AgentProc) -> None:
    bystander = raw_connect(shared.sock)
    try:
        s = raw_connect(shared.sock)
        s.sendall(struct.pack(">I", 4097) + b"\x00" * 16)
        _assert_closed_without_answer(s)
        s.close()
        send_request(bystander, status_bytes())  # the other connection is untouched
        r = read_response(bystander)
        assert r is not None and r.status.pid == shared.pid
    finally:
        bystander.close()


def test_frame_at_the_cap_is_read(shared: AgentProc) -> None:
    req = pb.Request(sign=pb.SignRequest(digest=b"\x01" * (4096 - 6))).SerializeToString()
    assert len(req) == 4096
    s = raw_connect(shared.sock)
    send_request(s, req)
    r = read_response(s)
    assert r is not None and r.error.code == pb.Error.BAD_REQUEST and "32 bytes" in r.error.message
    send_request(s, status_bytes())  # a rejected request keeps the connection
    r = read_response(s)
    assert r is not None and r.WhichOneof("response") == "status"
    s.close()


def test_zero_length_frame_closes(shared: AgentProc) -> None:
    s = raw_connect(shared.sock)
    s.sendall(b"\x00\x00\x00\x00")
    _assert_closed_without_answer(s)
    _assert_serving(shared)


def test_truncated_frame_closes(shared: AgentProc) -> None:
    s = raw_connect(shared.sock)
    s.sendall(struct.pack(">I", 100) + b"\x5a" * 10)
    s.shutdown(socket.SHUT_WR)
    _assert_closed_without_answer(s)
    _assert_serving(shared)


def test_slow_loris_partial_frame_is_cut_off(shared: AgentProc) -> None:
    s = raw_connect(shared.sock, timeout=30)
    s.sendall(b"\x00\x00")  # half a length, then nothing: the frame timeout (0.5 s here) closes it
    _assert_closed_without_answer(s)
    lines = [l for l in shared.audit_lines() if l["type"] == "frame"]
    assert any("timeout" in l.get("detail", "") for l in lines)


def test_undecodable_frame_gets_bad_request_then_close(shared: AgentProc) -> None:
    s = raw_connect(shared.sock)
    send_request(s, b"\xff\xff\xff\xff")  # invalid tag/varint: not a protobuf message
    r = read_response(s)
    assert r is not None and r.error.code == pb.Error.BAD_REQUEST
    _assert_closed_without_answer(s)


@pytest.mark.parametrize("raw", [b"\xc2\x3e\x00", b"\xf0\x01\x01", b"\x98\x06\x07"])
def test_unknown_request_type_is_unsupported(shared: AgentProc, raw: bytes) -> None:
    # fields 1000 (bytes), 30 and 99 (varints): numbers no Request member uses parse as unknown fields
    s = raw_connect(shared.sock)
    send_request(s, raw)
    r = read_response(s)
    assert r is not None and r.WhichOneof("response") == "error"
    assert r.error.code == pb.Error.UNSUPPORTED
    send_request(s, status_bytes())
    r = read_response(s)
    assert r is not None and r.WhichOneof("response") == "status"
    s.close()


def test_random_frames_never_hurt_other_clients(shared: AgentProc) -> None:
    rng = random.Random(20261126)
    bystander = shared.client()
    outcomes = {"closed": 0, "answered": 0}
    for _ in range(150):
        s = raw_connect(shared.sock)
        if rng.random() < 0.3:  # random header bytes too
            s.sendall(rng.randbytes(rng.randint(1, 12)))
            s.shutdown(socket.SHUT_WR)
        else:
            body = rng.randbytes(rng.randint(1, 600))
            send_request(s, body)
            s.shutdown(socket.SHUT_WR)
        data = recv_all_or_eof(s)
        s.close()
        if data:
            (n,) = struct.unpack(">I", data[:4])
            resp = pb.Response.FromString(data[4 : 4 + n])
            assert resp.WhichOneof("response") is not None
            outcomes["answered"] += 1
        else:
            outcomes["closed"] += 1
        assert bystander.status().pid == shared.pid
    bystander.close()
    assert outcomes["closed"] > 0 and outcomes["answered"] > 0


# --- requests -----------------------------------------------------------------------------------------------------


def test_sign_is_recoverable_to_our_identity(shared: AgentProc) -> None:
    digest = bytes(range(32))
    with shared.client() as c:
        ident = c.identity()
        sig = c.sign(digest)
    assert len(sig) == 65 and sig[64] in (0, 1)
    assert secp256k1.recover(digest, sig) == ident.identity_public_key
    assert ident.public_key == "0x" + secp256k1.decompress(ident.identity_public_key).hex()
    assert ident.compressed_key.startswith("zQ3")


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33])
def test_sign_rejects_wrong_digest_lengths(shared: AgentProc, digest: bytes) -> None:
    with shared.client() as c, pytest.raises(AgentError) as ei:
        c.sign(digest)
    assert ei.value.code == "BAD_REQUEST"


@pytest.mark.parametrize("peer", [b"", b"\x02" * 32, b"\x05" + b"\x01" * 32, b"\x04" + b"\x00" * 64])
def test_encrypt_rejects_bad_peer_keys(shared: AgentProc, peer: bytes) -> None:
    with shared.client() as c, pytest.raises(AgentError) as ei:
        c.encrypt(peer, b"x")
    assert ei.value.code == "BAD_REQUEST"


def test_ecdh_is_denied_by_default(shared: AgentProc) -> None:
    with shared.client() as c, pytest.raises(AgentError) as ei:
        c.ecdh(coincurve.PrivateKey().public_key.format())
    assert ei.value.code == "DENIED"


def test_ecdh_when_policy_allows_matches_local_dh(agents: AgentFactory) -> None:
    a = agents.new()
    a.start("--allow-ecdh")
    mine = coincurve.PrivateKey()
    with a.client() as c:
        shared_x = c.ecdh(mine.public_key.format(compressed=False))
        ident = c.identity().identity_public_key
    assert shared_x == secp256k1.dh_x(mine.secret, ident)


def test_lock_refuses_secret_use_and_unlock_restores(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    with a.client() as c:
        peer = coincurve.PrivateKey().public_key.format()
        c.sign(b"\x01" * 32)
        c.lock()
        st = c.status()
        assert st.locked and not st.backend_unlocked
        for call in (lambda: c.sign(b"\x01" * 32), lambda: c.encrypt(peer, b"hi"), lambda: c.list_sessions(),
                     lambda: c.confirm([b"x"]), lambda: c.rotate(force=True)):
            with pytest.raises(AgentError) as ei:
                call()
            assert ei.value.code == "LOCKED"
        assert len(c.identity().identity_public_key) == 33  # public data stays readable
        with pytest.raises(AgentError) as ei:
            c.unlock("not the passphrase")
        assert ei.value.code == "PASSPHRASE_INCORRECT"
        assert c.status().unlock_failures == 1 and c.status().locked
        with pytest.raises(AgentError):
            c.unlock("still wrong")
        assert c.status().unlock_failures == 2
        c.unlock(PASSPHRASE)
        st = c.status()
        assert not st.locked and st.backend_unlocked and st.unlock_failures == 0
        assert len(c.sign(b"\x01" * 32)) == 65


def test_lock_with_password_keeps_token_but_gates_requests(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    with a.client() as c:
        c.lock("lockpw")
        st = c.status()
        assert st.locked and st.backend_unlocked
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x01" * 32)
        assert ei.value.code == "LOCKED"
        with pytest.raises(AgentError) as ei:
            c.unlock(PASSPHRASE)  # the key file's passphrase is not the lock password
        assert ei.value.code == "PASSPHRASE_INCORRECT"
        c.unlock("lockpw")
        assert len(c.sign(b"\x01" * 32)) == 65


def test_cli_lock_unlock(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    assert a.cli("lock").returncode == 0
    cp = a.cli("sign", "11" * 32)
    assert cp.returncode == 1 and cp.stderr.decode().startswith("keyagent: LOCKED:")
    assert a.cli("unlock", input=b"wrong\n").returncode == 1
    assert a.cli("unlock", input=PASSPHRASE.encode() + b"\n").returncode == 0
    cp = a.cli("sign", "11" * 32)
    assert cp.returncode == 0 and len(bytes.fromhex(cp.stdout.decode().strip())) == 65


def test_unlock_ttl_relocks(agents: AgentFactory) -> None:
    a = agents.new(config={"socket_check_interval": 0.1, **OWNER_SIGNS})
    a.start("--unlock-ttl", "0.3")
    with a.client() as c:
        for _ in range(400):
            if c.status().locked:
                break
            threading.Event().wait(0.05)
        assert c.status().locked
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x01" * 32)
        assert ei.value.code == "LOCKED"


def test_audit_has_one_line_per_request_and_no_secret(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    b = agents.new()
    b.start()
    marker = b"PLAINTEXT-MARKER-7f3a"
    digest = bytes.fromhex("ab" * 32)
    with a.client() as ca, b.client() as cb:
        a_id = ca.identity().identity_public_key
        b_id = cb.identity().identity_public_key
        sig = ca.sign(digest)
        msg = ca.encrypt(b_id, marker, cb.bundle())
        got = cb.decrypt(a_id, msg.message)
        assert got.payload == marker
        ca.lock()
        with pytest.raises(AgentError):
            ca.unlock("wrong-" + PASSPHRASE)
        ca.unlock(PASSPHRASE)
        ca.status()
    lines = a.audit_lines()
    assert [l["type"] for l in lines] == ["identity", "sign", "encrypt", "lock", "unlock", "unlock", "status"]
    assert [l["result"] for l in lines] == ["ok", "ok", "ok", "ok", "PASSPHRASE_INCORRECT", "ok", "ok"]
    enc = lines[2]
    assert enc["peer"] == b_id.hex() and enc["key"] == "identity"
    for l in lines:
        assert {"time", "type", "result", "uid", "pid", "exe"} <= set(l)
        assert l["uid"] == os.getuid()
    text = (a.home / "audit.log").read_text() + (b.home / "audit.log").read_text()
    for secret in (PASSPHRASE, "wrong-", marker.hex(), marker.decode(), digest.hex(), sig.hex(),
                   msg.message.hex()[:64]):
        assert secret not in text
    b_lines = b.audit_lines()
    assert [l["type"] for l in b_lines] == ["identity", "bundle", "decrypt"]
    assert b_lines[2]["peer"] == a_id.hex()


def _dr_positions(message: bytes) -> list[tuple[str, bytes, int]]:
    pm = decode_protocol_message(message)
    out = []
    for iid, entry in pm.encrypted_message.items():
        if entry.HasField("DR_header"):
            out.append((iid, bytes(entry.DR_header.key), entry.DR_header.n))
    return out


def test_eight_clients_share_one_agent_without_reusing_a_message_key(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    b = agents.new()
    b.start()
    with a.client() as ca, b.client() as cb:
        a_id = ca.identity().identity_public_key
        b_id = cb.identity().identity_public_key
        first = ca.encrypt(b_id, b"hello", cb.bundle())
        assert first.forward_secrecy
        assert cb.decrypt(a_id, first.message).payload == b"hello"

    results: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []
    mu = threading.Lock()

    def worker(k: int) -> None:
        try:
            with AgentClient(a.sock) as c:
                for i in range(12):
                    payload = f"client {k} message {i}".encode()
                    m = c.encrypt(b_id, payload).message
                    assert len(c.sign(bytes([k]) * 32)) == 65
                    with mu:
                        results.append((payload, m))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 96
    positions = [p for _, m in results for p in _dr_positions(m)]
    assert positions and len(positions) == len(set(positions)), "a (chain, n) message key was used twice"
    with b.client() as cb:
        for payload, m in results:
            assert cb.decrypt(a_id, m).payload == payload


def _cli_ok(a: AgentProc, *args: str, input: bytes | None = None) -> bytes:
    cp = a.cli(*args, input=input)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_two_agents_converse_through_cli_and_client_and_survive_restarts(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    alice.start()
    bob.start()
    a_id = json.loads(_cli_ok(alice, "whoami", "--json"))["public_key"]
    b_who = json.loads(_cli_ok(bob, "whoami", "--json"))
    b_id = b_who["compressed_key"]  # zQ3 form accepted too
    bundle_file = agents.root / "bob-bundle.json"
    bundle_file.write_bytes(_cli_ok(bob, "bundle", "--json"))
    doc = json.loads(bundle_file.read_text())
    assert set(doc) == {"identity", "signed_pre_keys", "timestamp", "signature"}
    assert doc["identity"] == b_who["identity"]
    (spk,) = doc["signed_pre_keys"].values()
    assert {"signed_pre_key", "version"} <= set(spk)

    m1 = _cli_ok(alice, "encrypt", "--to", b_id, "--bundle", str(bundle_file), input=b"hi bob")
    assert _cli_ok(bob, "decrypt", "--from", a_id, input=m1) == b"hi bob"
    m2 = _cli_ok(bob, "encrypt", "--to", a_id, input=b"hi alice")
    assert _cli_ok(alice, "decrypt", "--from", b_id, input=m2) == b"hi alice"

    for agent in (alice, bob):  # restart both
        assert agent.cli("stop").returncode == 0
        assert agent.wait_exit()
        agent.start()

    with AgentClient(alice.sock) as ca, AgentClient(bob.sock) as cb:
        a33 = ca.identity().identity_public_key
        b33 = cb.identity().identity_public_key
        for i in range(3):
            m = ca.encrypt(b33, f"after restart {i}".encode())
            assert m.forward_secrecy
            got = cb.decrypt(a33, m.message)
            assert got.payload == f"after restart {i}".encode()
            cb.confirm([got.confirm_ref])
            r = cb.encrypt(a33, f"reply {i}".encode())
            assert ca.decrypt(b33, r.message).payload == f"reply {i}".encode()
        sessions = cb.list_sessions()
        assert any(s.peer_identity == a33 for s in sessions)
    rows = json.loads(_cli_ok(bob, "sessions", "--json"))
    assert any(r["peer"] == a33.hex() for r in rows)


def test_cli_bundle_file_accepts_protobuf_bytes_and_rejects_garbage(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    alice.start()
    bob.start()
    raw = agents.root / "bob.pb"
    assert bob.cli("bundle", "-o", str(raw)).returncode == 0
    b_id = json.loads(_cli_ok(bob, "whoami", "--json"))["identity"]
    a_id = json.loads(_cli_ok(alice, "whoami", "--json"))["identity"]
    m = _cli_ok(alice, "encrypt", "--to", b_id, "--bundle", str(raw), input=b"via protobuf bundle")
    assert _cli_ok(bob, "decrypt", "--from", a_id, input=m) == b"via protobuf bundle"
    bad = agents.root / "bad.json"
    bad.write_text('{"identity": "zz"}')
    cp = alice.cli("encrypt", "--to", b_id, "--bundle", str(bad), input=b"x")
    assert cp.returncode == 2 and b"not hex" in cp.stderr
    tampered = json.loads(_cli_ok(bob, "bundle", "--json"))
    tampered["timestamp"] += 1  # signature no longer matches
    bad.write_text(json.dumps(tampered))
    cp = alice.cli("add-bundle", str(bad))
    assert cp.returncode == 1 and cp.stderr.startswith(b"keyagent: BAD_SIGNATURE")
    cp = alice.cli("encrypt", "--to", "not-an-identity", input=b"x")
    assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1


def test_confirmation_hook_gates_configured_operations(agents: AgentFactory) -> None:
    flag = agents.root / "allow"
    log = agents.root / "confirm.log"
    hook = f'echo "$KEYAGENT_CONFIRM_OP $KEYAGENT_CONFIRM_PID $KEYAGENT_CONFIRM_UID" >> {log}; test -e {flag}'
    a = agents.new(config={"confirm_command": ["sh", "-c", hook], "confirm_ops": ["sign"], **OWNER_SIGNS})
    a.start()
    with a.client() as c:
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x05" * 32)
        assert ei.value.code == "DENIED" and "refused" in ei.value.message
        flag.write_text("")
        assert len(c.sign(b"\x05" * 32)) == 65
        c.identity()  # not in confirm_ops: no hook run
    assert log.read_text().splitlines() == [f"sign {os.getpid()} {os.getuid()}"] * 2
    assert [l["result"] for l in a.audit_lines() if l["type"] == "sign"] == ["DENIED", "ok"]


def test_rotate_changes_the_signed_prekey(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    before = json.loads(_cli_ok(a, "bundle", "--json"))
    after = json.loads(_cli_ok(a, "rotate", "--force", "--json"))  # a fresh prekey: inside the rate limit
    (old,) = before["signed_pre_keys"].values()
    (new,) = after["signed_pre_keys"].values()
    assert new["version"] == old["version"] + 1 and new["signed_pre_key"] != old["signed_pre_key"]


def test_connection_limit_closes_extra_connections_only(agents: AgentFactory) -> None:
    a = agents.new(config={"max_connections": 2})
    a.start()
    first, second = raw_connect(a.sock), raw_connect(a.sock)
    try:
        for s in (first, second):  # both are registered once they have been answered
            send_request(s, status_bytes())
            assert read_response(s) is not None
        third = raw_connect(a.sock)
        _assert_closed_without_answer(third)
        third.close()
        assert [l["result"] for l in a.audit_lines() if l["type"] == "connect"] == ["BUSY"]
        send_request(first, status_bytes())  # the admitted ones are unaffected
        r = read_response(first)
        assert r is not None and r.status.connections == 2
    finally:
        first.close()
        second.close()
    r = None
    deadline = time.monotonic() + 10  # a freed slot is reusable (the agent notices the close asynchronously: on a
    while r is None and time.monotonic() < deadline:  # loaded 2-CPU machine, possibly after tens of ms)
        try:
            s = raw_connect(a.sock)
        except ConnectionError:
            time.sleep(0.01)
            continue
        try:
            send_request(s, status_bytes())
            r = read_response(s)
        except ConnectionError:  # refused while the slot was still taken (reset: our request was unread)
            r = None
        s.close()
        if r is None:
            time.sleep(0.01)
    assert r is not None and r.WhichOneof("response") == "status"


def test_kill_9_and_restart_never_reuse_a_message_key(agents: AgentFactory) -> None:
    alice, bob = agents.new(), agents.new()
    alice.start()
    bob.start()
    with alice.client() as ca, bob.client() as cb:
        a_id, b_id = ca.identity().identity_public_key, cb.identity().identity_public_key
        sent = [ca.encrypt(b_id, b"before 0", cb.bundle()).message]
        sent += [ca.encrypt(b_id, f"before {i}".encode()).message for i in range(1, 5)]
    os.kill(alice.pid, 9)  # no clean shutdown: whatever the agent handed out must stay valid
    assert alice.wait_exit()
    alice.start()
    with alice.client() as ca:
        sent += [ca.encrypt(b_id, f"after {i}".encode()).message for i in range(5)]
    positions = [p for m in sent for p in _dr_positions(m)]
    assert len(positions) == len(set(positions))
    with bob.client() as cb:
        got = [cb.decrypt(a_id, m).payload for m in sent]
    assert got == [f"before {i}".encode() for i in range(5)] + [f"after {i}".encode() for i in range(5)]


def test_client_refuses_requests_above_the_frame_cap_with_a_clear_error(shared: AgentProc) -> None:
    with AgentClient(shared.sock, max_request=4096) as c:
        with pytest.raises(AgentError) as ei:
            c.encrypt(b"\x02" * 33, b"x" * 5000)
        assert ei.value.code == "BAD_REQUEST" and "frame cap" in ei.value.message
        assert c.status().pid == shared.pid  # the connection is still usable: nothing was sent


def test_a_request_past_its_time_limit_is_answered_timeout_and_others_are_served(agents: AgentFactory) -> None:
    # A failed unlock waits 0.1 s x failures before answering; with a 50 ms limit the watchdog answers TIMEOUT.
    a = agents.new(config={"request_timeout": 0.05})
    a.start()
    with a.client() as c:
        c.lock()
    codes = []
    for _ in range(10):
        with a.client() as c:
            try:
                c.unlock("wrong")
            except AgentError as exc:
                codes.append(exc.code)
                if exc.code == "TIMEOUT":
                    assert "longer than" in exc.message
                    with pytest.raises(AgentUnavailable):  # the timed-out connection is closed afterwards
                        c.status()
                    break
    assert codes[-1] == "TIMEOUT" and set(codes) <= {"TIMEOUT", "PASSPHRASE_INCORRECT"}
    with a.client() as c:
        assert c.status().locked  # the agent serves new connections; the failures were counted
    assert any(l["type"] == "unlock" and l["result"] == "TIMEOUT" for l in a.audit_lines())
