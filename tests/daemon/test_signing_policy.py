"""The identity signs only what the agent understands: per-client policy with real uids, raw signing off,
Status application messages over the socket and the CLI, the forged-bundle attempt through every request that
signs, rotation bounds and a locked agent. Each test fails when its protection is removed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from agent.client import AgentClient, AgentError
from agent.core import bundle as core_bundle
from agent.core import secp256k1
from agent.core.waku.envelope import decode_envelope
from agent.core.waku.symmetric import open_symmetric
from agent.daemon.prekeys import MAX_LIVE_PREKEYS
from agent.pb.keyagent import agent_pb2 as pb
from agent.pb.status import application_metadata_message_pb2 as app_pb
from backends.memory import MemoryKey
from tests.daemon.agentproc import AgentFactory, AgentProc, short_tmpdir

NOBODY = 65534
CHAT = b"\x08\x01\x1a\x05hello"  # ChatMessage{clock: 1, text: "hello"}
ATTACKER_SPK = MemoryKey(b"9" * 32).public_key()


def _forged_material(installation_id: str) -> bytes:
    """What a forged bundle signs: our installation id, the attacker's prekey at version 2^32-1, a timestamp."""
    b = pb_bundle(installation_id)
    return core_bundle.signature_material(b)


def pb_bundle(installation_id: str) -> "core_bundle.pb.Bundle":
    b = core_bundle.pb.Bundle(timestamp=1_700_000_000_000_000_000)
    entry = b.signed_pre_keys[installation_id]
    entry.signed_pre_key, entry.version = ATTACKER_SPK, 0xFFFFFFFF
    return b


_AS_UID = textwrap.dedent(
    """
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sys.argv[1])
    for req in sys.argv[2:]:
        req = bytes.fromhex(req)
        s.sendall(struct.pack(">I", len(req)) + req)
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        print(body.hex(), flush=True)
    """
)


def _as_uid(sock: str, requests: list[pb.Request], uid: int = NOBODY) -> list[pb.Response]:
    """Send each request on one connection as ``uid`` (a real second uid via setpriv); one response each."""
    cp = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3", "-c", _AS_UID, sock,
         *[r.SerializeToString().hex() for r in requests]],
        capture_output=True, text=True, timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    return [pb.Response.FromString(bytes.fromhex(line)) for line in cp.stdout.split()]


def _shared_agent(agents: AgentFactory, config: dict[str, object] | None = None) -> tuple[AgentProc, Path]:
    shared = short_tmpdir("ka-pol-")
    os.chmod(shared, 0o755)
    a = agents.new(config=config)
    sock = str(shared / "agent.sock")
    a.start("--socket", sock, "--allow-uid", str(NOBODY))
    a.sock = sock
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
    return a, shared


def _code(r: pb.Response) -> str:
    return pb.Error.Code.Name(r.error.code) if r.WhichOneof("response") == "error" else "ok"


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")


# --- per-client policy, two real uids ----------------------------------------------------------------------------

@needs_root
def test_owner_only_requests_are_refused_to_an_admitted_uid(agents: AgentFactory) -> None:
    a, shared = _shared_agent(agents)
    try:
        with a.client() as c:
            iid = c.identity().installation_id
        reqs = [
            pb.Request(lock=pb.LockRequest(password="attacker-chosen")),
            pb.Request(unlock=pb.UnlockRequest(secret="guess", force=True)),
            pb.Request(rotate=pb.RotateRequest()),
            pb.Request(set_device=pb.SetDeviceRequest(installation_id=iid, enabled=True)),
            pb.Request(release=pb.ReleaseRequest()),
            pb.Request(stop=pb.StopRequest()),
            pb.Request(sign=pb.SignRequest(digest=b"\x01" * 32)),
            pb.Request(status=pb.StatusRequest()),
            pb.Request(app_wrap=pb.AppWrapRequest(payload=CHAT, type=1)),
        ]
        got = _as_uid(a.sock, reqs)
        assert [_code(r) for r in got] == ["DENIED"] * 7 + ["ok", "ok"]
        assert [r.error.reason for r in got[:7]] == ["rule:owner-only"] * 6 + ["rule:raw-sign-off"]
        with a.client() as c:  # the owner was not locked out, and can do what nobody could not
            assert not c.status().locked
            c.lock("owner-pw")
            c.unlock("owner-pw")
            assert len(c.rotate(force=True)) > 0
        lines = [l for l in a.audit_lines() if l.get("uid") == NOBODY]
        assert {l["type"]: l.get("rule") for l in lines if l["result"] == "DENIED"}["unlock"] == "owner-only"
        assert [l.get("force") for l in lines if l["type"] == "unlock"] == [True]  # force is on record
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@needs_root
def test_policy_matrix_by_uid(agents: AgentFactory) -> None:
    config = {"policy": [{"name": "custody", "uid": NOBODY, "allow": ["status", "decrypt", "app_wrap", "sign"]},
                         {"name": "owner-signer", "uid": os.getuid(), "allow": ["sign"]}]}
    a, shared = _shared_agent(agents, config)
    try:
        reqs = [
            pb.Request(status=pb.StatusRequest()),
            pb.Request(app_wrap=pb.AppWrapRequest(payload=CHAT, type=1)),
            pb.Request(sign=pb.SignRequest(digest=b"\x02" * 32)),
            pb.Request(bundle=pb.BundleRequest()),
            pb.Request(encrypt=pb.EncryptRequest(peer_identity=ATTACKER_SPK, payload=b"x")),
            pb.Request(waku_seal=pb.WakuSealRequest(payload=b"x", sym_key=b"k" * 32, sign=True)),
            pb.Request(rotate=pb.RotateRequest(force=True)),
        ]
        got = _as_uid(a.sock, reqs)
        assert [_code(r) for r in got] == ["ok", "ok", "ok", "DENIED", "DENIED", "DENIED", "DENIED"]
        assert [r.error.reason for r in got[3:]] == ["rule:custody"] * 3 + ["rule:owner-only"]
        assert "custody" in got[3].error.message
        with a.client() as c:  # the owner keeps everything; raw signing only because a rule names its uid
            assert len(c.sign(b"\x03" * 32)) == 65
            assert c.bundle()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_raw_digest_signing_is_off_by_default(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    with a.client() as c:
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x01" * 32)
        assert ei.value.code == "DENIED" and ei.value.reason == "rule:raw-sign-off"
    cp = a.cli("sign", "11" * 32)
    assert cp.returncode == 1 and b"DENIED" in cp.stderr


# --- Status application messages ---------------------------------------------------------------------------------

def test_app_wrap_and_unwrap_over_socket_and_cli(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    with a.client() as c:
        me = c.identity()
        out = c.app_wrap(CHAT, 1)
        got = c.app_unwrap(out.message)
    assert got.signer == secp256k1.decompress(me.identity_public_key)
    assert (got.type, got.type_name, got.payload, got.message_id) == (1, "CHAT_MESSAGE", CHAT, out.message_id)
    cp = a.cli("app", "wrap", "--type", "CHAT_MESSAGE", input=CHAT)
    assert cp.returncode == 0, cp.stderr
    msg = app_pb.ApplicationMetadataMessage.FromString(cp.stdout)
    assert msg.payload == CHAT and msg.type == app_pb.ApplicationMetadataMessage.CHAT_MESSAGE
    cp = a.cli("app", "unwrap", "--json", input=cp.stdout)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["signer"] == me.public_key and doc["type"] == "CHAT_MESSAGE" and doc["payload"] == CHAT.hex()
    flipped = bytearray(out.message)
    flipped[-3] ^= 1  # inside the payload: the signature now recovers someone else (or nothing)
    cp = a.cli("app", "unwrap", "--json", input=bytes(flipped))
    assert cp.returncode != 0 or json.loads(cp.stdout)["signer"] != me.public_key


def test_forged_bundle_is_refused_through_every_request_that_signs(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    with a.client() as c:
        me = c.identity()
        material = _forged_material(me.installation_id)
        digest = core_bundle.signature_digest(pb_bundle(me.installation_id))
        with pytest.raises(AgentError) as ei:  # raw digest
            c.sign(digest)
        assert ei.value.code == "DENIED"
        # application messages, known types and unknown numbers; our installation id or a new one the attacker
        # makes up ("a..." so that only the bundle rule, not the Waku one, stands in the way)
        for forged in (material, _forged_material("attacker-device")):
            for type_ in (0, 1, 15, 4242):
                with pytest.raises(AgentError) as ei:
                    c.app_wrap(forged, type_)
                assert ei.value.code == "REFUSED_PAYLOAD", type_
        # Waku: the agent's signed preimage is flags||size||payload||padding; a bundle's material ends in a digit,
        # so the padding's last byte never is one (at random it would be 10 times in 256)
        key = b"s" * 32
        for _ in range(300):
            wire = c.waku_seal(material[:100], sym_key=key, sign=True)
            env = decode_envelope(open_symmetric(wire, key))
            assert env.padding[-1:] not in [bytes([d]) for d in b"0123456789"]
    assert not any(l["result"] == "ok" and l["type"] in ("sign", "app_wrap") for l in a.audit_lines())


# --- rotation bounds ---------------------------------------------------------------------------------------------

def _live_spks(home: Path) -> int:
    doc = json.loads((home / "identity.key").read_text())
    return len(doc["signed_prekeys"])


def test_rotation_is_rate_limited_and_bounded(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    with a.client() as c:
        c.rotate(force=True)
        with pytest.raises(AgentError) as ei:
            c.rotate()
        assert ei.value.code == "RATE_LIMITED"
        for _ in range(40):  # the owner's forced flood
            c.rotate(force=True)
        assert _live_spks(a.home) <= MAX_LIVE_PREKEYS
        assert (a.home / "identity.key").stat().st_size < 64 * 1024
        assert c.bundle()
    assert [l.get("force") for l in a.audit_lines() if l["type"] == "rotate"][:2] == [True, None]


# --- locked means locked -----------------------------------------------------------------------------------------

def test_locked_agent_uses_no_key(agents: AgentFactory) -> None:
    a = agents.new(config={"policy": [{"name": "me", "uid": os.getuid(), "allow": ["sign", "ecdh"]}]})
    a.start()
    peer = MemoryKey(b"7" * 32).public_key()
    with a.client() as c:
        before = c.bundle()
        c.lock("pw")  # the backend stays logged in: only the agent's gate stands
        assert c.bundle() == before
        calls = [
            lambda: c.sign(b"\x01" * 32), lambda: c.ecdh(peer), lambda: c.app_wrap(CHAT, 1),
            lambda: c.encrypt(peer, b"x"), lambda: c.rotate(force=True),
            lambda: c.waku_seal(b"x", sym_key=b"k" * 32, sign=True), lambda: c.waku_seal(b"x", to=peer),
            lambda: c.waku_negotiated(peer), lambda: c.waku_open(b"\x00" * 100),
        ]
        for call in calls:
            with pytest.raises(AgentError) as ei:
                call()
            assert ei.value.code == "LOCKED"
        c.unlock("pw")
        assert c.app_unwrap(c.app_wrap(CHAT, 1).message).payload == CHAT
