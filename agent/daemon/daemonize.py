"""Starting the agent: foreground (systemd ``-D``), background (``keyagent start``, ssh-agent style) and readiness.

Background start does not fork a running interpreter (threads, open tokens and asyncio do not survive ``fork``);
it re-executes ``python -m agent start -D`` in a new session with a readiness pipe (``--ready-fd``). The child
writes ``READY <socket>`` or ``ERROR <one line>`` to the pipe and closes it; the parent waits for that line and
then prints the eval lines or the error. The child's stderr goes to ``HOME/agent.log``, which the child then
size-caps and rotates (agent/daemon/logcap.py).

Under systemd the agent runs in the foreground, tells systemd it is ready with ``sd_notify(READY=1)`` when
``NOTIFY_SOCKET`` is set, and accepts a socket passed by socket activation (``LISTEN_FDS``/``LISTEN_PID``, fd 3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shlex
import socket
import subprocess
import sys
import time
from typing import Callable

from agent.core.error_codes import CodedError, ErrorCode
from agent.daemon.config import AgentConfig, Home
from agent.daemon.service import SessionFactory
from backends.base import Backend

__all__ = [
    "StartError",
    "home_backend_kind",
    "open_home_backend",
    "take_start_secret",
    "run_foreground",
    "spawn_background",
    "shell_lines",
    "sd_notify",
    "activation_socket",
]

log = logging.getLogger("keyagent.daemon")

SHELLS = ("sh", "csh", "fish")


class StartError(CodedError, RuntimeError):
    """The agent could not start; the message is the one line shown to the user."""

    code = ErrorCode.BAD_CONFIG


def open_home_backend(home: Home, config: AgentConfig) -> Backend:
    """The home's backend as ``keyagent init`` configured it (``HOME/config.json``, read by backends.home).

    Nothing is unlocked here; the module path and token come only from that file (never from a client).
    """
    from backends.home import load_config, open_backend
    from backends.home_config import ConfigMissing

    try:
        cfg = load_config(str(home.path))
    except ConfigMissing as exc:
        raise StartError(f"{home.path} holds no identity: run keyagent init --home {home.path}") from exc
    return open_backend(cfg, home=str(home.path))


def home_backend_kind(home: Home) -> str | None:
    """``pkcs11`` or ``software`` as the home's config.json says (verified home), None when it has no config."""
    from backends.home import load_config

    if not (home.path / "config.json").exists():
        return None
    kind: str = load_config(str(home.path))["backend"]
    return kind


def take_start_secret(backend_kind: str | None, pin_file: str | None = None, passphrase_file: str | None = None,
                      secret_fd: int | None = None) -> str | None:
    """The PIN/passphrase to unlock with at start: a 0600 file, else the pipe ``keyagent start`` handed us, else the
    backend's variable (``KEYAGENT_PIN`` for a token, ``KEYAGENT_PASSPHRASE`` for a key file).

    Every secret variable is wiped from our environment either way (agent/daemon/hardening.py), so neither
    ``/proc/PID/environ`` nor child processes (pinentry, confirm hooks) see them.
    """
    from agent.daemon.hardening import read_secret_fd, take_secret_env
    from backends.pin import read_secret_file

    from_pipe = read_secret_fd(secret_fd) if secret_fd is not None else None
    from_env = take_secret_env(backend_kind or "software")  # read, then every secret variable wiped
    for path in (pin_file, passphrase_file):
        if path:
            return read_secret_file(path)
    if secret_fd is not None:
        return from_pipe
    return from_env


def sd_notify(message: str) -> None:
    """Send ``message`` to systemd's notify socket if we run under ``Type=notify``."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc.strerror)


def activation_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return socket.socket(fileno=3)


def shell_lines(sock: str, pid: int, shell: str) -> str:
    """The lines ``eval "$(keyagent start)"`` runs, for sh, csh or fish."""
    q = shlex.quote(sock)
    if shell == "csh":
        return f"setenv KEYAGENT_SOCK {q};\nsetenv KEYAGENT_PID {pid};\necho Agent pid {pid};\n"
    if shell == "fish":
        return f"set -x KEYAGENT_SOCK {q};\nset -x KEYAGENT_PID {pid};\necho Agent pid {pid};\n"
    return f"KEYAGENT_SOCK={q}; export KEYAGENT_SOCK;\nKEYAGENT_PID={pid}; export KEYAGENT_PID;\necho Agent pid {pid};\n"


def run_foreground(
    home: Home,
    config: AgentConfig,
    *,
    socket_path: str,
    secret: str | None,
    ready: Callable[[str], None] | None = None,
    session_factory: SessionFactory | None = None,
) -> int:
    """Run the agent in this process until it stops; 0 on a clean stop."""
    from pathlib import Path

    from agent.daemon.hardening import harden_process

    harden_process()  # before the backend is opened: no core dump or ptrace can reach a key or PIN

    from agent.daemon.server import AgentServer  # keeps `keyagent start` (the parent) light
    from agent.daemon.socketdir import claim_socket

    listen = activation_socket()
    # Claim the socket before touching the backend: a second agent for this home must fail before it logs in
    # to the token (or runs the key file's KDF), not after.
    claimed = None if listen is not None else claim_socket(Path(socket_path),
                                                           shared=AgentServer.shared_socket(config))
    try:
        backend = open_home_backend(home, config)
        try:
            if secret is not None:
                backend.unlock(secret)
        except BaseException:
            backend.close()
            raise
    except BaseException:
        if claimed is not None:
            claimed.release()
        raise
    server = AgentServer(home=home, config=config, backend=backend, socket_path=socket_path,
                         session_factory=session_factory, listen_sock=listen, claimed=claimed)

    def on_ready(path: str) -> None:
        sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on {path}")
        if ready is not None:
            ready(path)

    asyncio.run(server.run(on_ready))
    return 0


def spawn_background(child_argv: list[str], home: Home, timeout: float = 120.0, *,
                     secret: str | None = None) -> tuple[int, str]:
    """Start ``child_argv`` (which must accept ``--ready-fd N`` and ``--secret-fd N``) detached; return (pid, socket)
    once it is ready. ``secret`` reaches the child over a pipe; the child's environment holds no secret variable."""
    from agent.daemon.hardening import without_secrets

    from agent.home_trust import check_home, open_nofollow

    home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_home(home.path)
    r, w = os.pipe()
    sr, sw = os.pipe()  # the start secret: a pipe, never argv or the environment (both readable in /proc)
    try:
        os.write(sw, (secret or "").encode("utf-8"))  # far below the pipe buffer: never blocks
        os.close(sw)
        log_fd = open_nofollow(home.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            proc = subprocess.Popen(
                [*child_argv, "--ready-fd", str(w), "--secret-fd", str(sr)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(w, sr),
                start_new_session=True, close_fds=True, env=without_secrets(os.environ),
            )
        finally:
            os.close(log_fd)
    finally:
        os.close(w)
        os.close(sr)
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise StartError(f"the agent did not become ready within {timeout:g} s (see {home.log})")
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    line = data.decode("utf-8", "replace").strip()
    if line.startswith("READY "):
        return proc.pid, line[len("READY "):]
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        rc = None
    if line.startswith("ERROR "):
        raise StartError(line[len("ERROR "):])
    raise StartError(f"the agent exited (status {rc}) before it was ready; see {home.log}")


def write_ready(fd: int, line: str) -> None:
    """Write one readiness line to the parent and close the pipe."""
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8"))
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def main_child_stdio() -> None:
    """Line-buffer stderr so agent.log is readable while the daemon runs."""
    try:
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
