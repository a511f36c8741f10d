"""``keyagent vectors replay``: replay known-answer vector files through the library's real code paths.

Cases are recognised by their *shape*, never by file or key names: the replayer walks the JSON tree and
offers every object and list to each registered recogniser; the first one that claims a node turns it
into cases and the walk does not descend into it.

Adding a recogniser (e.g. Waku payloads, Status identities) is one new module in this package::

    # agent/conformance/waku.py
    from agent.conformance.registry import Case, register

    @register
    def waku_envelope(node: object, where: str) -> list[Case] | None:
        if not (isinstance(node, dict) and "payload" in node and "envelope" in node):
            return None                      # not mine: the walk goes on
        return [Case(f"{where}", lambda: check(node))]   # check() returns failure strings

Every module in ``agent/conformance/`` is imported on first use, so nothing else needs editing.
A check returns a list of failure lines (``"field: expected …, got …"``); an empty list means pass.
"""

from __future__ import annotations

from .registry import Case, ReplayResult, register, replay_data, replay_file

__all__ = ["Case", "ReplayResult", "register", "replay_data", "replay_file"]
