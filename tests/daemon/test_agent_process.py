"""The agent as a real process on a real socket: start/stop, eval lines, socket ownership, signals, peers."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from agent.client import AgentClient, AgentError, AgentUnavailable
from agent.paths import socket_path_for
from tests.daemon.agentproc import (
    OWNER_SIGNS,
    PASSPHRASE,
    KEYAGENT,
    AgentFactory,
    AgentProc,
    raw_connect,
    read_response,
    send_request,
    short_tmpdir,
    status_bytes,
)


@pytest.fixture
def agent(agents: AgentFactory) -> AgentProc:
    a = agents.new(config=OWNER_SIGNS)
    a.start()
    return a


def test_start_prints_sh_lines_and_a_cli_with_only_keyagent_sock_reaches_it(agent: AgentProc) -> None:
    assert agent.eval_text.startswith(f"KEYAGENT_SOCK={agent.sock}; export KEYAGENT_SOCK;\n")
    assert f"KEYAGENT_PID={agent.pid}; export KEYAGENT_PID;" in agent.eval_text
    # the shell really accepts the lines
    out = subprocess.run(["sh", "-c", agent.eval_text + 'printf %s "$KEYAGENT_SOCK"'], capture_output=True,
                         text=True, check=True).stdout
    assert out.endswith(agent.sock)
    assert agent.sock == str(agent.run / "keyagent" / socket_path_for(agent.home).name)
    st = os.stat(agent.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agent.run / "keyagent").st_mode) == 0o700
    cp = agent.cli("status", "--json")
    assert cp.returncode == 0, cp.stderr
    assert f'"pid": {agent.pid}' in cp.stdout.decode()


def test_csh_and_fish_lines(agents: AgentFactory) -> None:
    a = agents.new()
    a.start("-c")
    assert a.eval_text.startswith("setenv KEYAGENT_SOCK ")
    assert a.cli("stop").returncode == 0
    assert a.wait_exit()
    b = agents.new()
    b.start("--fish")
    assert b.eval_text.startswith("set -x KEYAGENT_SOCK ")


def test_stop_removes_the_socket_and_ends_the_process(agent: AgentProc) -> None:
    cp = agent.cli("stop")
    assert cp.returncode == 0, cp.stderr
    assert agent.wait_exit()
    assert not os.path.exists(agent.sock)
    cp = agent.cli("status")
    assert cp.returncode == 3
    assert b"no agent at" in cp.stderr and len(cp.stderr.splitlines()) == 1


def test_a_live_socket_is_never_stolen(agents: AgentFactory, agent: AgentProc) -> None:
    # `keyagent start` again (as .bashrc does) reuses the running agent: its lines again, exit 0
    second = AgentProc(home=agent.home, run=agent.run)
    cp = second.start()
    assert second.pid == agent.pid and second.sock == agent.sock
    assert "already runs" in cp.stderr
    # the agent process itself (-D, as systemd runs it) still refuses to take over a live socket
    cp = subprocess.run([*KEYAGENT, "--home", str(agent.home), "start", "-D"], env=second.env, text=True,
                        capture_output=True, timeout=120)
    assert cp.returncode != 0
    assert "already" in cp.stderr or "another agent" in cp.stderr
    with agent.client() as c:  # the first agent still serves on its socket
        assert c.status().pid == agent.pid


def test_a_stale_socket_is_replaced(agents: AgentFactory) -> None:
    a = agents.new()
    path = str(a.run / "keyagent" / socket_path_for(a.home).name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nothing listens: what a crashed agent leaves behind
    os.chmod(path, 0o644)  # marks the stale file (inode numbers may be reused, modes are not carried over)
    a.start()
    assert a.sock == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with a.client() as c:
        assert c.status().pid == a.pid


def test_a_non_socket_at_the_path_is_left_alone(agents: AgentFactory) -> None:
    a = agents.new()
    path = a.run / "keyagent" / socket_path_for(a.home).name
    path.parent.mkdir(mode=0o700)
    path.write_text("precious")
    cp = a.start(check=False)
    assert cp.returncode != 0 and "not a socket" in cp.stderr
    assert path.read_text() == "precious"


def test_an_unsafe_socket_directory_is_refused(agents: AgentFactory) -> None:
    a = agents.new()
    (a.run / "keyagent").mkdir(mode=0o755)
    os.chmod(a.run / "keyagent", 0o755)
    cp = a.start(check=False)
    assert cp.returncode != 0
    assert "0755" in cp.stderr and "0700" in cp.stderr


def test_agent_exits_when_its_socket_file_is_deleted(agent: AgentProc) -> None:
    os.unlink(agent.sock)
    assert agent.wait_exit()
    assert "socket deleted" in (agent.home / "agent.log").read_text()


def test_sigterm_stops_cleanly(agent: AgentProc) -> None:
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait_exit()
    assert not os.path.exists(agent.sock)
    assert "agent stopped: SIGTERM" in (agent.home / "agent.log").read_text()


def test_sighup_releases_the_token_and_the_agent_keeps_serving(agent: AgentProc) -> None:
    with agent.client() as c:
        assert c.status().backend_unlocked
    os.kill(agent.pid, signal.SIGHUP)
    log = agent.home / "agent.log"
    for _ in range(200):
        if "token released" in log.read_text():
            break
        time.sleep(0.01)
    assert "token released" in log.read_text()
    with agent.client() as c:  # a key file has no device to hand over: the agent serves on, still unlocked
        st = c.status()
        assert st.backend_unlocked and st.pid == agent.pid
        assert len(c.sign(b"\x01" * 32)) == 65


def test_start_with_a_wrong_passphrase_fails_with_one_line(agents: AgentFactory) -> None:
    a = agents.new()
    cp = a.start(passphrase="wrong", check=False)
    assert cp.returncode == 1
    assert "PASSPHRASE_INCORRECT" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1


def test_start_without_a_secret_serves_public_requests_then_unlock_opens_everything(agents: AgentFactory) -> None:
    a = agents.new(config=OWNER_SIGNS)
    a.start(passphrase=None)
    with a.client() as c:
        assert len(c.identity().identity_public_key) == 33
        st = c.status()
        assert not st.backend_unlocked and not st.sessions_open
        with pytest.raises(AgentError) as ei:
            c.sign(b"\x02" * 32)
        assert ei.value.code == "PASSPHRASE_REQUIRED"
        c.unlock(PASSPHRASE)
        assert c.status().sessions_open
        assert c.identity().installation_id


_NOBODY_CLIENT = textwrap.dedent(
    """
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    req = bytes.fromhex(sys.argv[2])
    data = b""
    try:
        s.sendall(struct.pack(">I", len(req)) + req)
    except (BrokenPipeError, ConnectionResetError):
        print("")  # refused: the agent closed before reading
        sys.exit(0)
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
            break
    print(data.hex())
    """
)


def _as_nobody(sock: str, request: bytes | None = None) -> str:
    cp = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c",
         _NOBODY_CLIENT, sock, (request or status_bytes()).hex()],
        capture_output=True, text=True, timeout=30,
    )
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_another_uid_is_refused_and_logged(agents: AgentFactory) -> None:
    shared = short_tmpdir("ka-shared-")
    try:
        os.chmod(shared, 0o755)
        a = agents.new()
        sock = str(shared / "agent.sock")
        # admit a gid nobody does not have: the socket becomes world-connectable, SO_PEERCRED must refuse
        a.start("--socket", sock, "--allow-gid", "4242")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
        assert _as_nobody(sock) == ""  # closed without an answer
        refused = [l for l in a.audit_lines() if l.get("result") == "DENIED"]
        assert refused and refused[-1]["type"] == "connect" and refused[-1]["uid"] == 65534
        assert "refused uid=65534" in (a.home / "agent.log").read_text()
        with AgentClient(sock) as c:  # our own uid is still served
            assert c.status().pid == a.pid
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_allow_uid_admits_that_uid(agents: AgentFactory) -> None:
    shared = short_tmpdir("ka-shared-")
    try:
        os.chmod(shared, 0o755)
        a = agents.new()
        sock = str(shared / "agent.sock")
        a.start("--socket", sock, "--allow-uid", "65534")
        data = bytes.fromhex(_as_nobody(sock))
        from agent.pb.keyagent import agent_pb2 as pb

        resp = pb.Response.FromString(data[4:])
        assert resp.WhichOneof("response") == "status" and resp.status.pid == a.pid
        line = [l for l in a.audit_lines() if l.get("uid") == 65534]
        assert line and line[-1]["result"] == "ok" and line[-1]["type"] == "status"
        # an admitted other uid may use the agent but not stop it
        stop = pb.Request(stop=pb.StopRequest()).SerializeToString()
        resp = pb.Response.FromString(bytes.fromhex(_as_nobody(sock, stop))[4:])
        assert resp.error.code == pb.Error.DENIED
        assert a.alive()
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


def test_many_clients_at_once_are_all_served(agent: AgentProc) -> None:
    socks = [raw_connect(agent.sock) for _ in range(20)]
    try:
        for s in socks:
            send_request(s, status_bytes())
        for s in socks:
            r = read_response(s)
            assert r is not None and r.status.pid == agent.pid
            assert r.status.connections >= 1
    finally:
        for s in socks:
            s.close()


def test_client_reports_unavailable_for_a_missing_socket(agents: AgentFactory) -> None:
    with pytest.raises(AgentUnavailable):
        AgentClient(str(agents.root / "nothing.sock")).connect()


_KEYAGENT_PY = [sys.executable]

_ACTIVATE = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'agent', *sys.argv[2:]])\n"
)


def test_socket_activation_and_sd_notify_readiness(agents: AgentFactory) -> None:
    """What systemd does for keyagent.socket + Type=notify: pass a bound socket as fd 3, wait for READY=1."""
    a = agents.new()
    path = str(a.run / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(a.run / "notify"))
    notify.settimeout(60)
    env = {**a.env, "KEYAGENT_PASSPHRASE": PASSPHRASE, "NOTIFY_SOCKET": str(a.run / "notify")}
    proc = subprocess.Popen(
        [*_KEYAGENT_PY, "-c", _ACTIVATE, str(listener.fileno()), "--home", str(a.home), "start", "-D",
         "--socket", path],
        env=env, pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        listener.close()  # only the agent holds it now
        message = notify.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        with AgentClient(path) as c:
            st = c.status()
            assert st.pid == proc.pid and st.socket == path
            c.stop()
        assert proc.wait(timeout=30) == 0
        assert os.path.exists(path), "a socket systemd owns must not be removed by the agent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_a_home_made_by_keyagent_init_starts_and_an_empty_home_is_refused(agents: AgentFactory) -> None:
    home = agents.root / "init-home"
    a = agents.new(home=home)
    cp = subprocess.run([sys.executable, "-m", "agent", "init", "--home", str(home), "--backend", "software"],
                        env={**a.env, "KEYAGENT_PASSPHRASE": PASSPHRASE}, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    a.start()
    with a.client() as c:
        st = c.status()
        assert st.backend == "software" and st.backend_unlocked and st.sessions_open
    empty = agents.new(home=agents.root / "empty-home")
    cp = empty.start(check=False)
    assert cp.returncode == 1 and "keyagent init" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
