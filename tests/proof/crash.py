"""Crash harness: a real agent under load from several clients, SIGKILLed at random points, restarted, again.

    .venv/bin/python -m tests.proof.crash --trials 50 [--clients 6] [--seed N] [--min-run 0.05] [--max-run 0.8]
    .venv/bin/python -m tests.proof.crash --store postgresql [--agents 2] ...

Each trial restarts the agent (``keyagent start``), lets ``--clients`` client threads hammer it with a mix of
encrypt / decrypt / confirm / sign / bundle / rotate requests, and SIGKILLs it after a random delay, mid-request. A peer
(:class:`tests.proof.common.Peer`, an in-process SessionManager that is never killed) decrypts every ciphertext
the clients were handed and keeps replying, so the agent's receiving side and DH ratchet steps are exercised
too. The promises checked, over every trial (a violation is reported with the trial number and seed):

1. no (session, chain, n) is ever handed out twice with different content (DR header of every ciphertext);
2. every ciphertext a client was handed decrypts at the peer, to the payload the client sent;
3. no plaintext a client was handed is lost: after the restart the same message decrypts again to the same
   payload unless the client confirmed it — from its kept key on disk, or, when the kill came between the answer
   and the decrypt's commit (which follows the answer, sessions.py rule 8), from the ratchet state before it —
   and a confirm the agent answered is on disk (the duplicate then no longer decrypts);
4. after every kill the store passes ``PRAGMA integrity_check`` and its own invariants (``check_store``).
Finally the conversation goes on in both directions after the last restart.

``--store postgresql``: the identity lives on a fresh SoftHSM2 token and the state in a throw-away PostgreSQL
server (:mod:`tests.helpers.postgres`), the home made by ``keyagent init --store URL``; the checks after each kill
read the PostgreSQL rows (``check_pg_store``). ``--agents 2`` adds a second agent of the same identity
(``init --store URL --join``): the clients are split between the two, each trial SIGKILLs one of them at random
and the other keeps serving for a while before the checks (its requests after the kill are counted; none may
fail), so promise 1 also covers two agents handing out positions of the same sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from agent.client import AgentClient, AgentError, AgentUnavailable
from agent.core import secp256k1
from agent.daemon.sessions import DecryptResult
from backends.base import Backend
from tests.daemon.agentproc import KEYAGENT, OWNER_SIGNS, PASSPHRASE, REPO, AgentFactory, AgentProc
from tests.helpers.postgres import PgServer
from tests.helpers.softhsm import SoftHSMToken
from tests.proof.common import Peer, PositionLedger, check_pg_store, check_store, home_backend

__all__ = ["CrashResult", "run_crash_trials", "main"]

_PROVISION = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)


@dataclass
class CrashResult:
    trials: int = 0
    handed_ciphertexts: int = 0
    peer_decrypted: int = 0
    handed_plaintexts: int = 0
    rechecked_plaintexts: int = 0
    rechecked_confirms: int = 0
    signatures: int = 0
    rotations: int = 0
    requests_cut_by_kill: int = 0
    served_after_kill: int = 0  # two agents: requests the surviving agent answered after the other's kill
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.trials} trials: {self.handed_ciphertexts} ciphertexts handed out, {self.peer_decrypted} "
                f"decrypted at the peer; {self.handed_plaintexts} plaintexts handed out, "
                f"{self.rechecked_plaintexts} re-read and {self.rechecked_confirms} confirms re-checked after "
                f"restarts; {self.signatures} signatures; {self.rotations} prekey rotations; "
                f"{self.requests_cut_by_kill} requests cut by a kill; {self.served_after_kill} served by a "
                f"surviving agent after a kill; {len(self.violations)} violations")


@dataclass
class _Received:
    """A plaintext a client was handed in some trial, and what became of its confirmation."""

    message: bytes
    payload: bytes
    confirm: str  # "none" (not attempted), "ok" (the agent answered), "unknown" (cut by the kill)


class _Run:
    def __init__(self, root: Path, clients: int, seed: int, min_run: float, max_run: float,
                 token: bool = False, store: str = "sqlite", agents: int = 1) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.clients = clients
        self.min_run, self.max_run = min_run, max_run
        self.factory = AgentFactory()
        self._stack = ExitStack()
        self._backend: Backend | None = None
        self.store_url = ""
        self.killed = threading.Event()  # set between a trial's kill and its checks
        if store == "postgresql":
            self.agents = self._pg_agents(agents)
        elif agents != 1:
            raise ValueError("several agents share a PostgreSQL store only (--store postgresql)")
        elif token:
            self.agents = [self._token_agent()]
        else:
            self.agents = [self.factory.new(config=OWNER_SIGNS)]  # the workload signs raw digests
        self.alice = self.agents[0]
        self.peer = Peer(self.factory.root)
        self.ledger = PositionLedger()
        self.result = CrashResult()
        self.to_peer: queue.Queue[tuple[bytes, bytes]] = queue.Queue()  # (payload, message) Alice -> peer
        self.inbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()  # (payload, message) peer -> Alice
        self.received: list[_Received] = []
        self.handed_chain_n: list[tuple[bytes, int]] = []
        self.mu = threading.Lock()
        self.alice_id = b""
        self.peer_counter = 0
        if self._backend is None:
            self._backend = home_backend(self.alice.home, PASSPHRASE)
        self._ik = self._backend.identity()

    def _token_agent(self) -> AgentProc:
        """An agent whose identity and prekeys live on a fresh SoftHSM2 token (same provisioning as init)."""
        tok = self._stack.enter_context(SoftHSMToken())
        home = self.factory.root / "token-home"
        cp = subprocess.run([sys.executable, "-c", _PROVISION, str(home), tok.module, f"label:{tok.label}", tok.pin],
                            env=tok.env, capture_output=True, text=True, timeout=120)
        if cp.returncode != 0:
            raise RuntimeError(f"provisioning the token home failed: {cp.stderr.strip()}")
        (home / "agent.json").write_text(json.dumps(OWNER_SIGNS))
        agent = self.factory.new(home=home)
        agent.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
        tok.activate()  # this process opens the same token for the store checks
        from backends.home import load_config, open_backend

        self._backend = open_backend(load_config(str(home)), home=str(home), pin_source=lambda _: tok.pin)
        return agent

    def _pg_agents(self, n: int) -> list[AgentProc]:
        """``n`` agents of one SoftHSM2 identity whose state is one PostgreSQL database, made the way an operator
        makes them: ``init --store URL`` for the first, ``init --store URL --join`` for the others."""
        pg = self._stack.enter_context(PgServer())
        tok = self._stack.enter_context(SoftHSMToken())
        self.store_url = pg.url()
        out: list[AgentProc] = []
        for i in range(n):
            home = self.factory.root / f"pg-home-{i}"
            cp = subprocess.run([*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", tok.module,
                                 "--token", f"label:{tok.label}", "--store", self.store_url, *(["--join"] if i else [])],
                                env=dict(tok.env, KEYAGENT_PIN=tok.pin, PYTHONPATH=str(REPO)), capture_output=True,
                                text=True, timeout=120)
            if cp.returncode != 0:
                raise RuntimeError(f"init --store{' --join' if i else ''} failed: {cp.stderr.strip()}")
            (home / "agent.json").write_text(json.dumps(OWNER_SIGNS))
            agent = self.factory.new(home=home)
            agent.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
            out.append(agent)
        tok.activate()  # this process opens the same token for the store checks
        from backends.home import load_config, open_backend

        home0 = str(out[0].home)
        self._backend = open_backend(load_config(home0), home=home0, pin_source=lambda _: tok.pin)
        return out

    def _live_agent(self) -> AgentProc:
        return next(a for a in self.agents if a.pid and a.alive())

    def violation(self, trial: int, text: str) -> None:
        with self.mu:
            self.result.violations.append(f"trial {trial} (seed {self.seed}): {text}")

    # --- the peer --------------------------------------------------------------------------------------------
    def peer_take(self, trial: int, payload: bytes, message: bytes) -> None:
        try:
            got = self.peer.mgr.decrypt(self.alice_id, message)
        except Exception as exc:  # noqa: BLE001 - every failure is a broken promise
            self.violation(trial, f"a handed-out ciphertext does not decrypt at the peer: {type(exc).__name__}: {exc}")
            return
        if not isinstance(got, DecryptResult) or got.payload != payload:
            self.violation(trial, "the peer decrypted a handed-out ciphertext to another payload")
            return
        self.peer.mgr.confirm([got.confirm_ref])
        with self.mu:
            self.result.peer_decrypted += 1
            self.peer_counter += 1
            reply_due = self.peer_counter % 3 == 0
        if reply_due:  # answer now and then: the agent's next decrypt steps its DH ratchet (a new sending chain)
            text = f"peer {self.peer_counter}".encode()
            self.inbox.put((text, self.peer.mgr.encrypt(self.alice_id, text).message))

    def peer_loop(self, trial: int, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                payload, message = self.to_peer.get(timeout=0.02)
            except queue.Empty:
                continue
            self.peer_take(trial, payload, message)

    def drain_peer(self, trial: int) -> None:
        while True:
            try:
                payload, message = self.to_peer.get_nowait()
            except queue.Empty:
                return
            self.peer_take(trial, payload, message)

    # --- the clients -----------------------------------------------------------------------------------------
    def client_loop(self, trial: int, k: int, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        agent = self.agents[k % len(self.agents)]
        try:
            client = AgentClient(agent.sock, timeout=30).connect()
        except AgentUnavailable:
            return  # killed before this client got in
        i = 0
        in_flight: tuple[bytes, bytes] | None = None
        after_kill = False
        try:
            while not stop.is_set():
                i += 1
                if after_kill:  # the previous request was sent after the other agent's kill, and answered
                    with self.mu:
                        self.result.served_after_kill += 1
                after_kill = self.killed.is_set()
                op = rng.random()
                if op < 0.35:
                    try:
                        in_flight = self.inbox.get_nowait()
                    except queue.Empty:
                        in_flight = None
                if in_flight is not None:
                    payload, message = in_flight
                    got = client.decrypt(self.peer.identity, message)
                    in_flight = None
                    if got.payload != payload:
                        self.violation(trial, "the agent decrypted a peer message to another payload")
                        continue
                    rec = _Received(message, payload, "none")
                    with self.mu:
                        self.received.append(rec)
                        self.result.handed_plaintexts += 1
                    if rng.random() < 0.5:
                        rec.confirm = "unknown"
                        client.confirm([got.confirm_ref])
                        rec.confirm = "ok"
                elif op < 0.85:
                    payload = f"t{trial} c{k} m{i}".encode()
                    msg = client.encrypt(self.peer.identity, payload).message
                    positions = self.ledger.add(msg)
                    with self.mu:
                        self.result.handed_ciphertexts += 1
                        self.handed_chain_n.extend((chain, n) for _, _, chain, n in positions)
                    self.to_peer.put((payload, msg))
                elif op < 0.94:
                    digest = rng.randbytes(32)
                    sig = client.sign(digest)
                    if secp256k1.recover(digest, sig) != self.alice_id:
                        self.violation(trial, "a signature does not recover to the agent's identity")
                    with self.mu:
                        self.result.signatures += 1
                elif op < 0.98:
                    client.bundle()
                else:  # a signed-prekey rotation: token/key-file write, then the store write; a kill may split them
                    client.rotate(force=True)  # the crash harness rotates on purpose: skip the rate limit
                    with self.mu:
                        self.result.rotations += 1
        except AgentUnavailable:
            with self.mu:
                self.result.requests_cut_by_kill += 1
            if in_flight is not None:
                self.inbox.put(in_flight)  # never answered: deliver it again after the restart (a duplicate is fine)
        except AgentError as exc:
            self.violation(trial, f"unexpected agent error {exc.code}: {exc.message}")
        finally:
            client.close()

    # --- after a restart: were the handed-out plaintexts and confirms committed? ---------------------------
    def recheck(self, trial: int) -> None:
        with self.mu:
            received, self.received = self.received, []
        with AgentClient(self._live_agent().sock) as c:
            for rec in received:
                if rec.confirm == "unknown":
                    continue  # the confirm was cut by the kill: either outcome is allowed
                try:
                    got = c.decrypt(self.peer.identity, rec.message)
                except AgentError as exc:
                    if rec.confirm == "ok" and exc.code == "DECRYPT_FAILED":
                        self.result.rechecked_confirms += 1  # the confirm was durable: the key is gone
                    else:
                        self.violation(trial, f"a handed-out plaintext was lost by the crash ({exc.code}: "
                                              f"{exc.message})")
                    continue
                if rec.confirm == "ok":
                    self.violation(trial, "a confirm the agent answered was undone by the crash")
                elif got.payload != rec.payload:
                    self.violation(trial, "a message decrypted to another payload after the restart")
                else:
                    self.result.rechecked_plaintexts += 1
                    c.confirm([got.confirm_ref])

    def check_rekeyed(self, trial: int, restarted: list[AgentProc]) -> None:
        """The rollback anchor after a kill (agent/daemon/rollback.py): an agent on its own store must have
        re-keyed (its anchor said "running"); on a shared store a killed agent re-keys nobody."""
        for agent in restarted:
            with AgentClient(agent.sock) as c:
                st = c.status()
            if self.store_url and st.rekeyed:
                self.violation(trial, f"a kill re-keyed a shared store's sessions: {st.rekeyed}")
            elif not self.store_url and "did not stop cleanly" not in st.rekeyed:
                self.violation(trial, f"the restart after a kill did not re-key (rekeyed: {st.rekeyed!r})")

    # --- one trial --------------------------------------------------------------------------------------------
    def trial(self, t: int) -> None:
        restarted = [agent for agent in self.agents if not (agent.pid and agent.alive())]
        for agent in restarted:
            agent.start()
        self.killed.clear()
        self.recheck(t)
        self.check_rekeyed(t, restarted)
        stop = threading.Event()
        peer_thread = threading.Thread(target=self.peer_loop, args=(t, stop), daemon=True)
        peer_thread.start()
        threads = [threading.Thread(target=self.client_loop, args=(t, k, stop, self.rng.getrandbits(64)), daemon=True)
                   for k in range(self.clients)]
        for th in threads:
            th.start()
        time.sleep(self.rng.uniform(self.min_run, self.max_run))
        victim = self.rng.choice(self.agents)
        os.kill(victim.pid, signal.SIGKILL)  # mid-request: no clean shutdown, no final write
        if not victim.wait_exit(30):
            raise RuntimeError("the killed agent did not exit")
        if len(self.agents) > 1:  # the others go on at once: the database released the victim's lock
            self.killed.set()
            time.sleep(self.rng.uniform(0.2, 0.4))
        stop.set()
        for th in threads:
            th.join(60)
        peer_thread.join(60)
        self.drain_peer(t)
        with self.mu:
            handed = list(self.handed_chain_n)
        if self.store_url:
            report = check_pg_store(self.store_url, self._ik, handed=handed)
        else:
            report = check_store(self.alice.home / "state.db", self._ik, handed=handed, scratch=self.factory.root)
        for problem in report.problems:
            self.violation(t, f"store check: {problem}")
        self.result.trials += 1

    def setup(self) -> None:
        self.alice.start()
        with AgentClient(self.alice.sock) as c:
            self.alice_id = c.identity().identity_public_key
            first = c.encrypt(self.peer.identity, b"hello", self.peer.bundle()).message
        self.ledger.add(first)
        self.peer_take(0, b"hello", first)
        os.kill(self.alice.pid, signal.SIGKILL)
        self.alice.wait_exit(30)

    def finish(self) -> None:
        """After the last kill: restart, re-check, and the conversation still goes both ways (through every
        agent when there are several)."""
        for agent in self.agents:
            if not (agent.pid and agent.alive()):
                agent.start()
        self.recheck(-1)
        for agent in self.agents[1:]:
            with AgentClient(agent.sock) as c:
                msg = c.encrypt(self.peer.identity, b"after all the kills, other agent").message
            self.ledger.add(msg)
            self.peer_take(-1, b"after all the kills, other agent", msg)
        with AgentClient(self.alice.sock) as c:
            msg = c.encrypt(self.peer.identity, b"after all the kills").message
            self.ledger.add(msg)
            self.peer_take(-1, b"after all the kills", msg)
            while True:  # deliver whatever the peer still has queued for us, then one fresh reply
                try:
                    payload, message = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if c.decrypt(self.peer.identity, message).payload != payload:
                    self.violation(-1, "a queued peer message decrypted to another payload")
            reply = self.peer.mgr.encrypt(self.alice_id, b"still here").message
            if c.decrypt(self.peer.identity, reply).payload != b"still here":
                self.violation(-1, "the conversation does not go on after the last restart")
        self.drain_peer(-1)

    def close(self) -> None:
        try:
            self.peer.close()
        finally:
            try:
                self.factory.close()
            finally:
                if self._backend is not None:
                    self._backend.close()
                self._stack.close()


def run_crash_trials(trials: int, *, clients: int = 6, seed: int | None = None, min_run: float = 0.05,
                     max_run: float = 0.8, root: Path | None = None, progress: bool = False,
                     token: bool = False, store: str = "sqlite", agents: int = 1) -> CrashResult:
    """Run the harness; the result lists every violated promise (empty = all held). ``token``: the agent's
    identity and prekeys live on a fresh SoftHSM2 token instead of a software key file. ``store="postgresql"``:
    the state lives in a throw-away PostgreSQL server (identity on a token), shared by ``agents`` agents."""
    seed = random.SystemRandom().getrandbits(32) if seed is None else seed
    run = _Run(root or Path("/tmp"), clients, seed, min_run, max_run, token, store, agents)
    try:
        run.setup()
        for t in range(1, trials + 1):
            run.trial(t)
            if progress:
                print(f"trial {t}/{trials}: {run.result.summary()}", flush=True)
        run.finish()
        run.result.violations.extend(f"(session, chain, n) {p[3]} handed out twice with different content"
                                     for p in run.ledger.reuses)
        return run.result
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--min-run", type=float, default=0.05, help="shortest time before the kill (s)")
    ap.add_argument("--max-run", type=float, default=0.8, help="longest time before the kill (s)")
    ap.add_argument("--token", action="store_true", help="identity on a fresh SoftHSM2 token (PKCS#11 backend)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: state in a throw-away PostgreSQL server, identity on a SoftHSM2 token")
    ap.add_argument("--agents", type=int, default=1, help="with --store postgresql: agents sharing the store")
    args = ap.parse_args(argv)
    seed = random.SystemRandom().getrandbits(32) if args.seed is None else args.seed
    print(f"crash harness: {args.trials} trials, {args.clients} clients, seed {seed}"
          f"{', SoftHSM2 token' if args.token or args.store == 'postgresql' else ''}"
          f"{f', PostgreSQL store, {args.agents} agent(s)' if args.store == 'postgresql' else ''}", flush=True)
    result = run_crash_trials(args.trials, clients=args.clients, seed=seed, min_run=args.min_run,
                              max_run=args.max_run, progress=True, token=args.token, store=args.store,
                              agents=args.agents)
    print(result.summary())
    for v in result.violations:
        print("VIOLATION:", v)
    print("all promises held" if not result.violations else "PROMISES BROKEN")
    return 0 if not result.violations else 1


if __name__ == "__main__":
    sys.exit(main())
