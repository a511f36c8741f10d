"""The Waku payload requests through a real agent process whose identity key lives in a fresh SoftHSM2 token.

js-waku (``@waku/message-encryption`` 0.0.38, the tests/interop peer) is the other side: the agent seals (the
signature made in the token) and js-waku opens and names the signer; js-waku seals to the agent's chat key and
``keyagent waku open`` opens it (the ECDH in the token). Then the negotiated topic and the contact-code channel,
typed errors for every bad input (CLI exit codes included), the lock, and a flood from another process that
must not refuse a well-behaved client. The gate's bound and round-robin order are unit-tested with a slow fake
token in test_token_gate.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from agent.client import AgentClient, AgentError
from agent.core import secp256k1
from agent.core.hashing import keccak256
from agent.core.identity import share_link, zq3_encode
from agent.core.waku import ecies, open_wire, topics
from agent.core.waku.envelope import encode_envelope
from backends.memory import MemoryKey
from tests.daemon.agentproc import REPO, AgentFactory, AgentProc
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken
from tests.interop.test_js_waku import Peer

pytestmark = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")

JS = MemoryKey(keccak256(b"waku-agent/js"))  # js-waku's identity (it signs with it and opens with it)
JS65 = secp256k1.decompress(JS.public_key())
SYM = keccak256(b"waku-agent/sym")
SIZES = [0, 1, 255, 256, 1000, 70000]

_PROVISION = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)


class TokenAgent:
    """A running agent on a SoftHSM2 home, its client connection and its identity key."""

    def __init__(self, proc: AgentProc, client: AgentClient, pin: str) -> None:
        self.proc, self.c, self.pin = proc, client, pin
        self.ik33 = bytes(client.status().identity_public_key)
        self.ik65 = secp256k1.decompress(self.ik33)

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.proc.cli("waku", *args, input=input)


@pytest.fixture(scope="module")
def agent() -> Iterator[TokenAgent]:
    factory = AgentFactory()
    try:
        with SoftHSMToken() as tok:
            home = factory.root / "token-home"
            cp = subprocess.run([sys.executable, "-c", _PROVISION, str(home), tok.module, f"label:{tok.label}",
                                 tok.pin], env=dict(tok.env, PYTHONPATH=str(REPO)), capture_output=True,
                                text=True, timeout=120)
            assert cp.returncode == 0, cp.stderr
            proc = factory.new(home=home)
            proc.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
            proc.start(passphrase=None)
            del proc.extra_env["KEYAGENT_PIN"]
            with AgentClient(proc.sock) as client:
                st = client.status()
                assert st.backend == "pkcs11" and st.backend_unlocked, st
                yield TokenAgent(proc, client, tok.pin)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def _payload(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


def _ok(cp: subprocess.CompletedProcess[bytes]) -> bytes:
    assert cp.returncode == 0, cp.stderr.decode()
    return cp.stdout


def _code(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(AgentError) as info:
        fn(*args, **kwargs)
    return info.value.code


# --- the agent seals, js-waku opens ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_agent_seals_signed_in_the_token_js_opens(agent: TokenAgent, peer: Peer, n: int) -> None:
    payload = _payload(n)
    wire = agent.c.waku_seal(payload, to=JS.public_key(), sign=True)
    reply = peer(op="open", mode="asymmetric", wire=wire.hex(), priv=JS.secret_for_export().hex())
    assert reply["ok"], reply
    assert reply["payload"] == payload.hex() and reply["signer"] == agent.ik65.hex()
    reply = peer(op="open", mode="symmetric", wire=agent.c.waku_seal(payload, sym_key=SYM, sign=True).hex(),
                 sym_key=SYM.hex())
    assert reply["ok"] and reply["payload"] == payload.hex() and reply["signer"] == agent.ik65.hex()


def test_cli_seal_accepts_every_chat_key_form(agent: TokenAgent, peer: Peer) -> None:
    forms = ["0x" + JS65.hex(), JS.public_key().hex(), "0x" + JS.public_key().hex(), zq3_encode(JS.public_key()),
             share_link(JS.public_key()), "  " + zq3_encode(JS.public_key()) + "\n"]
    for i, form in enumerate(forms):
        payload = f"form {i}".encode()
        wire = _ok(agent.cli("seal", "--to", form, "--sign", input=payload))
        reply = peer(op="open", mode="asymmetric", wire=wire.hex(), priv=JS.secret_for_export().hex())
        assert reply["ok"] and bytes.fromhex(reply["payload"]) == payload and reply["signer"] == agent.ik65.hex()
    unsigned = _ok(agent.cli("seal", "--to", zq3_encode(JS.public_key()), input=b"plain"))
    reply = peer(op="open", mode="asymmetric", wire=unsigned.hex(), priv=JS.secret_for_export().hex())
    assert reply["ok"] and reply["payload"] == b"plain".hex() and reply["signer"] is None
    sym = _ok(agent.cli("seal", "--sym-key", "0x" + SYM.hex(), "--sign", input=b"sym"))
    reply = peer(op="open", mode="symmetric", wire=sym.hex(), sym_key=SYM.hex())
    assert reply["ok"] and reply["payload"] == b"sym".hex() and reply["signer"] == agent.ik65.hex()
    doc = json.loads(_ok(agent.cli("seal", "--sym-key", SYM.hex(), "--json", input=b"j")))
    assert doc["mode"] == "symmetric" and not doc["signed"]
    assert open_wire(bytes.fromhex(doc["wire"]), sym_key=SYM).payload == b"j"


# --- js-waku seals, the agent opens ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_js_seals_to_the_token_identity_cli_opens(agent: TokenAgent, peer: Peer, n: int) -> None:
    payload = _payload(n)
    reply = peer(op="seal", mode="asymmetric", payload=payload.hex(), to=agent.ik65.hex(),
                 sig_priv=JS.secret_for_export().hex())
    assert reply["ok"], reply
    wire = bytes.fromhex(reply["wire"])
    doc = json.loads(_ok(agent.cli("open", "--json", input=wire)))
    assert doc == {"payload": payload.hex(), "signer": "0x" + JS65.hex(), "mode": "asymmetric"}
    assert _ok(agent.cli("open", input=wire)) == payload
    opened = agent.c.waku_open(wire)
    assert (opened.payload, opened.signer_public_key, opened.mode) == (payload, JS65, "asymmetric")


def test_js_unsigned_and_symmetric_cli_opens(agent: TokenAgent, peer: Peer) -> None:
    reply = peer(op="seal", mode="asymmetric", payload="00ff", to=agent.ik65.hex())
    doc = json.loads(_ok(agent.cli("open", "--json", input=bytes.fromhex(reply["wire"]))))
    assert doc == {"payload": "00ff", "signer": None, "mode": "asymmetric"}
    reply = peer(op="seal", mode="symmetric", payload="abcd", sym_key=SYM.hex(), sig_priv=JS.secret_for_export().hex())
    wire = bytes.fromhex(reply["wire"])
    doc = json.loads(_ok(agent.cli("open", "--sym-key", SYM.hex(), "--json", input=wire)))
    assert doc == {"payload": "abcd", "signer": "0x" + JS65.hex(), "mode": "symmetric"}
    # the full js-waku Encoder (WakuMessage version 1): its payload field is the wire
    reply = peer(op="encode_message", mode="asymmetric", payload="c0ffee", to=agent.ik65.hex(),
                 sig_priv=JS.secret_for_export().hex())
    assert reply["ok"] and reply["version"] == 1
    assert _ok(agent.cli("open", input=bytes.fromhex(reply["wire"]))) == b"\xc0\xff\xee"


# --- negotiated topic and contact code ------------------------------------------------------------------------


def test_negotiated_topic_matches_js_and_status_go_derivation(agent: TokenAgent, peer: Peer) -> None:
    secret = JS.dh(agent.ik33)  # the peer's side, in memory
    res = agent.c.waku_negotiated(JS.public_key())
    assert res.sym_key == topics.negotiated_key(secret) and res.sym_key != secret
    assert res.content_topic == topics.negotiated_topic(secret)
    assert res.topic == topics.topic_bytes(topics.negotiated_name(secret))
    assert agent.c.waku_negotiated(JS65) == res  # either key form; the second answer comes from the cache
    doc = json.loads(_ok(agent.proc.cli("waku", "negotiated", "--with", zq3_encode(JS.public_key()), "--json")))
    assert doc == {"sym_key": res.sym_key.hex(), "content_topic": res.content_topic, "topic": "0x" + res.topic.hex()}
    # js-waku encodes for the negotiated topic; the agent opens with the key it handed out
    reply = peer(op="encode_message", mode="symmetric", payload="0102", sym_key=res.sym_key.hex(),
                 sig_priv=JS.secret_for_export().hex(), content_topic=res.content_topic)
    assert reply["ok"] and reply["content_topic"] == res.content_topic
    opened = agent.c.waku_open(bytes.fromhex(reply["wire"]), sym_key=res.sym_key)
    assert opened.payload == b"\x01\x02" and opened.signer_public_key == JS65 and opened.mode == "symmetric"
    # a third party gets a different topic
    other = MemoryKey(keccak256(b"waku-agent/other"))
    assert agent.c.waku_negotiated(other.public_key()).sym_key != res.sym_key


def test_contact_code_of_our_identity(agent: TokenAgent) -> None:
    res = agent.c.waku_contact_code()
    assert res.sym_key == topics.contact_code_key(agent.ik33)
    assert res.content_topic == topics.contact_code_topic(agent.ik33)
    assert res.topic == topics.topic_bytes(topics.contact_code_name(agent.ik33))
    assert res.partitioned_topic == topics.partitioned_topic(agent.ik33)
    doc = json.loads(_ok(agent.proc.cli("waku", "contact-code", "--json")))
    assert doc["content_topic"] == res.content_topic and doc["sym_key"] == res.sym_key.hex()
    assert doc["partitioned_topic"] == res.partitioned_topic


# --- bad inputs -----------------------------------------------------------------------------------------------


def _to_agent(agent: TokenAgent, envelope: bytes) -> bytes:
    """An ECIES wire to the agent around an arbitrary (maybe malformed) plaintext envelope."""
    return ecies.seal_asymmetric(envelope, agent.ik33, ephemeral_secret=keccak256(b"eph"), iv=b"\x07" * 16)


def test_open_rejects_bad_wires_with_typed_errors(agent: TokenAgent, peer: Peer) -> None:
    c = agent.c
    good = bytes.fromhex(peer(op="seal", mode="asymmetric", payload="aa", to=agent.ik65.hex())["wire"])
    assert c.waku_open(good).payload == b"\xaa"
    assert _code(c.waku_open, b"") == "BAD_REQUEST"
    assert _code(c.waku_open, good[:113]) == "BAD_REQUEST"  # too short: refused before any token call
    bad_prefix = b"\x02" + good[1:]
    assert _code(c.waku_open, bad_prefix) == "BAD_REQUEST"
    off_curve = good[:64] + bytes([good[64] ^ 1]) + good[65:]
    assert _code(c.waku_open, off_curve) == "BAD_REQUEST"
    for pos in (65, 80, 200, len(good) - 1):  # IV, ciphertext, tag: the MAC fails after the token ECDH
        flipped = bytearray(good)
        flipped[pos] ^= 0x10
        assert _code(c.waku_open, bytes(flipped)) == "DECRYPT_FAILED"
    assert _code(c.waku_open, good[:-1]) == "DECRYPT_FAILED"  # truncated tag
    assert _code(c.waku_open, good + b"\x00") == "DECRYPT_FAILED"  # oversize
    foreign = bytes.fromhex(peer(op="seal", mode="asymmetric", payload="aa", to=JS65.hex())["wire"])
    assert _code(c.waku_open, foreign) == "DECRYPT_FAILED"  # someone else's traffic on the shared topic
    # authenticated (anyone can make a valid ECIES wire to us) but the envelope inside is malformed
    assert _code(c.waku_open, _to_agent(agent, b"\x03\xff\xff\xff" + b"\x00" * 252)) == "BAD_REQUEST"
    bad_sig = b"\x05\x01\xaa" + b"\x00" * 188 + b"\x00" * 64 + b"\x01"  # flagged signed, r = s = 0
    assert _code(c.waku_open, _to_agent(agent, bad_sig)) == "BAD_SIGNATURE"
    unsigned = encode_envelope(b"ok", signer=None, padding=lambda n: b"\x00" * n)
    assert c.waku_open(_to_agent(agent, unsigned)).payload == b"ok"
    # symmetric
    sym_wire = bytes.fromhex(peer(op="seal", mode="symmetric", payload="bb", sym_key=SYM.hex())["wire"])
    assert c.waku_open(sym_wire, sym_key=SYM).payload == b"\xbb"
    assert _code(c.waku_open, sym_wire, sym_key=SYM[:31]) == "BAD_REQUEST"
    assert _code(c.waku_open, sym_wire, sym_key=b"") == "BAD_REQUEST"  # present but empty is not "asymmetric"
    assert _code(c.waku_open, sym_wire, sym_key=keccak256(b"wrong")) == "DECRYPT_FAILED"
    assert _code(c.waku_open, sym_wire[:28], sym_key=SYM) == "BAD_REQUEST"
    assert _code(c.waku_open, sym_wire, sym_key=None) == "BAD_REQUEST"  # not an ECIES wire (no 0x04 R)
    assert c.waku_open(good).payload == b"\xaa"  # nothing above changed the agent's state


def test_seal_and_negotiated_reject_bad_inputs(agent: TokenAgent) -> None:
    from agent.pb.keyagent import agent_pb2 as pb

    c = agent.c
    r = c.call(pb.Request(waku_seal=pb.WakuSealRequest(payload=b"x", sign=True)))
    assert r.WhichOneof("response") == "error" and r.error.code == pb.Error.BAD_REQUEST
    for bad in (b"", JS.public_key()[:32], b"\x04" + b"\x01" * 64, b"\x05" + JS65[1:], JS.public_key() + b"\x00"):
        assert _code(c.waku_seal, b"x", to=bad) == "BAD_REQUEST"
        assert _code(c.waku_negotiated, bad) == "BAD_REQUEST"
    for bad in (b"", SYM[:31], SYM + b"\x00"):
        assert _code(c.waku_seal, b"x", sym_key=bad) == "BAD_REQUEST"
    with pytest.raises(ValueError):
        c.waku_seal(b"x")  # the client refuses before sending


def test_cli_bad_inputs_exit_codes(agent: TokenAgent, peer: Peer) -> None:
    for args in (["seal", "--to", "zQ3notakey"], ["seal", "--to", "0x04" + "00" * 64], ["seal", "--sym-key", "zz"],
                 ["seal", "--sym-key", "00" * 31], ["open", "--sym-key", "00" * 33]):
        cp = agent.cli(*args, input=b"payload")
        assert cp.returncode == 2 and cp.stdout == b"", (args, cp.stderr)
    cp = agent.cli("open", input=b"")
    assert cp.returncode == 2 and b"no wire" in cp.stderr
    foreign = bytes.fromhex(peer(op="seal", mode="asymmetric", payload="aa", to=JS65.hex())["wire"])
    cp = agent.cli("open", "--json", input=foreign)
    assert cp.returncode == 1 and b"DECRYPT_FAILED" in cp.stderr
    assert json.loads(cp.stdout)["error"]["code"] == "DECRYPT_FAILED"  # with --json the error is JSON too
    cp = agent.cli("open", input=b"\x04" * 50)
    assert cp.returncode == 1 and b"BAD_REQUEST" in cp.stderr
    cp = agent.cli("seal", "--to", zq3_encode(JS.public_key()), "--sym-key", SYM.hex(), input=b"x")
    assert cp.returncode == 2  # argparse: the two are mutually exclusive
    cp = subprocess.run([sys.executable, "-m", "agent", "waku", "open"], input=b"x", capture_output=True,
                        env=dict(agent.proc.env, KEYAGENT_SOCK=str(agent.proc.run / "nobody.sock")), timeout=60)
    assert cp.returncode == 3


def test_locked_agent_refuses_token_work_until_unlocked(agent: TokenAgent, peer: Peer) -> None:
    wire = bytes.fromhex(peer(op="seal", mode="asymmetric", payload="cc", to=agent.ik65.hex())["wire"])
    agent.c.lock()
    try:
        assert _code(agent.c.waku_open, wire) == "LOCKED"
        assert _code(agent.c.waku_seal, b"x", to=JS.public_key(), sign=True) == "LOCKED"
        assert _code(agent.c.waku_negotiated, JS.public_key()) == "LOCKED"
    finally:
        agent.c.unlock(agent.pin)
    assert agent.c.waku_open(wire).payload == b"\xcc"


# --- a flood from another process -----------------------------------------------------------------------------

_FLOODER = textwrap.dedent("""
    import collections, json, sys, threading
    from agent.client import AgentClient, AgentError
    sock, wire, seconds = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
    codes = collections.Counter()
    stop = threading.Event()
    def run():
        with AgentClient(sock) as c:
            while not stop.is_set():
                try:
                    c.waku_open(wire)
                    codes["OK"] += 1
                except AgentError as e:
                    codes[e.code] += 1
    ts = [threading.Thread(target=run) for _ in range(12)]
    [t.start() for t in ts]
    print("started", flush=True)
    sys.stdin.readline()
    stop.set()
    [t.join() for t in ts]
    print(json.dumps(codes), flush=True)
""")


def test_flood_from_another_process_does_not_refuse_a_normal_client(agent: TokenAgent, peer: Peer) -> None:
    """Twelve connections of one process pour foreign ECIES wires (each costs a token ECDH) into waku_open; a
    client in this process keeps opening its own messages: none is refused, and the flood only ever sees
    DECRYPT_FAILED or BUSY (never an internal error or a timeout)."""
    foreign = peer(op="seal", mode="asymmetric", payload="ee", to=JS65.hex())["wire"]
    mine = bytes.fromhex(peer(op="seal", mode="asymmetric", payload="dd", to=agent.ik65.hex(),
                              sig_priv=JS.secret_for_export().hex())["wire"])
    flood = subprocess.Popen([sys.executable, "-c", _FLOODER, agent.proc.sock, foreign, "0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline().strip() == "started"
        with AgentClient(agent.proc.sock) as mine_client:
            for _ in range(100):
                opened = mine_client.waku_open(mine)
                assert opened.payload == b"\xdd" and opened.signer_public_key == JS65
        flood.stdin.write("\n")
        flood.stdin.flush()
        codes = json.loads(flood.stdout.readline())
    finally:
        if flood.poll() is None:
            flood.kill()
        flood.wait(30)
    assert set(codes) <= {"DECRYPT_FAILED", "BUSY"}, codes
    assert codes.get("DECRYPT_FAILED", 0) > 0
    print("flood answers:", codes)


def test_audit_lines_name_the_request_never_its_secrets(agent: TokenAgent, peer: Peer) -> None:
    secret_payload = b"audit-must-not-see-this"
    wire = agent.c.waku_seal(secret_payload, to=agent.ik33, sign=True)
    assert agent.c.waku_open(wire).payload == secret_payload
    sym_wire = agent.c.waku_seal(secret_payload, sym_key=SYM)
    assert agent.c.waku_open(sym_wire, sym_key=SYM).payload == secret_payload
    negotiated = agent.c.waku_negotiated(JS.public_key())
    assert _code(agent.c.waku_open, agent.c.waku_seal(secret_payload, to=JS.public_key())) == "DECRYPT_FAILED"
    text = (agent.proc.home / "audit.log").read_text()
    for needle in (secret_payload.hex(), secret_payload.decode(), SYM.hex(), negotiated.sym_key.hex(),
                   JS.dh(agent.ik33).hex()):
        assert needle not in text
    lines = [line for line in agent.proc.audit_lines() if str(line.get("type", "")).startswith("waku_")]
    opens = [line for line in lines if line["type"] == "waku_open" and line["result"] == "ok"]
    assert {"asymmetric", "symmetric"} <= {line.get("detail") for line in opens}
    assert any(line.get("peer") == agent.ik33.hex() for line in opens)  # the signer (public) is recorded
    assert any(line["type"] == "waku_negotiated" and line.get("peer") == JS.public_key().hex() for line in lines)
    assert any(line["type"] == "waku_open" and line["result"] == "DECRYPT_FAILED" for line in lines)
