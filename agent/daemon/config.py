"""The agent's home and policy: where its files live and what the daemon allows.

One home per identity (``--home DIR`` / ``KEYAGENT_HOME``, default in :mod:`agent.paths`), so several agents
run side by side. The daemon's policy lives in ``agent.json`` in the home (every key optional); command-line
options override it. The backend's own configuration (token or key file) is read by :mod:`backends`, not here.

Layout::

    HOME/agent.json   daemon policy (this module)
    HOME/state.db     session store (agent/daemon/store/sqlite.py), SQLite WAL
    HOME/audit.log    one JSON line per request (agent/daemon/audit.py)
    HOME/agent.log    the daemon's stderr when started in the background
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from agent.core.error_codes import CodedError, ErrorCode
from agent.daemon.policy import PolicyRule, parse_rules
from agent.framing import MAX_FRAME

__all__ = [
    "AgentConfig",
    "ConfigError",
    "Home",
    "load_config",
    "CONFIRMABLE_OPS",
]


class ConfigError(CodedError, ValueError):
    """``agent.json`` or an option is malformed: fix it (the daemon refuses to start rather than guess)."""

    code = ErrorCode.BAD_CONFIG


@dataclass(frozen=True)
class Home:
    """Paths inside one agent home."""

    path: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> "Home":
        return cls(Path(os.path.abspath(os.path.expanduser(os.fspath(path)))))

    @property
    def config(self) -> Path:
        return self.path / "agent.json"

    @property
    def state(self) -> Path:
        return self.path / "state.db"

    @property
    def audit(self) -> Path:
        return self.path / "audit.log"

    @property
    def log(self) -> Path:
        return self.path / "agent.log"


@dataclass(frozen=True)
class AgentConfig:
    """Daemon policy. Every limit exists so one client cannot starve or exhaust the agent."""

    max_frame: int = MAX_FRAME  # bytes per request frame; 0 or more closes the connection
    max_connections: int = 64  # concurrent client connections; more are closed at once
    # Slots (agent/daemon/admission.py): a uid other than ours and root holds at most this many connections...
    max_connections_per_uid: int = 16
    # ...and this many of max_connections (at most half) are kept for the owner, so an admitted uid holding every
    # other slot cannot lock the owner out.
    owner_reserved_connections: int = 8
    request_timeout: float = 30.0  # seconds a request may take (a slow token cannot hang a client forever)
    frame_timeout: float = 10.0  # seconds a started frame may take to arrive (slow-loris)
    idle_timeout: float = 300.0  # seconds a connection may sit between requests (frees idle slots); 0 = no limit
    workers: int = 16  # threads running requests (concurrent encrypts share one store commit)
    allow_uids: tuple[int, ...] = ()  # besides our own uid and root
    allow_gids: tuple[int, ...] = ()
    allow_ecdh: bool = False  # raw ECDH with IK is a decryption oracle: off unless the owner turns it on
    unlock_ttl: float = 0.0  # seconds after an unlock before the agent locks itself; 0 = never
    socket_check_interval: float = 1.0  # seconds between checks that our socket file still exists
    # Log caps (agent/daemon/logcap.py): each log rotates before it passes *_max_bytes and keeps *_backups old
    # files, so a home holds at most 3 x 2 MiB of audit log and 2 x 512 KiB of agent log (7 MiB) by default.
    audit_log_max_bytes: int = 2 * 1024 * 1024
    audit_log_backups: int = 2
    agent_log_max_bytes: int = 512 * 1024
    agent_log_backups: int = 1
    # Refused connections (and broken frames) are logged at most this many times per uid per window.
    refusal_log_burst: int = 10
    refusal_log_window: float = 60.0
    # Optional per-operation confirmation hook: before each request type in ``confirm_ops`` the agent runs
    # ``confirm_command`` (argv list, no shell) with KEYAGENT_CONFIRM_* variables describing the request and the
    # client; exit status 0 allows it, anything else (or ``confirm_timeout`` elapsing) refuses with DENIED.
    confirm_command: tuple[str, ...] = ()
    confirm_ops: tuple[str, ...] = ()
    confirm_timeout: float = 60.0
    # Per-client request policy (agent/daemon/policy.py): rules by uid, gid and exe path -> allowed request types.
    policy: tuple[PolicyRule, ...] = ()
    # Seconds between two signed-prekey rotations on request (the owner's force skips the wait).
    rotate_interval: float = 3600.0
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown keys are kept for forward compatibility

    def with_overrides(self, **changes: Any) -> "AgentConfig":
        """A copy with the non-None ``changes`` applied and validated."""
        return _validated(replace(self, **{k: v for k, v in changes.items() if v is not None}))


_INTS = {"max_frame", "max_connections", "workers", "max_connections_per_uid", "owner_reserved_connections",
         "audit_log_max_bytes", "audit_log_backups", "agent_log_max_bytes", "agent_log_backups", "refusal_log_burst"}
_FLOATS = {"request_timeout", "frame_timeout", "idle_timeout", "unlock_ttl", "socket_check_interval",
           "confirm_timeout", "refusal_log_window", "rotate_interval"}
_STR_LISTS = {"confirm_command", "confirm_ops"}
CONFIRMABLE_OPS = frozenset({"sign", "encrypt", "decrypt", "ecdh", "rotate", "add_bundle"})
_ID_LISTS = {"allow_uids", "allow_gids"}
_BOOLS = {"allow_ecdh"}


def _validated(cfg: AgentConfig) -> AgentConfig:
    if not 16 <= cfg.max_frame <= 64 * 1024 * 1024:
        raise ConfigError("max_frame must be between 16 bytes and 64 MiB")
    if not 1 <= cfg.max_connections <= 4096:
        raise ConfigError("max_connections must be between 1 and 4096")
    if not 1 <= cfg.workers <= 256:
        raise ConfigError("workers must be between 1 and 256")
    if not 1 <= cfg.max_connections_per_uid <= 4096:
        raise ConfigError("max_connections_per_uid must be between 1 and 4096")
    if not 0 <= cfg.owner_reserved_connections <= 4096:
        raise ConfigError("owner_reserved_connections must be between 0 and 4096")
    for name in ("audit_log_max_bytes", "agent_log_max_bytes"):
        if not 64 * 1024 <= getattr(cfg, name) <= 1024 ** 3:
            raise ConfigError(f"{name} must be between 64 KiB and 1 GiB")
    for name in ("audit_log_backups", "agent_log_backups"):
        if not 0 <= getattr(cfg, name) <= 100:
            raise ConfigError(f"{name} must be between 0 and 100")
    if not 1 <= cfg.refusal_log_burst <= 100000:
        raise ConfigError("refusal_log_burst must be between 1 and 100000")
    for name in ("request_timeout", "frame_timeout", "socket_check_interval", "refusal_log_window"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive")
    for name in ("idle_timeout", "unlock_ttl", "rotate_interval"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if not cfg.confirm_timeout > 0:
        raise ConfigError("confirm_timeout must be positive")
    unknown = set(cfg.confirm_ops) - CONFIRMABLE_OPS
    if unknown:
        raise ConfigError(f"confirm_ops: cannot confirm {', '.join(sorted(unknown))}; "
                          f"choose from {', '.join(sorted(CONFIRMABLE_OPS))}")
    if cfg.confirm_ops and not cfg.confirm_command:
        raise ConfigError("confirm_ops needs a confirm_command")
    for ids in (cfg.allow_uids, cfg.allow_gids):
        if any(i < 0 for i in ids):
            raise ConfigError("uids and gids must not be negative")
    return cfg


def load_config(home: Home) -> AgentConfig:
    """Read ``agent.json`` if present (absent = defaults); type-check every known key.

    The home and the file are verified first (UnsafeHome): agent.json may name a ``confirm_command`` that runs
    as the owner, so it is only obeyed when nobody else can have written it. Opened with O_NOFOLLOW."""
    from agent.home_trust import check_home, check_home_file, open_nofollow

    check_home(home.path)
    check_home_file(home.config)
    try:
        with open(open_nofollow(home.config, os.O_RDONLY), "rb") as fh:
            raw = fh.read((1 << 20) + 1)
    except FileNotFoundError:
        return AgentConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read {home.config}: {exc.strerror}") from exc
    if len(raw) > 1 << 20:
        raise ConfigError(f"{home.config} is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{home.config} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{home.config} must hold a JSON object")
    known = {f.name for f in fields(AgentConfig)} - {"extra"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known:
            extra[key] = value
        elif key in _INTS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{key} must be an integer")
            values[key] = value
        elif key in _FLOATS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{key} must be a number")
            values[key] = float(value)
        elif key in _BOOLS:
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false")
            values[key] = value
        elif key in _STR_LISTS:
            if not isinstance(value, list) or not all(isinstance(i, str) and i for i in value):
                raise ConfigError(f"{key} must be a list of non-empty strings")
            values[key] = tuple(value)
        elif key == "policy":
            try:
                values[key] = parse_rules(value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        elif key in _ID_LISTS:
            if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                raise ConfigError(f"{key} must be a list of integers")
            values[key] = tuple(value)
    return _validated(AgentConfig(extra=extra, **values))
