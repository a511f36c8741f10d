"""Real agent processes for the daemon tests: a software-backend home, ``keyagent start``, raw socket helpers.

Every agent gets its own short runtime directory under /tmp (``sun_path`` is limited to 108 bytes, pytest's
tmp_path can be longer) and its own home, so tests run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.client import AgentClient, Identity
from agent.pb.keyagent import agent_pb2 as pb

PASSPHRASE = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]
KEYAGENT = [sys.executable, "-m", "agent"]


#: agent.json policy that lets the owner's own uid use raw digest signing (off by default since it is a forgery
#: oracle): for the tests that exercise ``sign`` itself, or use it as "a request that needs the key".
OWNER_SIGNS: dict[str, Any] = {"policy": [{"name": "owner-signs", "uid": os.getuid(), "allow": ["sign"]}]}


def make_software_home(home: Path, *, config: dict[str, Any] | None = None) -> Path:
    """A home as ``keyagent init --backend software`` makes it (config.json + identity.key, first SPK), with a
    cheap scrypt so that the many agents these tests start stay fast; ``config`` becomes agent.json."""
    from backends.home import provision_identity

    provision_identity(str(home), "software", passphrase=PASSPHRASE, scrypt_n=1 << 12)
    if config:
        (home / "agent.json").write_text(json.dumps(config))
    return home


_PROVISION_TOKEN = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)


def make_token_home(home: Path, module: str, label: str, pin: str, env: dict[str, str]) -> Path:
    """A home as ``keyagent init --backend pkcs11`` makes it, its identity on the token ``label`` (a subprocess:
    the module reads SOFTHSM2_CONF from ``env`` when it is loaded)."""
    cp = subprocess.run([sys.executable, "-c", _PROVISION_TOKEN, str(home), module, f"label:{label}", pin],
                        env=env, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return home


@dataclass
class AgentProc:
    """One running agent started with ``keyagent start``."""

    home: Path
    run: Path  # XDG_RUNTIME_DIR
    sock: str = ""
    pid: int = 0
    eval_text: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_")}
        env.update(XDG_RUNTIME_DIR=str(self.run), PYTHONPATH=str(REPO))
        env.update(self.extra_env)  # may override PYTHONPATH (tests/bench/ab_socket.py runs another commit's agent)
        return env

    def start(self, *extra: str, passphrase: str | None = PASSPHRASE, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = self.env
        if passphrase is not None:
            env["KEYAGENT_PASSPHRASE"] = passphrase
        cp = subprocess.run([*KEYAGENT, "--home", str(self.home), "start", *extra], env=env, text=True,
                            capture_output=True, timeout=120)
        if check:
            assert cp.returncode == 0, cp.stderr
            self.eval_text = cp.stdout
            for line in cp.stdout.splitlines():
                for part in line.split(";"):
                    words = part.replace("=", " ").split()
                    if words[:1] in (["setenv"], ["set"]):
                        words = [w for w in words[1:] if w != "-x"]
                    if len(words) == 2 and words[0] == "KEYAGENT_SOCK":
                        self.sock = words[1]
                    elif len(words) == 2 and words[0] == "KEYAGENT_PID":
                        self.pid = int(words[1])
            assert self.sock and self.pid, cp.stdout
        return cp

    def cli(self, *args: str, input: bytes | None = None, sock_env: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run the CLI with only KEYAGENT_SOCK pointing at this agent (no --home)."""
        env = self.env
        if sock_env:
            env["KEYAGENT_SOCK"] = self.sock
        return subprocess.run([*KEYAGENT, *args], env=env, input=input, capture_output=True, timeout=60)

    def client(self) -> AgentClient:
        return AgentClient(self.sock).connect()

    def identity(self) -> Identity:
        with self.client() as c:
            return c.identity()

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a zombie is not alive: our start spawned it detached, so it is reaped by init; check /proc state
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def wait_exit(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        if self.pid and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if not self.wait_exit(20):
                os.kill(self.pid, signal.SIGKILL)
                self.wait_exit(5)

    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.home / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def short_tmpdir(prefix: str = "ka-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return d


class AgentFactory:
    """Creates homes and agents; stops every agent and removes every directory at teardown."""

    def __init__(self) -> None:
        self.root = short_tmpdir()
        self.agents: list[AgentProc] = []
        self._n = 0

    def new(self, *, config: dict[str, Any] | None = None, home: Path | None = None) -> AgentProc:
        self._n += 1
        run = self.root / f"r{self._n}"
        run.mkdir(mode=0o700)
        if home is None:
            home = make_software_home(self.root / f"h{self._n}", config=config)
        agent = AgentProc(home=home, run=run)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# --- raw socket helpers ------------------------------------------------------------------------------------------


def raw_connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def recv_all_or_eof(s: socket.socket) -> bytes:
    """Read until the agent closes the connection (raises socket.timeout if it never does)."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def send_request(s: socket.socket, request: bytes) -> None:
    s.sendall(struct.pack(">I", len(request)) + request)


def read_response(s: socket.socket) -> pb.Response | None:
    """One response frame, or None if the agent closed the connection."""
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    response: pb.Response = pb.Response.FromString(body)
    return response


def status_bytes() -> bytes:
    return bytes(pb.Request(status=pb.StatusRequest()).SerializeToString())
