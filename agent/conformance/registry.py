"""The recogniser registry and the tree walk shared by every recogniser (see the package docstring)."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "Recogniser", "ReplayResult", "register", "recognisers", "replay_data", "replay_file"]


@dataclass
class Case:
    """One named check; ``run`` returns failure descriptions (empty = passed)."""

    name: str
    run: Callable[[], list[str]]


Recogniser = Callable[[Any, str], "Sequence[Case] | None"]

_RECOGNISERS: list[Recogniser] = []
_loaded = False


def register(fn: Recogniser) -> Recogniser:
    """Decorator: add a recogniser (called with every JSON node and its path; returns cases or None)."""
    if fn not in _RECOGNISERS:
        _RECOGNISERS.append(fn)
    return fn


def recognisers() -> list[Recogniser]:
    """All recognisers, after importing every module of this package once (auto-discovery)."""
    global _loaded
    if not _loaded:
        _loaded = True
        pkg = importlib.import_module(__package__ or "agent.conformance")
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if info.name not in ("registry", "__main__"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
    return list(_RECOGNISERS)


@dataclass
class ReplayResult:
    """Outcome of a replay: cases passed, cases failed, one line per failing field."""

    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: "ReplayResult") -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.failures += other.failures

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0


def _walk(node: Any, where: str, out: list[Case]) -> None:
    if isinstance(node, (dict, list)):
        for rec in recognisers():
            cases = rec(node, where)
            if cases is not None:
                out.extend(cases)
                return
    if isinstance(node, dict):
        for k, v in node.items():
            _walk(v, f"{where}.{k}" if where else str(k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{where}[{i}]", out)


def replay_data(data: Any, label: str = "") -> ReplayResult:
    """Replay an already-parsed vector document."""
    cases: list[Case] = []
    _walk(data, "", cases)
    result = ReplayResult()
    for case in cases:
        name = f"{label}:{case.name}" if label else case.name
        try:
            problems = case.run()
        except Exception as exc:  # a crash in a check is a failure of that case, not of the tool
            problems = [f"unexpected {type(exc).__name__}: {exc}"]
        if problems:
            result.failed += 1
            result.failures += [f"{name}: {p}" for p in problems]
        else:
            result.passed += 1
    return result


def replay_file(path: str | Path) -> ReplayResult:
    """Replay one JSON vector file; unreadable or invalid JSON counts as one failed case."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return ReplayResult(0, 1, [f"{p.name}: cannot read vectors: {exc}"])
    return replay_data(data, p.name)
