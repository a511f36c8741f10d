"""``keyagent vectors replay FILE...``: check known-answer vector files against this implementation."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run_replay"]


def run_replay(files: list[str]) -> int:
    """Print one line per failing field, then ``N passed, M failed``; 0 only if M == 0 and N > 0."""
    from agent.conformance import ReplayResult, replay_file

    total = ReplayResult()
    for f in files:
        total.merge(replay_file(f))
    for line in total.failures:
        print(line)
    print(f"{total.passed} passed, {total.failed} failed")
    return 0 if total.ok else 1


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``vectors replay``."""
    p = subparsers.add_parser("vectors", parents=[common], help="known-answer vectors (conformance)")
    sub = p.add_subparsers(dest="vectors_command", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("replay", parents=[common], help="replay vector files; recognises cases by shape")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.set_defaults(func=lambda args: run_replay(args.files))
