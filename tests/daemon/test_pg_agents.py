"""Several agents of one SoftHSM2-held identity serving at once from one PostgreSQL store (a real server the
tests start as the ``postgres`` user on a Unix socket), talking to a peer that is never killed.

What must hold, whatever happens to an agent or the database: every ciphertext any agent handed out decrypts at
the peer, and no (session, chain, n) is ever handed out twice with different content (a message key used twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.client import AgentClient, AgentError, AgentUnavailable
from tests.daemon.agentproc import KEYAGENT, AgentFactory, AgentProc
from tests.helpers.postgres import PgServer, require_postgres
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken
from tests.proof.common import Peer, PositionLedger

pytestmark = pytest.mark.skipif(not os.path.exists(SOFTHSM_MODULE), reason="SoftHSM2 is not installed")


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    require_postgres()
    with PgServer() as server:
        yield server


_DB_N = [0]


@pytest.fixture
def db_url(pg: PgServer) -> str:
    """A fresh database per test on the module's server."""
    _DB_N[0] += 1
    name = f"ka{os.getpid()}_{_DB_N[0]}"
    pg.sql("postgres", f"CREATE DATABASE {name}")
    return pg.url(name)


@pytest.fixture
def token() -> Iterator[SoftHSMToken]:
    with SoftHSMToken() as tok:
        yield tok


def _init(agents: AgentFactory, tok: SoftHSMToken, url: str, *, join: bool) -> AgentProc:
    home = agents.root / f"pg-home-{len(agents.agents)}"
    env = dict(tok.env, KEYAGENT_PIN=tok.pin, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    args = [*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", tok.module,
            "--token", f"label:{tok.label}", "--store", url] + (["--join"] if join else [])
    cp = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    agent = agents.new(home=home)
    agent.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
    return agent


def _agents(agents: AgentFactory, tok: SoftHSMToken, url: str, n: int) -> list[AgentProc]:
    out = [_init(agents, tok, url, join=i > 0) for i in range(n)]
    for a in out:
        a.start(passphrase=None)
    return out


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path)
    yield p
    p.close()


class _Load:
    """Client threads encrypting to the peer through given agents; records what each was handed."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.ledger = PositionLedger()
        self.handed: list[tuple[bytes, bytes]] = []  # (message, payload)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._mu = threading.Lock()
        self._n = 0

    def run(self, agent: AgentProc, count: int | None = None) -> threading.Thread:
        def work() -> None:
            client: AgentClient | None = None
            i = 0
            while not self.stop.is_set() and (count is None or i < count):
                i += 1
                with self._mu:
                    self._n += 1
                    payload = f"msg {self._n}".encode()
                try:
                    if client is None:
                        client = agent.client()
                    got = client.encrypt(self.peer.identity, payload)
                except (AgentError, AgentUnavailable, OSError) as exc:
                    with self._mu:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    if client is not None:
                        client.close()
                        client = None
                    time.sleep(0.05)
                    continue
                self.ledger.add(got.message)
                with self._mu:
                    self.handed.append((got.message, payload))
            if client is not None:
                client.close()

        t = threading.Thread(target=work, daemon=True)
        t.start()
        return t

    def check_peer(self, sender: bytes) -> None:
        """Every handed-out ciphertext decrypts at the peer to its payload, and no key was used twice."""
        assert self.ledger.reuses == [], f"message keys used twice: {self.ledger.reuses[:3]}"
        for message, payload in self.handed:
            assert self.peer.mgr.decrypt(sender, message).payload == payload


def _identity(a: AgentProc) -> bytes:
    with a.client() as c:
        return c.identity().identity_public_key


def _installation(a: AgentProc) -> str:
    with a.client() as c:
        return c.identity().installation_id


def _add_peer(a: AgentProc, peer: Peer) -> None:
    with a.client() as c:
        c.add_bundle(peer.bundle())


def test_three_agents_share_one_identity_and_split_concurrent_encrypts(
        agents: AgentFactory, token: SoftHSMToken, db_url: str, peer: Peer) -> None:
    trio = _agents(agents, token, db_url, 3)
    ids = {_identity(a) for a in trio}
    assert len(ids) == 1
    me = ids.pop()
    assert len({_installation(a) for a in trio}) == 1  # one installation, served by three agents
    _add_peer(trio[0], peer)  # one agent learns the peer's bundle: all of them know it (the shared store)

    load = _Load(peer)
    threads = [load.run(a, 40) for a in trio for _ in range(2)]
    for t in threads:
        t.join(120)
    assert not load.errors, load.errors[:3]
    assert len(load.handed) == 240
    load.check_peer(me)

    # the peer answers; whichever agent reads it, it decrypts, and the conversation goes on from every agent
    for i, a in enumerate(trio):
        reply = peer.mgr.encrypt(me, f"reply {i}".encode())
        with a.client() as c:
            assert c.decrypt(peer.identity, reply.message).payload == f"reply {i}".encode()
    for i, a in enumerate(trio):
        with a.client() as c:
            m = c.encrypt(peer.identity, f"after {i}".encode()).message
        assert peer.mgr.decrypt(me, m).payload == f"after {i}".encode()
    # one prekey rotation through one agent happens once and is seen by all: their bundles name one SPK
    from agent.core.wire import decode_bundle

    with trio[1].client() as c:
        c.rotate(force=True)  # a new identity's prekey is seconds old: past the rotation rate limit as the owner
    spks = set()
    for a in trio:
        with a.client() as c:
            b = decode_bundle(c.bundle())
        spks.add(tuple(sorted((k, bytes(v.signed_pre_key), v.version) for k, v in b.signed_pre_keys.items())))
    assert len(spks) == 1
    ((_iid, _spk, version),) = spks.pop()
    assert version == 2

    # doctor checks the store and names the three agents that share it (alive per the server's session list)
    cp = subprocess.run([*KEYAGENT, "--home", str(trio[0].home), "doctor", "--check", "store"], env=trio[0].env,
                        capture_output=True, text=True, timeout=60)
    assert "agents sharing it" in cp.stdout, cp.stdout + cp.stderr
    for a in trio:
        assert f"pid {a.pid}" in cp.stdout


def test_kill_9_of_one_agent_mid_load_the_others_go_on_at_once(
        agents: AgentFactory, token: SoftHSMToken, db_url: str, peer: Peer) -> None:
    a, b = _agents(agents, token, db_url, 2)
    me = _identity(a)
    _add_peer(a, peer)
    load = _Load(peer)
    threads = [load.run(x) for x in (a, b, a, b)]
    time.sleep(1.5)
    os.kill(a.pid, signal.SIGKILL)
    a.wait_exit(10)
    killed_at = time.monotonic()
    # b answers at once: its next encrypt does not wait for any timeout (the lock went with a's connection)
    with b.client() as c:
        c.encrypt(peer.identity, b"right after the kill")
    assert time.monotonic() - killed_at < 3.0
    time.sleep(1.0)
    load.stop.set()
    for t in threads:
        t.join(60)
    assert all("cannot be reached" not in e for e in load.errors), load.errors[:3]
    load.check_peer(me)
    # the killed agent comes back and continues beyond every position the others handed out
    a.start(passphrase=None)
    load2 = _Load(peer)
    load2.ledger.seen = dict(load.ledger.seen)
    for t in [load2.run(x, 20) for x in (a, b)]:
        t.join(60)
    assert not load2.errors, load2.errors[:3]
    load2.check_peer(me)


def test_database_restarted_under_load_clear_errors_then_nothing_lost(
        agents: AgentFactory, token: SoftHSMToken, db_url: str, peer: Peer, pg: PgServer) -> None:
    a, b = _agents(agents, token, db_url, 2)
    me = _identity(a)
    _add_peer(a, peer)
    load = _Load(peer)
    threads = [load.run(x) for x in (a, b)]
    time.sleep(1.0)
    pg.stop()
    time.sleep(1.5)
    # while it is away: a clear error, not a hang and not a crash
    with b.client() as c:
        with pytest.raises(AgentError) as err:
            for i in range(200):  # positions below a durable mark need no database; the next mark does
                c.encrypt(peer.identity, f"away {i}".encode())
        assert err.value.code == "STATE_ERROR" and "database" in err.value.message
    pg.start()
    time.sleep(2.0)
    load.stop.set()
    for t in threads:
        t.join(60)
    assert a.alive() and b.alive()
    n_before = len(load.handed)
    assert n_before > 0
    # after: both agents serve again, nothing they handed out is lost or reused
    load2 = _Load(peer)
    load2.ledger.seen = dict(load.ledger.seen)
    for t in [load2.run(x, 20) for x in (a, b)]:
        t.join(60)
    assert not load2.errors, load2.errors[:3]
    load.check_peer(me)
    load2.check_peer(me)


def test_init_refuses_a_password_in_the_url_and_a_passfile_works(
        agents: AgentFactory, token: SoftHSMToken, tmp_path: Path) -> None:
    require_postgres()
    with PgServer(password="s3cret-pw", port=5433) as server:
        home = agents.root / "pw-home"
        env = dict(token.env, KEYAGENT_PIN=token.pin, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        base = [*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", token.module,
                "--token", f"label:{token.label}"]
        cp = subprocess.run([*base, "--store", server.url() + "&password=s3cret-pw"], env=env, capture_output=True,
                            text=True, timeout=120)
        assert cp.returncode != 0 and "passfile" in cp.stderr
        assert not (home / "config.json").exists()
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"*:*:*:{server.user}:s3cret-pw\n")
        passfile.chmod(0o600)
        url = server.url() + f"&passfile={passfile}"
        cp = subprocess.run([*base, "--store", url], env=env, capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        cfg = json.loads((home / "config.json").read_text())
        assert cfg["store"] == {"kind": "postgresql", "url": url} and "s3cret" not in json.dumps(cfg)
        agent = agents.new(home=home)
        agent.extra_env.update(SOFTHSM2_CONF=token.conf, KEYAGENT_PIN=token.pin)
        agent.start(passphrase=None)
        with agent.client() as c:
            assert c.bundle()
        agent.kill()


def test_join_refuses_another_identity(agents: AgentFactory, db_url: str) -> None:
    with SoftHSMToken() as t1, SoftHSMToken() as t2:
        _init(agents, t1, db_url, join=False)
        home = agents.root / "stranger"
        env = dict(t2.env, KEYAGENT_PIN=t2.pin, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        cp = subprocess.run([*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", t2.module,
                             "--token", f"label:{t2.label}", "--store", db_url, "--join"],
                            env=env, capture_output=True, text=True, timeout=120)
        assert cp.returncode != 0
        assert not (home / "config.json").exists()


def _private_keys(tok: SoftHSMToken) -> int:
    return tok.pkcs11_tool("--list-objects", "--type", "privkey", login=True).count("Private Key Object")


def test_init_store_failure_leaves_no_keys_behind(agents: AgentFactory, token: SoftHSMToken, db_url: str,
                                                  tmp_path: Path) -> None:
    """An init --store that cannot create the store (the database already holds one: --join was meant; the
    database is away) removes the token keys and the key file it had just made, not only the config."""
    _init(agents, token, db_url, join=False)
    assert _private_keys(token) == 2  # the store's identity key and its first signed prekey
    env = dict(token.env, KEYAGENT_PIN=token.pin, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    away = f"postgresql:///keyagent?host={tmp_path / 'no-such-server'}&user=keyagent"
    for n, url in enumerate((db_url, away)):
        home = agents.root / f"failed-{n}"
        cp = subprocess.run([*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", token.module,
                             "--token", f"label:{token.label}", "--store", url], env=env, capture_output=True,
                            text=True, timeout=120)
        assert cp.returncode != 0
        assert ("--join" in cp.stderr) if n == 0 else ("cannot be reached" in cp.stderr), cp.stderr
        assert not (home / "config.json").exists()
        assert _private_keys(token) == 2, f"init --store left keys on the token ({cp.stderr.strip()})"
    # a software home: its key file goes too
    home = agents.root / "failed-sw"
    cp = subprocess.run([*KEYAGENT, "--home", str(home), "init", "--backend", "software", "--scrypt-n", "4096",
                         "--store", away], env=dict(env, KEYAGENT_PASSPHRASE="pw for the test"),
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode != 0 and "cannot be reached" in cp.stderr, cp.stderr
    assert not (home / "config.json").exists() and not (home / "identity.key").exists()


def _status(a: AgentProc) -> object:
    with a.client() as c:
        return c.status()


def test_a_restored_database_re_keys_and_a_crashed_agent_does_not_re_key_the_others(
        agents: AgentFactory, token: SoftHSMToken, db_url: str, peer: Peer, pg: PgServer) -> None:
    """Issue 15 with a shared store: the database restored from a backup is behind the token's anchor, so the
    agents re-key before sending (no message key twice); one agent's kill -9 re-keys nobody."""
    a, b = _agents(agents, token, db_url, 2)
    me = _identity(a)
    _add_peer(a, peer)
    load = _Load(peer)
    for t in [load.run(x, 10) for x in (a, b)]:
        t.join(60)
    keys_before = {pos[2] for pos in load.ledger.seen}
    os.kill(a.pid, signal.SIGKILL)  # a crash of one agent...
    a.wait_exit(10)
    a.start(passphrase=None)
    for x in (a, b):  # ... re-keys nobody: the shared epoch has no "running" to leave behind
        st = _status(x)
        assert st.rekeyed == "" and st.anchor == "token + shared database"  # type: ignore[attr-defined]
    for t in [load.run(x, 5) for x in (a, b)]:
        t.join(60)
    assert {pos[2] for pos in load.ledger.seen} == keys_before  # the same sessions went on
    # a backup of the database, taken while the agents are stopped
    a.kill()
    b.kill()
    name = db_url.split("///")[1].split("?")[0]
    pg.sql("postgres", f"CREATE DATABASE {name}_backup TEMPLATE {name}")
    a.start(passphrase=None)
    b.start(passphrase=None)
    for t in [load.run(x, 10) for x in (a, b)]:
        t.join(60)
    a.kill()
    b.kill()
    pg.sql("postgres", f"DROP DATABASE {name}")
    pg.sql("postgres", f"ALTER DATABASE {name}_backup RENAME TO {name}")  # the restore
    a.start(passphrase=None)
    b.start(passphrase=None)
    for t in [load.run(x, 10) for x in (a, b)]:
        t.join(60)
    assert not load.errors, load.errors[:3]
    load.check_peer(me)  # every message decrypts, none reused a position
    assert "older than its anchor" in _status(a).rekeyed  # type: ignore[attr-defined]
