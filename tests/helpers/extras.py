"""The PKCS#11 pieces that ``.ci/pkcs11-extras`` builds from Debian 13's source packages: p11-kit 0.25.5 (its RPC
carries ECDH1_DERIVE, Debian 12's 0.24.1 does not) and opencryptoki 3.23.0's soft token (a second real token).

Usage::

    p11kit = require_p11kit()                      # Prefix: .bin ("p11-kit"), .client_module; fails/skips if absent
    with OpencryptokiToken() as tok:               # slot daemon started, fresh token initialised; stopped on exit
        tok.module, tok.label, tok.pin, tok.serial, tok.env
    with P11KitServer(tok, p11kit=p11kit.bin, module=p11kit.client_module) as srv: ...   # tests.helpers.softhsm

When a build is missing the test FAILS under CI (``CI`` set) with the reason setup recorded, and is skipped
elsewhere (a developer machine without root cannot build opencryptoki).

opencryptoki compiles its paths in: its config and token state live in the build prefix (not the system's /etc
or /var), its daemon socket in /run/opencryptoki. So one slot daemon per machine: a fixture takes an exclusive
file lock, stops any daemon left over, wipes the soft token's state (files and its /dev/shm segment), starts
``pkcsslotd`` and initialises the token; on exit it stops the daemon again.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType

import pytest

__all__ = ["cache_dir", "Prefix", "require_p11kit", "require_opencryptoki", "OpencryptokiToken", "OCK_SO_PIN"]

P11KIT_VERSION = "0.25.5"
OCK_VERSION = "3.23.0"
OCK_SO_PIN = "87654321"  # a fresh opencryptoki token's SO PIN (C_InitToken must be given the current one)
OCK_SLOT = 3  # the slot .ci/pkcs11-extras writes into opencryptoki.conf
_OCK_RUN = "/run/opencryptoki"  # compiled in (PROC_SOCKET_FILE_PATH)


def cache_dir() -> str:
    """Where .ci/pkcs11-extras builds (same rule as the script: root -> /var/cache, else ~/.cache)."""
    if os.environ.get("KEYAGENT_CACHE"):
        return os.environ["KEYAGENT_CACHE"]
    if os.geteuid() == 0:
        return "/var/cache/keyagent"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keyagent")


@dataclass(frozen=True)
class Prefix:
    path: str

    @property
    def bin(self) -> str:
        return os.path.join(self.path, "bin", "p11-kit")

    @property
    def client_module(self) -> str:
        return os.path.join(self.path, "lib", "pkcs11", "p11-kit-client.so")

    @property
    def ock_module(self) -> str:
        return os.path.join(self.path, "lib", "opencryptoki", "libopencryptoki.so")

    @property
    def slotd(self) -> str:
        return os.path.join(self.path, "sbin", "pkcsslotd")

    @property
    def swtok_dir(self) -> str:
        return os.path.join(self.path, "var", "lib", "opencryptoki", "swtok")


def _missing(what: str) -> None:
    msg = f"{what} is not available: {what_failed(what)} (run: bash .ci/pkcs11-extras)"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def what_failed(name: str) -> str:
    try:
        with open(os.path.join(cache_dir(), f"{name.split()[0]}.status")) as fh:
            return fh.read().strip() or "empty status file"
    except FileNotFoundError:
        return f"setup never built it (no status in {cache_dir()})"


def _prefix(name: str, version: str, must_have: tuple[str, ...]) -> Prefix | None:
    path = os.path.join(cache_dir(), f"{name}-{version}")
    if not os.path.exists(os.path.join(path, ".built")):
        return None
    p = Prefix(path)
    return p if all(os.path.exists(getattr(p, attr)) for attr in must_have) else None


def require_p11kit() -> Prefix:
    """p11-kit 0.25.5 (server binary + client module), or fail (CI) / skip."""
    p = _prefix("p11-kit", P11KIT_VERSION, ("bin", "client_module"))
    if p is None:
        _missing(f"p11-kit {P11KIT_VERSION}")
    assert p is not None
    return p


def require_opencryptoki() -> Prefix:
    """opencryptoki 3.23.0 with its soft token, runnable here (root: the slot daemon switches user), or fail/skip."""
    p = _prefix("opencryptoki", OCK_VERSION, ("ock_module", "slotd"))
    if p is None:
        _missing(f"opencryptoki {OCK_VERSION}")
    assert p is not None
    if os.geteuid() != 0:
        _missing("opencryptoki (needs root to run pkcsslotd)")
    return p


class OpencryptokiToken:
    """opencryptoki's soft token, freshly initialised, with its own ``pkcsslotd`` for the lifetime of the block."""

    def __init__(self, label: str | None = None, pin: str = "12345678") -> None:
        self.prefix = require_opencryptoki()
        self.module = self.prefix.ock_module
        self.label = label or f"ock-{secrets.token_hex(4)}"
        self.pin, self.so_pin = pin, OCK_SO_PIN
        self.env = dict(os.environ)
        self.serial = ""
        self._lock_fd = -1

    # -- the slot daemon ---------------------------------------------------------------------------------------
    def _daemon_pid(self) -> int | None:
        try:
            with open(os.path.join(_OCK_RUN, "pkcsslotd.pid")) as fh:
                pid = int(fh.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid > 0 and _alive(pid) else None

    def stop_daemon(self) -> None:
        pid = self._daemon_pid()
        if pid is None:
            return
        # pkcsslotd ignores SIGTERM while any process still has the library initialised (its signal handler
        # checks its process table), and the test process keeps the module loaded: SIGKILL after a short grace.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 0.5
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.01)

    def start_daemon(self) -> None:
        os.makedirs(_OCK_RUN, exist_ok=True)
        shutil.chown(_OCK_RUN, "pkcsslotd", "pkcs11")
        os.chmod(_OCK_RUN, 0o710)
        # pkcsslotd forks into the background and exits; the daemon is ready when its socket accepts
        res = subprocess.run([self.prefix.slotd], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"pkcsslotd failed ({res.returncode}): {res.stderr.strip()}")
        sock = os.path.join(_OCK_RUN, "pkcsslotd.socket")
        deadline = time.monotonic() + 10
        while not _connects(sock):
            if time.monotonic() > deadline:
                raise RuntimeError("pkcsslotd did not open its socket within 10 s")
            time.sleep(0.01)

    def _wipe_state(self) -> None:
        """A never-initialised soft token: no NVTOK.DAT/master keys/objects, no shared-memory segment."""
        d = self.prefix.swtok_dir
        for entry in os.listdir(d):
            path = os.path.join(d, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        os.mkdir(os.path.join(d, "TOK_OBJ"))
        shutil.chown(os.path.join(d, "TOK_OBJ"), group="pkcs11")
        os.chmod(os.path.join(d, "TOK_OBJ"), 0o770)
        # the token keeps its state in /dev/shm under its directory's path, '/' -> '.'
        shm = os.path.dirname(d).strip("/").replace("/", ".")
        for seg in glob.glob(f"/dev/shm/{glob.escape(shm)}*"):
            os.unlink(seg)

    def tool(self, *args: str, login: bool = False, so: bool = False) -> str:
        cmd = ["pkcs11-tool", "--module", self.module, "--slot", str(OCK_SLOT)]
        if so:
            cmd += ["--login", "--login-type", "so", "--so-pin", self.so_pin]
        elif login:
            cmd += ["--login", "--pin", self.pin]
        res = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"pkcs11-tool {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "OpencryptokiToken":
        self._lock_fd = os.open(os.path.join(cache_dir(), "opencryptoki.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # one slot daemon per machine (compiled-in socket path)
        try:
            self.stop_daemon()
            self._wipe_state()
            self.start_daemon()
            self.tool("--init-token", "--label", self.label, "--so-pin", self.so_pin)
            self.tool("--init-pin", "--pin", self.pin, so=True)
            # opencryptoki's soft token reports an EMPTY serial number (all blanks): "" here
            m = re.search(r"serial num\s*:[ \t]*([^\n]*)", self.tool("--list-token-slots"))
            self.serial = m.group(1).strip() if m else ""
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop_daemon()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (FileNotFoundError, IndexError):
        return False


def _connects(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
