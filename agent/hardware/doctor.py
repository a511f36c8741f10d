"""``keyagent doctor``: a registry of checks, each answering OK / WARN / FAIL (or SKIP) with the fix.

Any module can add a check without touching this file::

    from agent.hardware.doctor import CheckResult, Status, check

    @check("store-schema", order=65, title="store schema is current")
    def _schema(ctx: DoctorContext) -> CheckResult:
        ...
        return CheckResult(Status.OK, "schema v3")

Checks run in ``order`` (then name). A check may read facts earlier checks left in ``ctx.facts`` (e.g. the
token inspection) and returns SKIP when its prerequisite failed, so one root cause gives one FAIL, not five.

Checks never change anything (no chmod, no key creation) and never send a PIN unless the user gave one for this
run; a token whose flags say the PIN is locked or on its final try is never sent a PIN at all.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.hardware import udev
from agent.paths import socket_answers, socket_path_for

__all__ = [
    "Status",
    "CheckResult",
    "NamedResult",
    "DoctorContext",
    "CheckFn",
    "check",
    "register_check",
    "unregister_check",
    "registered_checks",
    "run_checks",
    "exit_code",
    "format_results",
    "EARLIEST_SANE_TIME",
    "CHECK_CRASHED",
]

#: 2025-01-01T00:00:00Z. A wall clock before this is certainly wrong (RTC reset, no NTP yet).
EARLIEST_SANE_TIME = 1735689600
#: 2100-01-01T00:00:00Z. Beyond this, SPK timestamps (nanoseconds in an int64) and rotation math are suspect.
LATEST_SANE_TIME = 4102444800
#: How far the wall clock may lag behind the newest file the agent wrote before we call it "went backwards".
BACKWARDS_TOLERANCE = 300.0
SOFTWARE_MODULES = ("libsofthsm2.so", "p11-kit-client.so")  # need no udev rule: no USB device behind them


class Status(enum.IntEnum):
    """Severity, ordered so ``max`` gives the worst."""

    OK = 0
    SKIP = 1
    WARN = 2
    FAIL = 3


@dataclass(frozen=True)
class CheckResult:
    """What one check found; ``fix`` says what to do (required for WARN and FAIL)."""

    status: Status
    summary: str
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.status in (Status.WARN, Status.FAIL) and not self.fix:
            raise ValueError("a WARN or FAIL result must say how to fix it")


@dataclass(frozen=True)
class NamedResult:
    name: str
    title: str
    result: CheckResult

    def to_json(self) -> dict[str, Any]:
        code = CHECK_CRASHED if self.result.summary.startswith(CHECK_CRASHED + ": ") else None
        return {"check": self.name, "title": self.title, "status": self.result.status.name,
                "summary": self.result.summary, "fix": self.result.fix, "code": code}


@dataclass
class DoctorContext:
    """Everything a check may look at. ``facts`` carries results between checks (e.g. "config", "token")."""

    home: str
    pin: str | None = None
    socket_path: str | None = None
    now: Callable[[], float] = time.time
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    rules_dirs: tuple[str, ...] = udev.RULES_SEARCH_DIRS
    pcscd_socket: str | None = None  # default: $PCSCLITE_CSOCK_NAME or /run/pcscd/pcscd.comm
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any] | None:
        value = self.facts.get("config")
        return value if isinstance(value, dict) else None

    @property
    def pkcs11(self) -> dict[str, Any] | None:
        cfg = self.config
        if cfg is None or cfg.get("backend") != "pkcs11" or not isinstance(cfg.get("pkcs11"), dict):
            return None
        section: dict[str, Any] = cfg["pkcs11"]
        return section


CheckFn = Callable[[DoctorContext], CheckResult]


@dataclass(frozen=True)
class _Registered:
    name: str
    title: str
    order: int
    fn: CheckFn


_REGISTRY: dict[str, _Registered] = {}


def register_check(name: str, fn: CheckFn, *, order: int = 100, title: str | None = None) -> None:
    """Add (or replace) the check called ``name``."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"bad check name {name!r}")
    _REGISTRY[name] = _Registered(name, title or name, order, fn)


def unregister_check(name: str) -> None:
    _REGISTRY.pop(name, None)


def check(name: str, *, order: int = 100, title: str | None = None) -> Callable[[CheckFn], CheckFn]:
    """Decorator form of :func:`register_check`."""

    def deco(fn: CheckFn) -> CheckFn:
        register_check(name, fn, order=order, title=title)
        return fn

    return deco


def registered_checks() -> list[str]:
    return [r.name for r in sorted(_REGISTRY.values(), key=lambda r: (r.order, r.name))]


def run_checks(ctx: DoctorContext, only: Iterable[str] | None = None) -> list[NamedResult]:
    """Run every registered check (or those in ``only``, in registry order); a crashing check is a FAIL."""
    wanted = set(only) if only is not None else None
    if wanted is not None:
        unknown = wanted - set(_REGISTRY)
        if unknown:
            raise ValueError(f"unknown check(s): {', '.join(sorted(unknown))}; known: {', '.join(registered_checks())}")
    out: list[NamedResult] = []
    for reg in sorted(_REGISTRY.values(), key=lambda r: (r.order, r.name)):
        if wanted is not None and reg.name not in wanted:
            continue
        try:
            result = reg.fn(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            result = _crashed(exc)
        out.append(NamedResult(reg.name, reg.title, result))
    return out


#: The code a check that could not finish reports (its summary starts with it, as every CLI error does).
CHECK_CRASHED = "CHECK_CRASHED"


def _crashed(exc: Exception) -> CheckResult:
    """A check that raised, in the CLI's one error style: the code, what happened, the fix; no class names or
    raw exception text (a file the check met is named with the OS's reason). KEYAGENT_DEBUG=1 prints the
    traceback on stderr for a bug report."""
    if os.environ.get("KEYAGENT_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if not exc.filename:
            fix = "fix the cause named above, then run keyagent doctor again"
        elif isinstance(exc, PermissionError):
            fix = f"check the owner and mode of {exc.filename} (the home and its files must be yours)"
        else:
            fix = f"check {exc.filename} (a real file, not a broken link), then run keyagent doctor again"
        return CheckResult(Status.FAIL, f"{CHECK_CRASHED}: the check could not finish: {where}{exc.strerror}", fix)
    what = str(exc).splitlines()[0][:200] if str(exc) else "an unexpected error"
    return CheckResult(Status.FAIL, f"{CHECK_CRASHED}: the check could not finish: {what}",
                       "report this as a keyagent bug (KEYAGENT_DEBUG=1 keyagent doctor prints the details)")


def exit_code(results: list[NamedResult]) -> int:
    """0 when nothing FAILed (WARN and SKIP do not fail the run), 1 otherwise."""
    return 1 if any(r.result.status is Status.FAIL for r in results) else 0


def format_results(results: list[NamedResult]) -> str:
    """One line per check: ``STATUS  name  summary``, then ``      fix: ...`` for WARN/FAIL."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.result.status.name:<4}  {r.name:<{width}}  {r.result.summary}")
        if r.result.fix and r.result.status in (Status.WARN, Status.FAIL):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.result.fix}")
    counts = {s: sum(1 for r in results if r.result.status is s) for s in Status}
    lines.append(f"{counts[Status.OK]} ok, {counts[Status.WARN]} warn, {counts[Status.FAIL]} fail, "
                 f"{counts[Status.SKIP]} skipped")
    return "\n".join(lines)


# ----- built-in checks -------------------------------------------------------------------------------------------

@check("config", order=10, title="home and key configuration")
def _check_config(ctx: DoctorContext) -> CheckResult:
    from backends import home_config as hc

    home = Path(ctx.home)
    path = home / hc.CONFIG_NAME
    if not home.is_dir():
        return CheckResult(Status.FAIL, f"home {home} does not exist",
                           f"run `keyagent init --home {home} ...` (or pass the right --home / KEYAGENT_HOME)")
    try:
        doc = hc.read_home_config(home)
    except hc.ConfigMissing:
        return CheckResult(Status.FAIL, f"no {hc.CONFIG_NAME} in {home}", f"run `keyagent init --home {home} ...`")
    except hc.ConfigUntrusted as exc:  # start refuses this home too; its module is not loaded by the later checks
        return CheckResult(Status.FAIL, str(exc.error).split("; fix: ")[0],
                           str(exc.error).split("; fix: ")[-1] if "; fix: " in str(exc.error)
                           else "make the home and its files yours and not writable by others")
    except hc.ConfigUnreadable as exc:
        return CheckResult(Status.FAIL, f"cannot read {path}: {exc.error.strerror}",
                           f"check the owner and mode of {path} (it must be yours, mode 0600)")
    except hc.ConfigTooLarge:
        return CheckResult(Status.FAIL, f"{path} is larger than {hc.MAX_CONFIG} bytes",
                           f"restore {path} from a backup or re-run init")
    except hc.ConfigMalformed:
        return CheckResult(Status.FAIL, f"{path} is not valid JSON", f"restore {path} from a backup or re-run init")
    if not isinstance(doc, dict) or doc.get("backend") not in ("pkcs11", "software"):
        return CheckResult(Status.FAIL, f"{path} names no backend (\"pkcs11\" or \"software\")",
                           f"restore {path} from a backup or re-run init")
    from backends.errors import BackendConfigError
    from backends.home import validate_config

    try:
        validate_config(doc)  # the daemon's own check: what it would refuse at start, doctor FAILs here
    except BackendConfigError as exc:
        return CheckResult(Status.FAIL, f"{path}: {exc}", f"restore {path} from a backup or re-run keyagent init")
    ctx.facts["config"] = doc
    mode = stat.S_IMODE(path.stat().st_mode)
    detail = (f"backend pkcs11, module {doc['pkcs11']['module']}" if doc["backend"] == "pkcs11"
              else "backend software")
    if mode & 0o077:
        return CheckResult(Status.WARN, f"{path}: {detail}; mode {mode:04o} lets others read it",
                           f"chmod 600 {path}")
    home_mode = stat.S_IMODE(home.stat().st_mode)
    if home_mode & 0o077:
        return CheckResult(Status.WARN, f"{home}: {detail}; the home has mode {home_mode:04o}",
                           f"chmod 700 {home} (it holds the session store and audit log)")
    return CheckResult(Status.OK, f"{home}: {detail}")


@check("module", order=20, title="PKCS#11 module loads")
def _check_module(ctx: DoctorContext) -> CheckResult:
    p11 = ctx.pkcs11
    if p11 is None:
        return CheckResult(Status.SKIP, "no PKCS#11 backend configured" if ctx.config else "no usable config")
    from backends.pkcs11 import inventory  # the only way to python-pkcs11

    module = str(p11["module"])
    try:
        slots = inventory.list_slots(module)
    except inventory.ModuleLoadError as exc:
        return CheckResult(Status.FAIL, str(exc),
                           "install the token's PKCS#11 module (e.g. apt-get install opensc) and point the "
                           "config's pkcs11.module at it")
    except Exception as exc:  # noqa: BLE001 - TokenAbsent and friends from C_Initialize
        return CheckResult(Status.FAIL, f"{module} does not initialise: {exc}",
                           "check the module's own configuration (SOFTHSM2_CONF, P11_KIT_SERVER_ADDRESS, pcscd)")
    ctx.facts["slots"] = slots
    present = sum(1 for s in slots if s.token is not None)
    return CheckResult(Status.OK, f"{module} loads: {len(slots)} slot(s), {present} with a token")


def _wanted_token(p11: dict[str, Any]) -> tuple[str | None, str | None]:
    serial = p11.get("token_serial") if isinstance(p11.get("token_serial"), str) else None
    label = p11.get("token_label") if isinstance(p11.get("token_label"), str) else None
    return serial or None, label or None


@check("token", order=30, title="configured token present")
def _check_token(ctx: DoctorContext) -> CheckResult:
    p11 = ctx.pkcs11
    slots = ctx.facts.get("slots")
    if p11 is None or slots is None:
        return CheckResult(Status.SKIP, "needs a loaded PKCS#11 module")
    serial, label = _wanted_token(p11)
    tokens = [s.token for s in slots if s.token is not None]
    if serial:
        match = [t for t in tokens if t.serial == serial]
    elif label:
        match = [t for t in tokens if t.label == label]
    else:
        match = tokens[:1]
    if not match:
        if label and any(t.label == label for t in tokens):
            other = next(t for t in tokens if t.label == label)
            return CheckResult(Status.FAIL, f"token {label!r} has serial {other.serial}, not the configured {serial}",
                               "insert the token this home was initialised with (a different token has the label)")
        seen = ", ".join(f"{t.label!r} ({t.serial})" for t in tokens) or "none"
        want = f"serial {serial}" if serial else f"label {label!r}" if label else "any token"
        return CheckResult(Status.FAIL, f"no token with {want}; tokens seen: {seen}",
                           "plug the token in (or start the p11-kit server / pcscd in front of it)")
    token = match[0]
    ctx.facts["token"] = token
    return CheckResult(Status.OK, f"token {token.label!r} serial {token.serial} ({token.manufacturer} {token.model})")


@check("pin", order=40, title="user PIN state")
def _check_pin(ctx: DoctorContext) -> CheckResult:
    token = ctx.facts.get("token")
    if token is None:
        return CheckResult(Status.SKIP, "needs the token")
    unblock = ("unblock it with the SO PIN: pkcs11-tool --module MODULE --login --login-type so --init-pin "
               "(or the vendor tool, e.g. sc-hsm-tool)")
    if token.pin_locked:
        return CheckResult(Status.FAIL, "the user PIN is locked", unblock)
    if not token.user_pin_initialized:
        return CheckResult(Status.FAIL, "the user PIN is not initialised",
                           "set it with the SO PIN: pkcs11-tool --module MODULE --login --login-type so --init-pin")
    if token.pin_final_try:
        return CheckResult(Status.FAIL, "one more wrong PIN locks the token (USER_PIN_FINAL_TRY)",
                           "enter the PIN with care (keyagent refuses the final try unless forced), or " + unblock)
    if token.pin_count_low:
        return CheckResult(Status.WARN, "a wrong PIN was entered since the last good login (USER_PIN_COUNT_LOW)",
                           "log in once with the right PIN (keyagent unlock) to reset the counter")
    if token.pin_to_be_changed:
        return CheckResult(Status.WARN, "the token asks for the user PIN to be changed",
                           "change it: pkcs11-tool --module MODULE --login --change-pin")
    return CheckResult(Status.OK, "user PIN initialised, no failed tries reported")


@check("identity", order=50, title="identity key found and non-extractable")
def _check_identity(ctx: DoctorContext) -> CheckResult:
    cfg = ctx.config
    if cfg is None:
        return CheckResult(Status.SKIP, "no usable config")
    if cfg.get("backend") == "software":
        return _check_key_file(ctx, cfg)
    p11 = ctx.pkcs11
    token = ctx.facts.get("token")
    if p11 is None or token is None:
        return CheckResult(Status.SKIP, "needs the token")
    from backends import errors as berr
    from backends.pkcs11 import inventory

    key_id_hex = p11.get("identity_id")
    try:
        key_id = bytes.fromhex(key_id_hex) if isinstance(key_id_hex, str) else None
    except ValueError:
        key_id = None
    if key_id is None:
        return CheckResult(Status.FAIL, "the config has no valid pkcs11.identity_id",
                           "re-run keyagent init (or restore config.json)")
    pin = ctx.pin if not (token.pin_locked or token.pin_final_try) else None
    try:
        seen = inventory.inspect_keys(str(p11["module"]), serial=token.serial, key_id=key_id, pin=pin)
    except berr.PinIncorrect:
        return CheckResult(Status.FAIL, "the PIN given to doctor was rejected (one try used)",
                           "check the PIN; doctor sends it only once")
    except berr.BackendError as exc:
        return CheckResult(Status.FAIL, f"cannot inspect the token: {exc}", "re-run once the token is reachable")
    ctx.facts["identity"] = seen
    pubs = [k for k in seen.public_keys if k.secp256k1]
    if not pubs:
        return CheckResult(Status.FAIL, f"no secp256k1 public key with id {key_id.hex()} on the token",
                           "insert the token this home was initialised with, or re-run keyagent init")
    want = cfg.get("identity_public_key")
    if isinstance(want, str) and pubs[0].public_point:
        from agent.core import secp256k1

        try:
            have = secp256k1.compress(pubs[0].public_point)
        except Exception:  # noqa: BLE001 - a malformed point from the token is a FAIL, not a crash
            have = b""
        if have.hex() != want.lower():
            return CheckResult(Status.FAIL, f"the key with id {key_id.hex()} is not this home's identity",
                               "insert the token this home was initialised with")
    if not seen.logged_in:
        why = ("the PIN is locked or on its final try, so doctor did not log in" if ctx.pin is not None
               else "private key attributes are only visible after a login")
        return CheckResult(Status.WARN, f"identity public key {key_id.hex()} found; {why}",
                           "run `keyagent doctor --login` (PIN from KEYAGENT_PIN or the terminal) or "
                           "`--pin-file FILE` to check that the private key is non-extractable")
    privs = [k for k in seen.private_keys if k.secp256k1]
    if not privs:
        return CheckResult(Status.FAIL, f"no private key with id {key_id.hex()} on the token",
                           "the token holds only the public half: re-provision with keyagent init")
    attrs = privs[0].attributes
    if privs[0].protected:
        origin = "never extractable" if attrs.get("never_extractable") else (
            "not extractable now, but was once (imported key)")
        return CheckResult(Status.OK, f"identity key {key_id.hex()}: sensitive, {origin}")
    bad = [n for n, v in (("EXTRACTABLE", attrs.get("extractable", True)),
                          ("not SENSITIVE", not attrs.get("sensitive", False))) if v]
    status = Status.WARN if p11.get("allow_extractable") is True else Status.FAIL
    return CheckResult(status, f"identity key {key_id.hex()} is {' and '.join(bad)}: it can leave the token",
                       "generate a new identity on the token (keyagent init) or set CKA_EXTRACTABLE false "
                       "(pkcs11-tool cannot; use the vendor tool); the agent refuses it unless forced")


def _check_key_file(ctx: DoctorContext, cfg: dict[str, Any]) -> CheckResult:
    section = cfg.get("software") if isinstance(cfg.get("software"), dict) else {}
    name = section.get("key_file") if isinstance(section, dict) else None
    path = Path(ctx.home) / (name if isinstance(name, str) else "identity.key")
    try:
        st = path.stat()
    except FileNotFoundError:
        return CheckResult(Status.FAIL, f"key file {path} is missing", "restore it from a backup (or re-run init)")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        return CheckResult(Status.FAIL, f"key file {path} is owned by uid {st.st_uid}", f"chown {os.getuid()} {path}")
    if mode & 0o077:
        return CheckResult(Status.FAIL, f"key file {path} has mode {mode:04o}", f"chmod 600 {path}")
    if not os.access(path, os.R_OK):  # mode 0000 passes the check above, but the agent cannot read it
        return CheckResult(Status.FAIL, f"key file {path} is not readable by you (mode {mode:04o})",
                           f"chmod 600 {path}")
    return CheckResult(Status.OK, f"software key file {path} (mode 0600; no token: keys live in host memory)")


def _socket_path(ctx: DoctorContext) -> Path:
    if ctx.socket_path:
        return Path(ctx.socket_path)
    return Path(socket_path_for(ctx.home))


@check("socket-dir", order=60, title="socket directory owner and modes")
def _check_socket_dir(ctx: DoctorContext) -> CheckResult:
    sock = _socket_path(ctx)
    directory = sock.parent
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return CheckResult(Status.OK, f"{directory} does not exist yet (the agent creates it with mode 0700)")
    except OSError as exc:
        return CheckResult(Status.FAIL, f"cannot stat {directory}: {exc.strerror}", f"check the parent of {directory}")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return CheckResult(Status.FAIL, f"{directory} is not a real directory",
                           f"remove {directory}; the agent re-creates it as a private directory")
    if st.st_uid != os.getuid():
        return CheckResult(Status.FAIL, f"{directory} is owned by uid {st.st_uid}, not by you ({os.getuid()})",
                           f"remove {directory} (as its owner) or use another XDG_RUNTIME_DIR / --socket")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return CheckResult(Status.FAIL, f"{directory} has mode {mode:04o}: others can reach the agent's socket",
                           f"chmod 700 {directory}")
    try:
        sst = os.lstat(sock)
    except FileNotFoundError:
        return CheckResult(Status.OK, f"{directory} is yours, mode 0700 (no agent socket yet)")
    if not stat.S_ISSOCK(sst.st_mode):
        return CheckResult(Status.FAIL, f"{sock} is not a socket", f"remove {sock}")
    smode = stat.S_IMODE(sst.st_mode)
    if smode & 0o077 or sst.st_uid != os.getuid():
        return CheckResult(Status.FAIL, f"socket {sock} has mode {smode:04o}, owner uid {sst.st_uid}",
                           "stop the agent, remove the socket and start it again (it creates it 0600)")
    if not socket_answers(sock):
        return CheckResult(Status.WARN, f"{sock} is a stale socket: no agent answers on it",
                           "keyagent start (it replaces a socket nobody listens on)")
    return CheckResult(Status.OK, f"{directory} is yours, mode 0700; agent answers on {sock.name} "
                       f"(mode {smode:04o})")


def _home_config(ctx: DoctorContext) -> dict[str, Any]:
    """config.json as the config check left it, or read here when that check did not run (``--check store``)."""
    cfg = ctx.config
    if cfg is None:
        from backends.home_config import HomeConfigError, read_home_config

        try:
            got = read_home_config(ctx.home)
            cfg = got if isinstance(got, dict) else None
        except HomeConfigError:
            cfg = None
    return cfg or {}


@check("store", order=70, title="session store readable")
def _check_store(ctx: DoctorContext) -> CheckResult:
    store = _home_config(ctx).get("store")
    if isinstance(store, dict) and store.get("kind") == "postgresql":
        return _check_pg_store(str(store.get("url", "")))
    home = Path(ctx.home)
    path = home / "state.db"
    if not path.exists():
        return CheckResult(Status.OK, f"no {path.name} yet (created when the agent first starts)")
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        return CheckResult(Status.FAIL, f"{path} is owned by uid {st.st_uid}", f"chown {os.getuid()} {path}")
    if not os.access(path, os.R_OK | os.W_OK):
        return CheckResult(Status.FAIL, f"{path} is not readable and writable by you", f"chmod 600 {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return CheckResult(Status.FAIL, f"{path} does not open as SQLite: {exc}",
                           f"restore {path} from a backup (the agent will not overwrite it)")
    if mode & 0o077:
        return CheckResult(Status.WARN, f"{path}: {tables} table(s), but mode {mode:04o}", f"chmod 600 {path}")
    return CheckResult(Status.OK, f"{path}: opens read-only, {tables} table(s)")


def _check_pg_store(url: str) -> CheckResult:
    """A shared store: the server answers, the schema is ours, and which agents share it (the server's own
    session list says which are alive; nothing is guessed from timestamps)."""
    from agent.daemon.store.location import check_store_url
    from agent.daemon.store.postgres import PG_SCHEMA_VERSION, list_agents
    from agent.daemon.store.rows import StoreError

    try:
        check_store_url(url)
        agents = list_agents(url)
    except StoreError as exc:
        return CheckResult(Status.FAIL, f"PostgreSQL store: {exc}",
                           "start the database or fix the URL in config.json (libpq form, password in a passfile)")
    alive = [a for a in agents if a.alive]
    names = ", ".join(f"{a.host} pid {a.pid}" for a in alive) or "none running"
    gone = len(agents) - len(alive)
    tail = f"; {gone} registered agent(s) not connected" if gone else ""
    return CheckResult(Status.OK, f"PostgreSQL store (schema {PG_SCHEMA_VERSION}) answers; agents sharing it: "
                       f"{names}{tail}")


@check("anchor", order=75, title="rollback anchor: state is the latest, no copy sends beside it")
def _check_anchor(ctx: DoctorContext) -> CheckResult:
    """What the running agent says of its anchor (agent/daemon/rollback.py); without one, what the next start
    will find (a key-file home: its anchor file against the store; a token's anchor needs the PIN)."""
    sock = _socket_path(ctx)
    if socket_answers(sock):
        from agent.client import AgentClient, AgentError, AgentUnavailable

        try:
            with AgentClient(str(sock), timeout=10.0).connect() as c:
                st = c.status()
        except (AgentError, AgentUnavailable, OSError) as exc:
            return CheckResult(Status.WARN, f"the agent on {sock.name} did not answer status: {exc}")
        if st.superseded:
            return CheckResult(Status.FAIL, "another agent runs on a copy of this home and sends for it: this one "
                               "refuses to send (SUPERSEDED)", "keyagent stop; keep one copy of the home")
        if not st.anchor:
            return CheckResult(Status.OK, "the agent has not opened its state yet (unlock it)")
        if st.rekeyed:
            return CheckResult(Status.WARN, f"this start re-keyed every session: {st.rekeyed}",
                               "nothing to do after a crash or a restore you made; otherwise look for another "
                               "copy of this home")
        return CheckResult(Status.OK, f"anchor on the {st.anchor} at epoch {st.anchor_epoch}: the state is the "
                           "latest")
    return _anchor_offline(ctx)


def _anchor_offline(ctx: DoctorContext) -> CheckResult:
    from agent.daemon.rollback import STORE_ID_META, ANCHOR_META, Anchor, FileAnchor, anchor_dir, verdict

    cfg = _home_config(ctx)
    store = cfg.get("store")
    if isinstance(store, dict) and store.get("kind") == "postgresql":
        return CheckResult(Status.OK, "shared store: the agents compare the database with the token's anchor at "
                           "each start and while sending")
    path = Path(ctx.home) / "state.db"
    if not path.exists():
        return CheckResult(Status.OK, "no state yet")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (STORE_ID_META, ANCHOR_META)))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return CheckResult(Status.SKIP, f"state.db unreadable: {exc}")
    stored = Anchor.decode(rows.get(ANCHOR_META))
    name = rows.get(STORE_ID_META)
    if stored is None or not isinstance(name, bytes):
        return CheckResult(Status.OK, "no anchor yet (set when the agent first opens its state)")
    state = "running" if stored.running else "stopped cleanly"
    if cfg.get("backend") == "pkcs11":
        return CheckResult(Status.OK, f"store at epoch {stored.epoch} ({state}); the token's anchor needs the PIN: "
                           "the agent compares them at start")
    try:
        held = Anchor.decode(FileAnchor(anchor_dir(), name.decode("ascii", "replace")).read())
    except Exception as exc:  # noqa: BLE001 - an unsafe or unreadable anchor file is the finding
        return CheckResult(Status.FAIL, f"anchor file unusable: {exc}", f"check {anchor_dir()}")
    reason = verdict(stored, held, shared=False)
    if reason is not None:
        return CheckResult(Status.WARN, f"the next start will re-key every session: {reason}",
                           "expected after a crash or a restore you made; otherwise look for another copy")
    return CheckResult(Status.OK, f"store and anchor file agree at epoch {stored.epoch} ({state})")


def _udev_needed(ctx: DoctorContext) -> bool:
    p11 = ctx.pkcs11
    return p11 is not None and os.path.basename(str(p11.get("module", ""))) not in SOFTWARE_MODULES


@check("udev", order=80, title="udev rules installed")
def _check_udev(ctx: DoctorContext) -> CheckResult:
    installed = udev.installed_rules_paths(ctx.rules_dirs)
    needed = _udev_needed(ctx)
    if not installed:
        if not needed:
            if ctx.pkcs11 is not None:
                why = f"{os.path.basename(str(ctx.pkcs11['module']))} has no USB device"
            elif ctx.config is not None:
                why = "the software backend uses no device"
            else:
                why = "no token configured"
            return CheckResult(Status.OK, f"not installed; not needed ({why})")
        return CheckResult(Status.WARN, f"{udev.RULES_FILENAME} is not installed: without root only pcscd may "
                           "reach USB readers", "sudo keyagent install-udev [--group GROUP]")
    path = installed[0]
    try:
        rules = udev.parse_rules(path.read_text(encoding="utf-8"))
    except (OSError, udev.UdevSyntaxError) as exc:
        return CheckResult(Status.FAIL, f"{path} does not parse: {exc}", "sudo keyagent install-udev (rewrites it)")
    shipped = udev.parse_rules(udev.bundled_rules_text())
    if _rule_shape(rules) != _rule_shape(shipped):
        return CheckResult(Status.WARN, f"{path} differs from this version's rules",
                           "sudo keyagent install-udev (then udevadm control --reload)")
    group = next((r.get("GROUP").value for r in rules if r.get("GROUP")), "?")  # type: ignore[union-attr]
    return CheckResult(Status.OK, f"{path} (group {group})")


@check("pcscd", order=85, title="PC/SC daemon reachable for USB tokens")
def _check_pcscd(ctx: DoctorContext) -> CheckResult:
    if not _udev_needed(ctx):
        return CheckResult(Status.SKIP, "no USB token configured")
    path = ctx.pcscd_socket or ctx.env.get("PCSCLITE_CSOCK_NAME") or "/run/pcscd/pcscd.comm"
    if not os.path.exists(path):
        return CheckResult(Status.WARN, f"no pcscd socket at {path}: OpenSC reaches USB readers through pcscd",
                           "install and start pcscd (apt-get install pcscd; systemctl enable --now pcscd.socket)")
    if not socket_answers(path):
        return CheckResult(Status.WARN, f"pcscd socket {path} exists but nothing answers",
                           "restart pcscd (systemctl restart pcscd)")
    return CheckResult(Status.OK, f"pcscd answers on {path}")


def _rule_shape(rules: list[udev.Rule]) -> set[tuple[str | None, tuple[tuple[str, str | None, str, str], ...]]]:
    """The access rules minus their GROUP (which install-udev --group may change)."""
    return {(r.device_tag, tuple((i.key, i.attr, i.op, i.value) for i in r.items if i.key != "GROUP"))
            for r in rules if r.device_tag}


def _newest_mtime(home: Path) -> float | None:
    newest: float | None = None
    try:
        entries = list(home.iterdir())
    except OSError:
        return None
    for p in entries:
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        newest = m if newest is None else max(newest, m)
    return newest


@check("clock", order=90, title="clock sane for prekey rotation")
def _check_clock(ctx: DoctorContext) -> CheckResult:
    now = ctx.now()
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now)) if 0 <= now < LATEST_SANE_TIME * 2 else str(now)
    fix_ntp = "enable time sync (timedatectl set-ntp true, or chrony/ntpd) and check the RTC"
    if now < EARLIEST_SANE_TIME:
        return CheckResult(Status.FAIL, f"wall clock says {stamp}, before 2025: SPK rotation and bundle "
                           "timestamps would be wrong", fix_ntp)
    if now >= LATEST_SANE_TIME:
        return CheckResult(Status.FAIL, f"wall clock says {stamp}, after 2100", fix_ntp)
    newest = _newest_mtime(Path(ctx.home))
    if newest is not None and now + BACKWARDS_TOLERANCE < newest:
        ahead = newest - now
        return CheckResult(Status.FAIL, f"the clock is {ahead:.0f}s behind the newest file in the home: it went "
                           "backwards, so the next SPK rotation would wait that long", fix_ntp)
    return CheckResult(Status.OK, f"{stamp}, not behind the home's files")
