"""A ``p11-kit server`` serving a PKCS#11 token (SoftHSM2 in tests) on a Unix socket: the test suite's "USB port".

Stopping the server is what a client sees when a token is pulled or a network HSM goes away; starting it again
is the replug (pkcs11-probe.md §12). Clients load ``p11-kit-client.so`` with ``P11_KIT_SERVER_ADDRESS`` set.

Usage::

    srv = P11KitServer(socket_path, provider=SOFTHSM_MODULE, token_label="t1", env={"SOFTHSM2_CONF": conf})
    with srv:                          # start() + ready-wait; stop() on exit
        env = srv.client_env()         # os.environ + P11_KIT_SERVER_ADDRESS (give it to clients)
        srv.stop()                     # unplug: the server *and* every per-connection child are gone
        srv.start()                    # replug: same socket path, a fresh server
        with srv.unplugged(): ...      # the same, around a block (clients keep sending inside it)

Quirks handled here (measured with p11-kit 0.24 on Debian):

* The server forks one ``p11-kit-remote`` child per client connection, in its own process group. Killing only
  the parent leaves connected clients talking to the orphan, which never looks like an unplug; ``stop`` kills
  the whole group (``start_new_session=True`` makes the server the group leader).
* ``-f`` keeps it in the foreground but it still prints the ``P11_KIT_SERVER_ADDRESS=...`` shell lines.
* It rewrites its argv (``ps`` shows ``server -f -n ...``), so never look it up by name; we keep its pid.
* The socket appears once the server listens. Ready means a ``connect()`` on it succeeds, not merely that the
  path exists (a stale file from a killed server also "exists"), so a stale path is removed before start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from types import TracebackType
from typing import Iterator

__all__ = [
    "P11KIT_CLIENT_MODULE",
    "SOFTHSM_MODULE",
    "P11KitError",
    "P11KitServer",
    "find_client_module",
    "p11kit_available",
]

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_CLIENT_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
)


def find_client_module() -> str | None:
    """Path of p11-kit's client module (Debian package p11-kit-modules), or None."""
    for path in _CLIENT_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


P11KIT_CLIENT_MODULE = find_client_module() or _CLIENT_CANDIDATES[0]


def p11kit_available() -> bool:
    """True when both ``p11-kit`` (the server command) and the client module are installed."""
    return shutil.which("p11-kit") is not None and find_client_module() is not None


class P11KitError(RuntimeError):
    """The server could not be started (or died); carries its stderr so the test failure explains itself."""


class P11KitServer:
    """One ``p11-kit server`` process group serving the token(s) matching ``token_uri`` from ``provider``."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        provider: str = SOFTHSM_MODULE,
        token_label: str | None = None,
        token_uri: str | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 10.0,
        probe_token: bool = True,
    ) -> None:
        if (token_label is None) == (token_uri is None):
            raise ValueError("give exactly one of token_label or token_uri")
        self._own_dir: str | None = None
        if socket_path is None:
            self._own_dir = tempfile.mkdtemp(prefix="p11kit-")
            socket_path = os.path.join(self._own_dir, "p11-kit.sock")
        self.socket_path = socket_path
        self.provider = provider
        # RFC 7512 path attribute values escape reserved characters with %XX.
        self.token_uri = token_uri or "pkcs11:token=" + _pct(token_label or "")
        self.server_env = dict(os.environ, **(env or {}))
        self.ready_timeout = ready_timeout
        self.probe_token = probe_token
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()
        self.starts = 0

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The value for ``P11_KIT_SERVER_ADDRESS``."""
        return f"unix:path={self.socket_path}"

    @property
    def client_module(self) -> str:
        module = find_client_module()
        if module is None:
            raise P11KitError("p11-kit-client.so not found (Debian: apt-get install p11-kit-modules)")
        return module

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a client process: ``base`` (default os.environ) + P11_KIT_SERVER_ADDRESS."""
        return dict(os.environ if base is None else base, P11_KIT_SERVER_ADDRESS=self.address)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server and wait until it accepts connections; P11KitError (with its log) otherwise."""
        if self.running:
            raise P11KitError("server already running")
        if shutil.which("p11-kit") is None:
            raise P11KitError("p11-kit not installed (Debian: apt-get install p11-kit)")
        if not os.path.exists(self.provider):
            raise P11KitError(f"PKCS#11 module {self.provider} does not exist")
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)  # stale socket of a killed server; p11-kit would fail to bind
        self._log.seek(0)
        self._log.truncate()
        self._proc = subprocess.Popen(
            ["p11-kit", "server", "-f", "-n", self.socket_path, "--provider", self.provider, self.token_uri],
            env=self.server_env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise P11KitError(f"p11-kit server exited with {rc} at start: {self.log()}")
            if _connects(self.socket_path):
                break
            time.sleep(0.005)
        else:
            self.stop()
            raise P11KitError(f"p11-kit server not ready after {self.ready_timeout}s: {self.log()}")
        if self.probe_token:
            self._wait_token(deadline)

    def _wait_token(self, deadline: float) -> None:
        # The socket listens before the provider is even loaded (a missing module only fails per connection),
        # so "ready" also means a real client sees a token slot through the client module.
        why = ""
        while True:
            res = subprocess.run(
                ["pkcs11-tool", "--module", self.client_module, "--list-token-slots"],
                env=self.client_env(self.server_env), capture_output=True, text=True, timeout=30,
            )
            if res.returncode == 0 and "Slot " in res.stdout:
                return
            why = (res.stderr or res.stdout).strip()
            if time.monotonic() > deadline or not self.running:
                self.stop()
                raise P11KitError(f"p11-kit server ({self.provider}, {self.token_uri}) serves no token after "
                                  f"{self.ready_timeout}s: {why}; "
                                  f"server log: {self.log()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Unplug: signal the whole process group (server + per-client children), reap, remove the socket."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            # per-connection children may outlive the leader by a moment: kill the rest and wait until the group
            # is empty, so the caller knows no orphan can still answer a client
            _kill_group_and_wait(proc.pid)
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)

    def restart(self) -> None:
        """Replug after an unplug (or a fresh start if it was not running)."""
        self.stop()
        self.start()

    @contextmanager
    def unplugged(self, sig: int = signal.SIGTERM) -> Iterator["P11KitServer"]:
        """``with srv.unplugged(): ...`` — the token is gone inside the block and plugged back in after it."""
        self.stop(sig)
        try:
            yield self
        finally:
            self.start()

    def log(self) -> str:
        """What the server printed (stdout and stderr), for failure messages."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def close(self) -> None:
        self.stop()
        self._log.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> "P11KitServer":
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _kill_group_and_wait(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise P11KitError(f"process group {pgid} of p11-kit server did not exit")
        time.sleep(0.005)


def _connects(path: str) -> bool:
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _pct(value: str) -> str:
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
    return "".join(ch if ch in safe else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)
