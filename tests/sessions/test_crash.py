"""The two state promises under real kill -9 and under concurrency.

(1) A message key is never used twice: every (ratchet key, n) pair the sender ever emits is unique, also
    across processes killed mid-stream and several threads encrypting to the same peer.
(2) Nothing a client was handed is undone: every message a killed process printed decrypts at the peer,
    and the conversation goes on after the restart.
The sender runs in a child process on a software-backend home (key file + SQLite store) and prints each
message only after ``encrypt`` returned; the parent kills it at arbitrary points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from agent.core.wire import decode_protocol_message
from agent.daemon.sessions import DecryptResult
from backends.memory import MemoryKey
from backends.software import SoftwareBackend
from tests.sessions.harness import World, entries

BOB = MemoryKey(b"\xb0" * 32)
ALICE_SECRET = b"\xa1" * 32

_CHILD = r"""
import os, sys, threading, time
from agent.daemon.sessions import SessionManager
from agent.daemon.store import Store
from backends.software import SoftwareBackend
home, bob_hex, bundle_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
backend = SoftwareBackend(os.path.join(home, "key.json"), secret_source=lambda _: "pw")
store = Store(os.path.join(home, "state.db"), backend.identity())
mgr = SessionManager(backend, store, clock=time.time_ns, rng=os.urandom, send_reserve=8)
bob = bytes.fromhex(bob_hex)
bundle = open(bundle_path, "rb").read()
out = threading.Lock()
def loop(k):
    i = 0
    while True:
        i += 1
        res = mgr.encrypt(bob, b"%d-%d" % (k, i), bundle)
        with out:
            sys.stdout.write(res.message.hex() + "\n")
            sys.stdout.flush()
ts = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
"""


def _run_until_killed(home: Path, bundle: Path, threads: int, count: int) -> list[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(home), BOB.public_key().hex(), str(bundle), str(threads)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    got: list[bytes] = []
    for line in proc.stdout:
        got.append(bytes.fromhex(line.strip()))
        if len(got) >= count:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return got


def test_kill_9_never_reuses_a_message_key_and_never_undoes_a_message(world: World) -> None:
    home = world.tmp / "alice"
    home.mkdir()
    SoftwareBackend.create(str(home / "key.json"), passphrase="pw", scrypt_n=2, identity_secret=ALICE_SECRET)
    bob = world.device("bob", BOB)
    bundle = world.tmp / "bob.bundle"
    bundle.write_bytes(bob.mgr.our_bundle())
    sent: list[bytes] = []
    for run, (threads, count) in enumerate([(1, 30), (4, 60), (1, 5), (4, 45)]):
        sent += _run_until_killed(home, bundle, threads, count)
    alice_pub = MemoryKey(ALICE_SECRET).public_key()
    seen: set[tuple[bytes, int]] = set()
    for m in sent:
        dr = entries(m)[bob.iid].DR_header
        pos = (bytes(dr.key), int(dr.n))
        assert pos not in seen, "a message key was used twice"
        seen.add(pos)
        got = bob.recv(alice_pub, m)
        assert isinstance(got, DecryptResult), got  # every printed message decrypts at the peer
        bob.mgr.confirm([got.confirm_ref])
    # after all the kills, the conversation goes on in both directions
    alice = SoftwareBackend(str(home / "key.json"), secret_source=lambda _: "pw")
    from agent.daemon.sessions import SessionManager
    from agent.daemon.store import Store

    mgr = SessionManager(alice, Store(home / "state.db", alice.identity()), clock=world.clock, rng=os.urandom)
    reply = bob.send(alice_pub, b"still here")
    assert mgr.decrypt(BOB.public_key(), reply.message).payload == b"still here"
    last = mgr.encrypt(BOB.public_key(), b"me too").message
    got = bob.recv(alice_pub, last)
    assert isinstance(got, DecryptResult) and got.payload == b"me too"
    assert len(decode_protocol_message(last).bundles) == 1
    mgr.close()


def test_concurrent_encrypts_to_one_peer_never_share_a_position(world: World) -> None:
    alice, bob = world.device("alice", MemoryKey(ALICE_SECRET), send_reserve=5), world.device("bob", BOB)
    alice.mgr.add_peer_bundle(bob.mgr.our_bundle())
    out: list[bytes] = []
    mu = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(25):
            m = alice.send(bob, b"x").message
            with mu:
                out.append(m)

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    positions = [(bytes(e.DR_header.key), e.DR_header.n) for e in (entries(m)[bob.iid] for m in out)]
    assert len(set(positions)) == len(positions) == 200
    assert sorted(n for _, n in positions) == list(range(200))  # no gaps either: no crash happened
    for m in out:
        assert isinstance(bob.recv(alice, m), DecryptResult)
