"""The serving model against a real agent: one event loop, cheap requests from memory, a bounded worker pool."""

from __future__ import annotations

import json
import threading
import time

from agent.pb.keyagent import agent_pb2 as pb
from tests.daemon.agentproc import OWNER_SIGNS, AgentFactory, raw_connect, read_response, send_request


def test_cheap_requests_answer_while_every_worker_is_busy(agents: AgentFactory) -> None:
    """status, identity and bundle come from memory: a request holding the only worker does not delay them."""
    a = agents.new(config={**OWNER_SIGNS, "workers": 1, "confirm_command": ["sh", "-c", "sleep 3"],
                           "confirm_ops": ["sign"]})
    a.start()
    with a.client() as c:
        bundle, ident = c.bundle(), c.identity()  # the first of each is built on a worker, then kept
    signed: list[bytes] = []
    blocker = threading.Thread(target=lambda: signed.append(a.client().sign(b"\x07" * 32)), daemon=True)
    blocker.start()
    time.sleep(0.5)  # the sign holds the worker (its confirmation hook sleeps)
    assert blocker.is_alive()
    with a.client() as c:
        t0 = time.monotonic()
        assert c.status().pid == a.pid
        assert c.identity().identity_public_key == ident.identity_public_key
        assert c.bundle() == bundle
        took = time.monotonic() - t0
    assert took < 1.0, f"cheap requests waited {took:.2f} s for the busy worker"
    assert blocker.is_alive()  # the measurement above really overlapped the sign
    blocker.join(10)
    assert signed and len(signed[0]) == 65
    kinds = [l["type"] for l in a.audit_lines() if l.get("result") == "ok"]
    assert kinds.count("status") == 1 and kinds.count("identity") == 2 and kinds.count("bundle") == 2


def test_identity_from_memory_follows_the_recorded_key_uid(agents: AgentFactory) -> None:
    """The kept identity answer is dropped when config.json changes (a phrase import records a key UID)."""
    a = agents.new()
    a.start()
    with a.client() as c:
        first = c.identity()
        assert c.identity().key_uid == first.key_uid  # from memory
        cfg_path = a.home / "config.json"
        cfg = json.loads(cfg_path.read_text())
        uid = "0x" + "ab" * 32
        cfg["status"] = {"key_uid": uid, "key_uid_origin": "recovery_phrase"}
        cfg_path.write_text(json.dumps(cfg))
        again = c.identity()
    assert first.key_uid != uid
    assert again.key_uid == uid and again.key_uid_origin == "recovery_phrase"


def test_pipelined_requests_are_answered_in_order_across_memory_and_workers(agents: AgentFactory) -> None:
    """A client that sends several frames at once gets one answer per frame, in its order, whichever path each took."""
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    kinds = ["status", "sign", "identity", "sign", "status", "bundle"]
    reqs = [pb.Request(status=pb.StatusRequest()), pb.Request(sign=pb.SignRequest(digest=b"\x01" * 32)),
            pb.Request(identity=pb.IdentityRequest()), pb.Request(sign=pb.SignRequest(digest=b"\x02" * 32)),
            pb.Request(status=pb.StatusRequest()), pb.Request(bundle=pb.BundleRequest())]
    s = raw_connect(a.sock)
    try:
        s.sendall(b"".join(len(r.SerializeToString()).to_bytes(4, "big") + r.SerializeToString() for r in reqs))
        got = []
        for _ in reqs:
            resp = read_response(s)
            assert resp is not None
            got.append(resp.WhichOneof("response"))
    finally:
        s.close()
    assert got == kinds


def test_many_clients_at_once_each_get_their_own_answers(agents: AgentFactory) -> None:
    """Eight connections interleaving cheap and worker requests: every answer is the right one, none is lost."""
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    errors: list[str] = []

    def client(k: int) -> None:
        s = raw_connect(a.sock)
        try:
            for i in range(60):
                digest = bytes([k, i]) * 16
                send_request(s, pb.Request(sign=pb.SignRequest(digest=digest)).SerializeToString())
                r = read_response(s)
                if r is None or r.WhichOneof("response") != "sign" or len(r.sign.signature) != 65:
                    errors.append(f"client {k}: bad sign answer {r}")
                send_request(s, pb.Request(status=pb.StatusRequest()).SerializeToString())
                r = read_response(s)
                if r is None or r.WhichOneof("response") != "status" or r.status.pid != a.pid:
                    errors.append(f"client {k}: bad status answer {r}")
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    lines = a.audit_lines()
    assert sum(1 for l in lines if l["type"] == "sign" and l["result"] == "ok") == 480
    assert sum(1 for l in lines if l["type"] == "status" and l["result"] == "ok") == 480
