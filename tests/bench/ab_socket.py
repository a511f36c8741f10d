"""A/B of the socket rows: this checkout's agents against another commit's, interleaved in one run.

    .venv/bin/python tests/bench/ab_socket.py --against <commit> [--rounds 8]

This VM's speed drifts by tens of percent within minutes, so two ``bench_socket.py`` runs (or two report runs)
cannot tell a 5 % change from the drift. Here two pairs of agents run side by side, one pair on this checkout's
code and one on ``--against`` (checked out into a temporary git worktree): round after round, each pair does the
same ``socket x1`` and ``socket x8`` work as bench_socket.py, in alternating order, each round against the core
measured just before and after it. The core and the client threads run this checkout's code for both pairs:
only the agents differ. Prints, per pair and client count, the median ratio, every round's ratio and each
agent's CPU per message (median). Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_socket import core_rate, socket_rate  # noqa: E402
from tests.daemon.agentproc import OWNER_SIGNS, REPO, AgentFactory, AgentProc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the commit whose agents are the baseline")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    payload = os.urandom(args.size)
    tree = Path(tempfile.mkdtemp(prefix="keyagent-ab-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against], check=True,
                   capture_output=True)
    os.chdir(tempfile.gettempdir())  # `python -m agent` must not find this checkout's package in the cwd
    factory = AgentFactory()
    try:
        pairs: dict[str, tuple[AgentProc, AgentProc]] = {}
        for name, code in (("this checkout", REPO), (f"{args.against}", tree)):
            a, b = factory.new(config=OWNER_SIGNS), factory.new(config=OWNER_SIGNS)
            for agent in (a, b):
                agent.extra_env["PYTHONPATH"] = str(code)
                agent.start()
            pairs[name] = (a, b)
        for a, b in pairs.values():
            socket_rate(400, 8, payload, a, b)  # warm up: sessions, caches, connections
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {(p, c): [] for p in pairs for c in (1, 8)}
        for i in range(args.rounds):
            for clients in (1, 8):
                order = list(pairs) if i % 2 == 0 else list(reversed(pairs))
                for name in order:
                    a, b = pairs[name]
                    before = core_rate(1500, payload)
                    cpu: dict[str, float] = {}
                    rate = socket_rate(2000 if clients == 1 else 6000, clients, payload, a, b, cpu)
                    after = core_rate(1500, payload)
                    results[(name, clients)].append((rate / statistics.harmonic_mean((before, after)),
                                                     cpu["A"] * 1e6, cpu["B"] * 1e6))
        for (name, clients), got in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            ratios = [r for r, _, _ in got]
            a_us, b_us = statistics.median(a for _, a, _ in got), statistics.median(b for _, _, b in got)
            print(f"socket x{clients}  {name:<16} median {statistics.median(ratios):.3f} of core  (rounds "
                  f"{' '.join(f'{r:.3f}' for r in ratios)}; CPU per message: agent A {a_us:.0f} us, agent B "
                  f"{b_us:.0f} us)")
    finally:
        factory.close()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
