"""Benchmark: messages/s with 1, 2 and 3 agents of one SoftHSM2-held identity on one PostgreSQL store, and the
ratio to one agent on the embedded SQLite store, in the same run.

    .venv/bin/python tests/bench/bench_pg_agents.py [--seconds 5] [--clients 4] [--json FILE]

Each configuration gets a fresh token and store; ``--clients`` client threads per agent encrypt to one
in-process peer (never killed) for ``--seconds``; the rate counts encrypts the agents answered. Not a test:
nothing asserts (the correctness of what is measured is tests/daemon/test_pg_agents.py). PostgreSQL runs on a
Unix socket as the ``postgres`` user, started and stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.daemon.agentproc import KEYAGENT, AgentFactory, AgentProc  # noqa: E402
from tests.helpers.postgres import PgServer, have_postgres  # noqa: E402
from tests.helpers.softhsm import SOFTHSM_MODULE, SoftHSMToken  # noqa: E402
from tests.proof.common import Peer  # noqa: E402


def _agents(factory: AgentFactory, tok: SoftHSMToken, n: int, url: str | None) -> list[AgentProc]:
    out = []
    for i in range(n):
        home = factory.root / f"h{len(factory.agents)}"
        args = [*KEYAGENT, "--home", str(home), "init", "--backend", "pkcs11", "--module", tok.module,
                "--token", f"label:{tok.label}"]
        if url:
            args += ["--store", url] + (["--join"] if i else [])
        env = dict(tok.env, KEYAGENT_PIN=tok.pin, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        cp = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        if cp.returncode != 0:
            raise SystemExit(cp.stderr)
        a = factory.new(home=home)
        a.extra_env.update(SOFTHSM2_CONF=tok.conf, KEYAGENT_PIN=tok.pin)
        a.start(passphrase=None)
        out.append(a)
    return out


def _rate(agents: list[AgentProc], peer: Peer, clients: int, seconds: float) -> float:
    with agents[0].client() as c:
        c.add_bundle(peer.bundle())
        c.encrypt(peer.identity, b"warm up")  # the session exists before timing
    done = [0]
    mu = threading.Lock()
    stop = time.monotonic() + seconds

    def work(a: AgentProc) -> None:
        with a.client() as c:
            n = 0
            while time.monotonic() < stop:
                c.encrypt(peer.identity, b"benchmark message")
                n += 1
        with mu:
            done[0] += n

    threads = [threading.Thread(target=work, args=(a,)) for a in agents for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.monotonic() - t0)


def measure(seconds: float, clients: int) -> dict[str, float]:
    rows: dict[str, float] = {}
    with PgServer() as pg:
        for label, n, pgdb in (("sqlite 1 agent", 1, None), ("postgresql 1 agent", 1, "b1"),
                               ("postgresql 2 agents", 2, "b2"), ("postgresql 3 agents", 3, "b3")):
            factory = AgentFactory()
            peer_dir = Path(tempfile.mkdtemp(prefix="bpeer-"))
            peer = Peer(peer_dir)
            try:
                with SoftHSMToken() as tok:
                    url = None
                    if pgdb:
                        pg.sql("postgres", f"CREATE DATABASE {pgdb}")
                        url = pg.url(pgdb)
                    rows[label] = _rate(_agents(factory, tok, n, url), peer, clients, seconds)
            finally:
                factory.close()
                peer.close()
    base = rows["sqlite 1 agent"]
    for label in list(rows):
        rows[f"{label} / sqlite"] = rows[label] / base
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(SOFTHSM_MODULE) or not have_postgres():
        print("SoftHSM2 or PostgreSQL is not installed; nothing measured")
        return 0
    rows = measure(args.seconds, args.clients)
    for label, value in rows.items():
        print(f"{label:32s} {value:10.2f}" + ("" if "/" in label else " msg/s"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
