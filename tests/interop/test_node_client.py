"""A client in a second language: ``tests/interop/agent_client.mjs`` (Node, protobufjs from the npm registry,
loading the shipped ``proto/keyagent/agent.proto``) talks to real agents on real sockets.

It asks one agent for identity and bundle, encrypts to a second agent, has it decrypt and answer, and decrypts the
answer; alice's identity is either a key file or a key on opencryptoki's soft token (a second real PKCS#11
implementation, its slot daemon run by the fixture). Before sending anything the client checks the socket
directory, the socket and the serving process's uid; the refusals are tested here too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent.client import AgentClient
from tests.daemon.agentproc import AgentFactory, AgentProc
from tests.helpers.extras import OpencryptokiToken

HERE = Path(__file__).resolve().parent

_PROVISION = (
    "import sys\n"
    "from backends.home import provision_identity\n"
    "provision_identity(sys.argv[1], 'pkcs11', module=sys.argv[2], token=sys.argv[3], pin=sys.argv[4])\n"
)


def node(*args: str, timeout: float = 60) -> dict[str, Any]:
    exe = shutil.which("node")
    if exe is None or not (HERE / "node_modules" / "protobufjs").is_dir():
        pytest.fail("Node client missing: run .ci/setup (npm ci in tests/interop) with Node >= 20")
    cp = subprocess.run([exe, "converse.mjs", *args], cwd=HERE, capture_output=True, text=True, timeout=timeout)
    assert cp.stdout.strip(), cp.stderr
    out: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    assert (cp.returncode == 0) == ("refused" not in out), (cp.returncode, out, cp.stderr)
    return out


@pytest.fixture(params=["software", "opencryptoki"])
def alice(request: pytest.FixtureRequest, agents: AgentFactory) -> Iterator[AgentProc]:
    if request.param == "software":
        a = agents.new()
        a.start()
        yield a
        return
    with OpencryptokiToken() as tok:
        home = agents.root / "ock-home"
        cp = subprocess.run([sys.executable, "-c", _PROVISION, str(home), tok.module, f"label:{tok.label}", tok.pin],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        a = agents.new(home=home)
        a.extra_env["KEYAGENT_PIN"] = tok.pin
        a.start(passphrase=None)
        yield a
        a.kill()  # before the slot daemon goes


def test_node_client_converses_with_two_agents(alice: AgentProc, agents: AgentFactory) -> None:
    bob = agents.new()
    bob.start()
    t0 = time.monotonic()
    out = node(alice.sock, bob.sock)
    elapsed = time.monotonic() - t0
    with AgentClient(alice.sock) as py_a, AgentClient(bob.sock) as py_b:
        a_id, b_id = py_a.identity(), py_b.identity()
        assert py_a.status().backend == ("pkcs11" if "ock" in str(alice.home) else "software")
    # what Node decoded equals what the Python client sees
    assert out["alice"]["identity"] == a_id.identity_public_key.hex()
    assert out["alice"]["public_key"] == a_id.public_key and out["bob"]["public_key"] == b_id.public_key
    assert out["bob"]["identity"] == b_id.identity_public_key.hex()
    assert len(bytes.fromhex(out["alice"]["bundle"])) > 100
    assert out["first_forward_secrecy"] is True  # X3DH with bob's bundle (ECDH on the token for opencryptoki)
    assert out["bob_got"] == "hello from node, sealed by alice's agent"
    assert out["alice_got"] == "bob's answer, through node"
    assert out["error_code"] == "BAD_REQUEST"  # a message that does not parse: the stable name from the enum
    assert out["checked"]["peerUid"] == os.getuid() and out["checked"]["dirMode"] == 0o700
    assert elapsed < 30


def test_node_client_refuses_an_open_socket_dir(agents: AgentFactory) -> None:
    a = agents.new()
    a.start()
    assert node(a.sock)["ok"] is True
    run = os.path.dirname(a.sock)
    mode = os.stat(run).st_mode & 0o777
    os.chmod(run, 0o777)  # anyone could now have replaced the socket
    try:
        out = node(a.sock)
    finally:
        os.chmod(run, mode)
    assert out["refused"] == "UNSAFE_SOCKET" and "mode 777" in out["why"]


def test_node_client_refuses_a_symlinked_dir_and_a_non_socket(agents: AgentFactory, tmp_path: Path) -> None:
    a = agents.new()
    a.start()
    link = tempfile.mkdtemp(prefix="ka-link-", dir="/tmp")
    try:
        os.rmdir(link)
        os.symlink(os.path.dirname(a.sock), link)
        out = node(os.path.join(link, os.path.basename(a.sock)))
        assert out["refused"] == "UNSAFE_SOCKET" and "not a directory" in out["why"]
    finally:
        os.unlink(link)
    plain = Path(tempfile.mkdtemp(prefix="ka-f-", dir="/tmp"))
    try:
        (plain / "agent.sock").write_text("")
        out = node(str(plain / "agent.sock"))
        assert out["refused"] == "UNSAFE_SOCKET" and "not a socket" in out["why"]
    finally:
        shutil.rmtree(plain)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve a socket as another uid (CI runs as root)")
def test_node_client_refuses_a_socket_served_by_another_uid() -> None:
    """Socket and directory pass (owned by root), but the process listening runs as nobody: refused."""
    d = tempfile.mkdtemp(prefix="ka-uid-", dir="/tmp")
    path = os.path.join(d, "agent.sock")
    serve = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.setgid(65534); os.setuid(65534)\n"
        "s.listen(); print('ready', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", serve, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        out = node(path)
        assert out["refused"] == "UNSAFE_SOCKET" and "runs as uid 65534" in out["why"]
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)  # it is a live socket: only the uid check refused it
        probe.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)
