"""``keyagent start | stop | status | lock | unlock | release``: run the agent and manage its state over its socket.

Which agent and the exit codes: see agent/cli/common.py (0 success, 1 the agent refused, 2 bad input on
our side, 3 no agent reachable). ``start`` is idempotent (a running agent's lines are printed again) and
``stop`` prints the lines that forget it, as ssh-agent and ``ssh-agent -k`` do.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from typing import Any

from agent.cli.common import (EXIT_FAILED, EXIT_INPUT, EXIT_OK, InputError, agent_socket, client_command,
                              command_adder, describe_error, error_code, fail, fail_coded, print_doc)
from agent.client import AgentClient, AgentError, AgentUnavailable

__all__ = ["register"]


def _cmd_start(args: argparse.Namespace) -> int:
    from agent.daemon.config import ConfigError, Home, load_config
    from agent.daemon.daemonize import StartError, home_backend_kind, shell_lines, spawn_background
    from agent.home_trust import UnsafeHome, verify_home
    from agent.paths import socket_path_for
    from backends.errors import BackendConfigError

    home = Home.at(args.home)
    try:
        verify_home(home.path)  # before anything in it is read or obeyed (agent/home_trust.py)
        kind = home_backend_kind(home)
    except UnsafeHome as exc:  # the message names the path and the fix
        return fail_coded(exc.code, str(exc), EXIT_FAILED, "")
    except BackendConfigError as exc:
        return fail_coded(exc.code, str(exc), EXIT_INPUT)
    if kind is None:  # refused before anything is written: a mistyped --home must not become an empty home
        missing = "" if home.path.is_dir() else " (no such directory)"
        return fail_coded("BAD_CONFIG", f"{home.path} holds no identity{missing}", EXIT_FAILED,
                          f"check --home / $KEYAGENT_HOME for a typo, or run keyagent init --home {home.path}")
    try:
        config = load_config(home).with_overrides(
            allow_uids=tuple(args.allow_uid) if args.allow_uid else None,
            allow_gids=tuple(args.allow_gid) if args.allow_gid else None,
            max_frame=args.max_frame, allow_ecdh=True if args.allow_ecdh else None, unlock_ttl=args.unlock_ttl,
        )
    except ConfigError as exc:
        return fail(str(exc), EXIT_INPUT)
    sock = args.socket or str(socket_path_for(home.path))
    if args.foreground:
        return _run_foreground(args, home, config, sock)
    shell = "csh" if args.csh else "fish" if args.fish else "sh" if args.sh else _guess_shell()
    running = _running_agent(sock)
    if running is not None:  # `.bashrc` runs start in every shell: reuse the agent, as ssh-agent users expect
        pid, path = running
        print(f"keyagent: an agent already runs for {home.path} (pid {pid}); reusing it (options of this start "
              "are not applied: keyagent stop first to change them)", file=sys.stderr)
        sys.stdout.write(shell_lines(path, pid, shell))
        return EXIT_OK
    child = [sys.executable, "-m", "agent", "start", "-D", "--home", str(home.path), "--socket", sock]
    for uid in args.allow_uid or ():
        child += ["--allow-uid", str(uid)]
    for gid in args.allow_gid or ():
        child += ["--allow-gid", str(gid)]
    if args.max_frame is not None:
        child += ["--max-frame", str(args.max_frame)]
    if args.allow_ecdh:
        child.append("--allow-ecdh")
    if args.unlock_ttl is not None:
        child += ["--unlock-ttl", str(args.unlock_ttl)]
    secret: str | None = None
    for opt in ("pin_file", "passphrase_file"):
        value = getattr(args, opt)
        if value:
            child += ["--" + opt.replace("_", "-"), os.path.abspath(value)]
    if not (args.pin_file or args.passphrase_file) and kind is not None:
        from agent.daemon.hardening import secret_var_for

        secret = os.environ.get(secret_var_for(kind)) or None  # the child gets it by pipe, not by environment
    try:
        pid, path = spawn_background(child, home, secret=secret)
    except StartError as exc:
        return fail(str(exc), EXIT_FAILED)
    sys.stdout.write(shell_lines(path, pid, shell))
    given = bool(args.pin_file or args.passphrase_file or secret)  # the backend's own variable, not any
    if not given and not _unlocked(path):  # asked only then: a start with a secret makes no extra request
        print("keyagent: started locked: run keyagent unlock (or start with --pin-file/--passphrase-file or "
              "$KEYAGENT_PIN/$KEYAGENT_PASSPHRASE)", file=sys.stderr)
    return 0


def _running_agent(sock: str) -> tuple[int, str] | None:
    """(pid, socket) of a live agent answering on ``sock``, else None (nothing there, or not an agent)."""
    from agent.paths import socket_answers

    if not socket_answers(sock):
        return None
    try:
        with AgentClient(sock, timeout=10) as c:
            st = c.status()
    except (AgentError, AgentUnavailable, OSError):
        return None
    return st.pid, st.socket or sock


def _unlocked(sock: str) -> bool:
    """Whether a freshly started agent can use its keys (True when it cannot be asked: no false alarm)."""
    try:
        with AgentClient(sock, timeout=10) as c:
            st = c.status()
    except (AgentError, AgentUnavailable, OSError):
        return True
    return st.backend_unlocked and not st.locked


def unset_lines(shell: str) -> str:
    """What ``eval "$(keyagent stop)"`` runs: forget the stopped agent (ssh-agent -k)."""
    if shell == "csh":
        return "unsetenv KEYAGENT_SOCK;\nunsetenv KEYAGENT_PID;\necho Agent stopped;\n"
    if shell == "fish":
        return "set -e KEYAGENT_SOCK;\nset -e KEYAGENT_PID;\necho Agent stopped;\n"
    return "unset KEYAGENT_SOCK;\nunset KEYAGENT_PID;\necho Agent stopped;\n"


def _guess_shell() -> str:
    shell = os.path.basename(os.environ.get("SHELL", ""))
    return "csh" if shell.endswith("csh") else "fish" if shell == "fish" else "sh"


def _run_foreground(args: argparse.Namespace, home: Any, config: Any, sock: str) -> int:
    import logging

    from agent.daemon.daemonize import home_backend_kind, run_foreground, take_start_secret, write_ready
    from agent.daemon.hardening import harden_process
    from agent.daemon.logcap import configure_daemon_logging

    # One escaped line per record; size-capped and rotated when stderr is HOME/agent.log (background start).
    configure_daemon_logging(home.log, level=getattr(logging, args.log_level.upper(), logging.INFO),
                             max_bytes=config.agent_log_max_bytes, backups=config.agent_log_backups)
    ready_fd: int | None = args.ready_fd
    try:
        harden_process()
        home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = take_start_secret(home_backend_kind(home), args.pin_file, args.passphrase_file, args.secret_fd)

        def ready(path: str) -> None:
            if ready_fd is not None:
                write_ready(ready_fd, f"READY {path}")

        return run_foreground(home, config, socket_path=sock, secret=secret, ready=ready)
    except Exception as exc:
        code = error_code(exc)  # the error's own code (OS errors get one too): never a Python class name
        line = f"{code}: {describe_error(exc)}"
        if str(code) in ("PIN_LOCKED", "PIN_FINAL_TRY"):  # the way out needs a running agent: say how to get one
            line += (" -- start the agent without a PIN (no --pin-file, KEYAGENT_PIN unset), then run "
                     "`keyagent unlock --force`")
        logging.getLogger("keyagent").error("cannot start: %s", line)
        if ready_fd is not None:
            write_ready(ready_fd, f"ERROR {line}")
            ready_fd = None
        return fail_coded(code, f"cannot start: {line.partition(': ')[2]}", EXIT_FAILED)


def _cmd_stop(args: argparse.Namespace) -> int:
    from agent.paths import socket_answers

    path = agent_socket(args)
    shell = "csh" if args.csh else "fish" if args.fish else "sh" if args.sh else _guess_shell()
    if not socket_answers(path):
        print(f"keyagent: no agent is running on {path}: nothing to stop", file=sys.stderr)
        if os.environ.get("KEYAGENT_SOCK") == path:
            sys.stdout.write(unset_lines(shell))  # the shell still names that dead agent: forget it too
        return EXIT_OK

    def stop(a: argparse.Namespace, c: AgentClient) -> int:
        c.stop()
        return 0

    rc = client_command(stop)(args)
    if rc != 0:
        return rc
    deadline = time.monotonic() + 30
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        return fail(f"the agent accepted stop but {path} still exists", EXIT_FAILED)
    sys.stdout.write(unset_lines(shell))
    print("agent stopped", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, c: AgentClient) -> int:
    st = c.status()
    # `locked` is what a request meets: our lock, or a backend that still needs its PIN/passphrase (every secret-
    # using request then fails PIN_REQUIRED); `lock_held` is keyagent lock alone.
    usable = st.backend_unlocked and not st.locked
    state = ("unlocked" if usable else "locked (keyagent lock): run keyagent unlock" if st.locked
             else f"locked: the {st.backend} backend needs its {'PIN' if st.backend == 'pkcs11' else 'passphrase'}"
                  ": run keyagent unlock")
    try:
        from agent.core.identity import zq3_encode

        chat_key = zq3_encode(st.identity_public_key)
    except Exception:  # an agent without a key to show
        chat_key = ""
    doc = {
        "state": state, "locked": not usable, "lock_held": st.locked, "backend": st.backend, "token_present": st.token_present,
        "backend_unlocked": st.backend_unlocked, "chat_key": chat_key, "identity": st.identity_public_key.hex(),
        "installation_id": st.installation_id, "pid": st.pid, "version": st.version, "home": st.home,
        "socket": st.socket, "unlock_failures": st.unlock_failures, "uptime_seconds": st.uptime_seconds,
        "sessions_open": st.sessions_open, "connections": st.connections,
        "unlock_ttl_remaining": st.unlock_ttl_remaining, "ecdh_allowed": st.ecdh_allowed, "detail": st.detail,
        "anchor": st.anchor, "anchor_epoch": st.anchor_epoch, "rekeyed": st.rekeyed, "superseded": st.superseded,
    }
    print_doc(doc, args.json)
    return 0


def _lock(args: argparse.Namespace, c: AgentClient) -> int:
    password = ""
    if args.password:
        if not sys.stdin.isatty():  # getpass would fall back to echoing stdin (GetPassWarning, then EOFError)
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise InputError("lock --password needs a password: type it at a terminal or pipe one line",
                                 code="NO_SECRET")
        else:
            password = getpass.getpass("lock password: ")
            if password != getpass.getpass("again: "):
                raise InputError("the passwords differ")
    c.lock(password)
    print("agent locked", file=sys.stderr)
    return 0


def _unlock(args: argparse.Namespace, c: AgentClient) -> int:
    if args.secret_file:
        from backends.pin import read_secret_file

        try:
            secret = read_secret_file(args.secret_file)
        except Exception as exc:
            raise InputError(str(exc)) from exc
    else:
        from agent.daemon.hardening import secret_var_for

        # the variable of the agent's backend: a user with a token home and a key-file home sets both
        secret = os.environ.get(secret_var_for(c.status().backend)) or ""
        if not secret:
            if not sys.stdin.isatty():
                secret = sys.stdin.readline().rstrip("\r\n")
            else:
                secret = getpass.getpass("PIN, passphrase or lock password: ")
    if not secret:
        raise InputError("no PIN, passphrase or lock password was given", code="NO_SECRET",
                         fix="set $KEYAGENT_PIN or $KEYAGENT_PASSPHRASE, use --secret-file FILE, pipe it on stdin "
                             "or run keyagent unlock at a terminal")
    c.unlock(secret, force=args.force)
    print("agent unlocked", file=sys.stderr)
    return 0


def _release(args: argparse.Namespace, c: AgentClient) -> int:
    c.release()
    print("token released", file=sys.stderr)
    return 0




def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the agent's lifecycle sub-commands."""
    add = command_adder(subparsers, common)

    p = add("start", "start the agent (prints shell lines to eval)", _cmd_start)
    p.description = "Start the agent for --home (eval \"$(keyagent start)\"), or run it in the foreground (-D)."
    p.epilog = (
        "Socket: $XDG_RUNTIME_DIR/keyagent/agent-<hash of home>.sock, or $TMPDIR/keyagent-$UID/ (/tmp) when "
        "XDG_RUNTIME_DIR is unset; the directory must be yours with mode 0700. A live agent on the socket is "
        "never replaced; a stale socket file is. The PIN/passphrase for unlocking at start comes from "
        "--pin-file/--passphrase-file or KEYAGENT_PIN/KEYAGENT_PASSPHRASE; without one the agent starts locked "
        "(keyagent unlock). Policy lives in HOME/agent.json (max_frame, max_connections, request_timeout, "
        "frame_timeout, idle_timeout, max_connections_per_uid, owner_reserved_connections, allow_uids, allow_gids, "
        "allow_ecdh, unlock_ttl, confirm_command, confirm_ops, audit_log_max_bytes, audit_log_backups, "
        "agent_log_max_bytes, agent_log_backups, refusal_log_burst, refusal_log_window)."
    )
    p.add_argument("-D", "--foreground", action="store_true", help="stay in the foreground (systemd)")
    shells = p.add_mutually_exclusive_group()
    shells.add_argument("-s", "--sh", action="store_true", help="Bourne shell lines (default unless $SHELL is csh)")
    shells.add_argument("-c", "--csh", action="store_true", help="csh lines")
    shells.add_argument("--fish", action="store_true", help="fish lines")
    p.add_argument("--allow-uid", type=int, action="append", metavar="UID", help="also admit this uid")
    p.add_argument("--allow-gid", type=int, action="append", metavar="GID", help="also admit this primary gid")
    p.add_argument("--max-frame", type=int, metavar="BYTES", help="request frame cap (default 262144)")
    p.add_argument("--allow-ecdh", action="store_true", help="allow raw ECDH with the identity key (oracle!)")
    p.add_argument("--unlock-ttl", type=float, metavar="SECONDS", help="lock again this long after an unlock")
    p.add_argument("--pin-file", metavar="FILE", help="unlock at start with the PIN in this 0600 file")
    p.add_argument("--passphrase-file", metavar="FILE", help="unlock at start with the passphrase in this file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="agent log detail (HOME/agent.log; never key material)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--secret-fd", type=int, help=argparse.SUPPRESS)

    p = add("stop", "stop the agent and print the shell lines that forget it (eval \"$(keyagent stop)\")",
            _cmd_stop)
    shells = p.add_mutually_exclusive_group()
    shells.add_argument("-s", "--sh", action="store_true", help="Bourne shell lines (default unless $SHELL is csh)")
    shells.add_argument("-c", "--csh", action="store_true", help="csh lines")
    shells.add_argument("--fish", action="store_true", help="fish lines")
    add("status", "show the agent's state", client_command(_status), json_out=True)
    p = add("lock", "lock the agent (secret-using requests are refused until unlock)", client_command(_lock))
    p.add_argument("--password", action="store_true", help="lock with a password instead of dropping the PIN")
    p = add("unlock", "unlock with the PIN, passphrase or lock password", client_command(_unlock))
    p.add_argument("--secret-file", metavar="FILE", help="read the secret from this 0600 file")
    p.add_argument("--force", action="store_true", help="allow the token's final PIN try")
    add("release", "release the token so other programs can use it (like SIGHUP)", client_command(_release))
