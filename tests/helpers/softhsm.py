"""Fresh, isolated SoftHSM2 tokens for tests, and a ``p11-kit server`` in front of one.

Usage::

    from tests.helpers.softhsm import SoftHSMToken, P11KitServer, softhsm_token  # fixture

    with SoftHSMToken(label="t1") as tok:          # own temp dir, own SOFTHSM2_CONF, one initialised token
        subprocess.run([...], env=tok.env)         # tok.env = os.environ + SOFTHSM2_CONF
        tok.activate()                             # set SOFTHSM2_CONF in *this* process (python-pkcs11 reads it
                                                   # at C_Initialize; a loaded lib needs lib.reinitialize())
        tok.pkcs11_tool("--list-objects", login=True)

    with P11KitServer(tok) as srv:                 # serves tok's token on a Unix socket (one path per process)
        srv.module, srv.env                         # p11-kit-client.so + P11_KIT_SERVER_ADDRESS
        srv.stop(); srv.start()                     # unplug / replug as the client sees it

Attributes of :class:`SoftHSMToken`: ``dir``, ``conf``, ``module``, ``label``, ``pin``, ``so_pin``, ``serial``
(hex string as the token reports it), ``env``. Nothing touches the system-wide SoftHSM store.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Iterator, Protocol

import pytest

__all__ = [
    "SOFTHSM_MODULE",
    "P11KIT_CLIENT_MODULE",
    "SoftHSMToken",
    "P11KitServer",
    "ServedToken",
    "softhsm_token",
    "have_p11kit_server",
]

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
P11KIT_CLIENT_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


class SoftHSMToken:
    """A temp SoftHSM2 store with one initialised token; removed on exit."""

    def __init__(self, label: str | None = None, pin: str = "1234", so_pin: str = "5678") -> None:
        # A unique label by default: a SoftHSM already loaded in this process may still list an earlier
        # test's token until it is re-initialised, and a shared label would then match the stale one.
        self.label = label or f"kt-{secrets.token_hex(6)}"
        self.pin, self.so_pin = pin, so_pin
        self.module = SOFTHSM_MODULE
        self.dir = ""
        self.conf = ""
        self.serial = ""
        self.env: dict[str, str] = {}

    def __enter__(self) -> "SoftHSMToken":
        self.dir = tempfile.mkdtemp(prefix="softhsm-")
        os.mkdir(os.path.join(self.dir, "tokens"))  # SoftHSM refuses a tokendir that does not exist
        self.conf = os.path.join(self.dir, "softhsm2.conf")
        with open(self.conf, "w") as fh:
            fh.write(f"directories.tokendir = {self.dir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
        self.env = dict(os.environ, SOFTHSM2_CONF=self.conf)
        self.serial = self.add_token(self.label, self.pin, self.so_pin)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def add_token(self, label: str, pin: str | None = None, so_pin: str | None = None) -> str:
        """Initialise another token in the same store; returns its serial."""
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label,
             "--pin", pin or self.pin, "--so-pin", so_pin or self.so_pin],
            env=self.env, check=True, capture_output=True,
        )
        out = subprocess.run(["softhsm2-util", "--show-slots"], env=self.env, check=True,
                             capture_output=True, text=True).stdout
        for block in out.split("\nSlot ")[1:]:
            lab = re.search(r"Label:\s+(.*?)\s*$", block, re.M)
            ser = re.search(r"Serial number:\s+(\S+)", block)
            if lab and ser and lab.group(1) == label:
                return ser.group(1)
        raise RuntimeError(f"token {label} not found after init")

    def activate(self) -> None:
        """Point this process's SoftHSM at this store (takes effect at the next C_Initialize)."""
        os.environ["SOFTHSM2_CONF"] = self.conf

    def pkcs11_tool(self, *args: str, login: bool = False, module: str | None = None,
                    env: dict[str, str] | None = None) -> str:
        """Run OpenSC ``pkcs11-tool`` on this token and return stdout (raises on failure)."""
        cmd = ["pkcs11-tool", "--module", module or self.module, "--token-label", self.label]
        if login:
            cmd += ["--login", "--pin", self.pin]
        res = subprocess.run(cmd + list(args), env=env or self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pkcs11-tool failed: {res.stderr.strip()}")
        return res.stdout


class ServedToken(Protocol):
    """What a p11-kit server needs of a token: its module, its label, the environment the module reads."""

    module: str
    label: str
    env: dict[str, str]


def have_p11kit_server() -> bool:
    """True when ``p11-kit server`` and the client module are installed (Debian: p11-kit, p11-kit-modules)."""
    return shutil.which("p11-kit") is not None and os.path.exists(P11KIT_CLIENT_MODULE)


def _process_socket_path() -> str:
    d = os.path.join(tempfile.gettempdir(), f"keyagent-p11kit-{os.getpid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, "p11.sock")


class P11KitServer:
    """``p11-kit server`` serving one SoftHSM2 token on a Unix socket, in its own process group.

    The server forks one child per client connection, so stopping means killing the whole group; otherwise
    an already connected client keeps talking to the orphaned child and never sees the "unplug".
    """

    def __init__(self, token: "ServedToken", socket_path: str | None = None, *, p11kit: str = "p11-kit",
                 module: str = P11KIT_CLIENT_MODULE) -> None:
        # ``p11kit``/``module``: another p11-kit build (tests/helpers/extras.py: 0.25.5, which carries ECDH)
        self.token = token
        self.p11kit, self.module = p11kit, module
        # One socket path per test process: p11-kit-client.so reads P11_KIT_SERVER_ADDRESS only at its first
        # C_Initialize in a process, so later servers must listen where the first one did.
        self.socket = socket_path or _process_socket_path()
        self.env = dict(token.env, P11_KIT_SERVER_ADDRESS=f"unix:path={self.socket}")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self._proc = subprocess.Popen(
            [self.p11kit, "server", "-f", "-n", self.socket, "--provider", self.token.module,
             f"pkcs11:token={self.token.label}"],
            env=self.token.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(500):  # wait until the server accepts (bind comes before listen: existence is not enough)
            if os.path.exists(self.socket):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(self.socket)
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            if self._proc.poll() is not None:
                raise RuntimeError("p11-kit server exited at start")
            time.sleep(0.01)
        raise RuntimeError("p11-kit server did not create its socket")

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._proc.wait(timeout=10)
        self._proc = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def activate(self) -> None:
        """Point this process's p11-kit client at the server (read at C_Initialize)."""
        os.environ["P11_KIT_SERVER_ADDRESS"] = self.env["P11_KIT_SERVER_ADDRESS"]

    def __enter__(self) -> "P11KitServer":
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture
def softhsm_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSMToken]:
    """A fresh token in a fresh store, with SOFTHSM2_CONF set for this test (restored afterwards)."""
    with SoftHSMToken() as tok:
        monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        yield tok
