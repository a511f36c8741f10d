"""Per-client request policy: which request types each admitted client may use.

Admission (who may connect at all) is :class:`~agent.daemon.peercred.PeerPolicy`; this module decides, per
request, what an admitted client may ask:

* **Owner-only**, whatever the rules (the agent's own uid or root): ``rotate``, ``set_device``, ``release``,
  ``stop``, ``lock`` with a password (another uid could otherwise lock the owner out) and ``unlock`` with ``force``
  (it skips the final-PIN-try guard).
* **Raw key use** - ``sign`` (a 32-byte digest) and ``ecdh`` - is off for every client, the owner included,
  unless a rule that matches the client lists it (``ecdh`` also with the older global ``allow_ecdh``): a raw
  signature is a forgery oracle for every format status-go signs with the identity key.
* The **owner** may use everything else. Another admitted client gets the ``allow`` list of the first rule that
  matches it (by ``uid``, ``gid`` and ``exe``, every given field must match), or, when none matches, every request
  that is neither owner-only nor raw.

A refusal is :class:`PolicyDenied` (DENIED on the wire) naming the rule that refused, also in the audit line.
``agent.json``::

    "policy": [{"name": "custody", "uid": 1001, "allow": ["decrypt", "app_wrap", "bundle", "status"]},
               {"name": "signer", "exe": "/usr/bin/status-app", "allow": ["sign"]}]

``exe`` is ``/proc/PID/exe`` at connect time: advisory (a process can exec after connecting), so pair it with a uid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.core.error_codes import CodedError, ErrorCode
from agent.daemon.peercred import PeerCred
from agent.pb.keyagent import agent_pb2 as pb


class ClientContext(Protocol):
    """What a rule looks at of a client (``handler_api.ClientContext`` is one): its kernel credentials, its
    executable and whether it is the owner. A protocol here, so that the policy needs nothing of the handlers."""

    @property
    def cred(self) -> PeerCred: ...
    @property
    def exe(self) -> str: ...
    @property
    def owner(self) -> bool: ...

__all__ = ["PolicyRule", "Policy", "PolicyDenied", "REQUEST_TYPES", "OWNER_ONLY", "RAW", "parse_rules"]

#: Every request type of the socket API (the Request oneof).
REQUEST_TYPES = frozenset(f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name["request"].fields)
OWNER_ONLY = frozenset({"rotate", "set_device", "release", "stop"})
RAW = frozenset({"sign", "ecdh"})


class PolicyDenied(CodedError, PermissionError):
    """The agent's policy refuses this request for this client; ``rule`` names the rule that refused."""

    code = ErrorCode.DENIED

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.reason = f"rule:{rule}"


@dataclass(frozen=True)
class PolicyRule:
    """One ``policy`` entry of agent.json: a client pattern and the request types it may use."""

    name: str
    allow: frozenset[str]
    uids: frozenset[int] | None = None
    gids: frozenset[int] | None = None
    exe: str | None = None

    def matches(self, ctx: ClientContext) -> bool:
        return ((self.uids is None or ctx.cred.uid in self.uids)
                and (self.gids is None or ctx.cred.gid in self.gids)
                and (self.exe is None or ctx.exe == self.exe))


def _ids(value: Any, what: str) -> frozenset[int] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise ValueError(f"{what} must be a non-negative integer or a list of them")
    return frozenset(items)


def parse_rules(doc: Any) -> tuple[PolicyRule, ...]:
    """The ``policy`` list of agent.json; ValueError names what is wrong (the daemon refuses to start)."""
    if not isinstance(doc, list):
        raise ValueError("policy must be a list of rules")
    rules: list[PolicyRule] = []
    for i, raw in enumerate(doc):
        if not isinstance(raw, dict):
            raise ValueError(f"policy[{i}] must be an object")
        unknown = set(raw) - {"name", "uid", "gid", "exe", "allow"}
        if unknown:
            raise ValueError(f"policy[{i}]: unknown keys {', '.join(sorted(unknown))}")
        name = raw.get("name", f"policy[{i}]")
        if not isinstance(name, str) or not name:
            raise ValueError(f"policy[{i}].name must be a non-empty string")
        allow = raw.get("allow")
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise ValueError(f"policy[{i}].allow must be a list of request types")
        bad = set(allow) - REQUEST_TYPES
        if bad:
            raise ValueError(f"policy[{i}].allow: unknown request types {', '.join(sorted(bad))}")
        exe = raw.get("exe")
        if exe is not None and (not isinstance(exe, str) or not exe.startswith("/")):
            raise ValueError(f"policy[{i}].exe must be an absolute path")
        if "uid" not in raw and "gid" not in raw and exe is None:
            raise ValueError(f"policy[{i}] must name a uid, a gid or an exe")
        rules.append(PolicyRule(name, frozenset(allow), _ids(raw.get("uid"), f"policy[{i}].uid"),
                                _ids(raw.get("gid"), f"policy[{i}].gid"), exe))
    return tuple(rules)


class Policy:
    """Decides each request; raises :class:`PolicyDenied` naming the refusing rule."""

    def __init__(self, rules: tuple[PolicyRule, ...] = (), *, allow_ecdh: bool = False) -> None:
        self.rules = rules
        self.allow_ecdh = allow_ecdh

    def rule_for(self, ctx: ClientContext) -> PolicyRule | None:
        return next((r for r in self.rules if r.matches(ctx)), None)

    def check(self, kind: str, request: pb.Request, ctx: ClientContext) -> None:
        """Raise PolicyDenied unless ``ctx`` may send this request."""
        owner_only = kind in OWNER_ONLY or (kind == "lock" and bool(request.lock.password)) or (
            kind == "unlock" and request.unlock.force)
        if owner_only and not ctx.owner:
            what = {"lock": "lock with a password", "unlock": "unlock with force"}.get(kind, kind)
            raise PolicyDenied(f"only the agent's own user (or root) may {what}", rule="owner-only")
        rule = self.rule_for(ctx) if self.rules else None  # (no rules: the default; every request asks)
        if kind in RAW:
            if rule is not None and kind in rule.allow:
                return
            if kind == "ecdh" and self.allow_ecdh:
                return
            name = "raw-sign-off" if kind == "sign" else "raw-ecdh-off"
            raise PolicyDenied(f"raw {'digest signing' if kind == 'sign' else 'ECDH'} with the identity key is off "
                               f"(allow {kind} for this client with a policy rule in agent.json)", rule=name)
        if ctx.owner or owner_only:
            return
        if rule is None:
            return  # default for an admitted client: everything but owner-only and raw requests
        if kind not in rule.allow:
            raise PolicyDenied(f"policy rule {rule.name!r} does not allow {kind}", rule=rule.name)
