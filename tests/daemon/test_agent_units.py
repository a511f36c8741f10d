"""In-process tests of the daemon's parts: config parsing, socket directory rules, the lock,
error-code mapping and the eval lines."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from agent.core import errors as core_errors
from agent.daemon.agent_lock import AgentLocked, LockManager, UnlockFailed, failure_delay
from agent.daemon.config import AgentConfig, ConfigError, Home, load_config
from agent.daemon.daemonize import shell_lines
from agent.daemon.service import error_code
from agent.daemon.socketdir import AgentRunning, SocketDirError, claim_socket, ensure_private_dir
from agent.pb.keyagent import agent_pb2 as pb
from backends import errors as backend_errors
from backends.base import BackendStatus
from backends.memory import MemoryKey
from tests.daemon.agentproc import short_tmpdir

if TYPE_CHECKING:
    from agent.daemon.service import ClientContext, Service


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = short_tmpdir("ka-u-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


# --- config -------------------------------------------------------------------------------------------------------


def test_config_defaults_without_a_file(tmp: Path) -> None:
    cfg = load_config(Home.at(tmp))
    assert cfg == AgentConfig() and cfg.max_frame == 256 * 1024 and not cfg.allow_ecdh


def test_config_reads_known_keys_and_keeps_unknown_ones(tmp: Path) -> None:
    (tmp / "agent.json").write_text(json.dumps({"max_frame": 1024, "allow_ecdh": True, "allow_uids": [1000],
                                                "unlock_ttl": 5, "future_option": {"x": 1}}))
    cfg = load_config(Home.at(tmp))
    assert (cfg.max_frame, cfg.allow_ecdh, cfg.allow_uids, cfg.unlock_ttl) == (1024, True, (1000,), 5.0)
    assert cfg.extra == {"future_option": {"x": 1}}


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '{"max_frame": "big"}', '{"max_frame": true}', '{"max_frame": 1}',
    '{"max_frame": 1e99}', '{"allow_ecdh": 1}', '{"allow_uids": ["root"]}', '{"allow_uids": 5}',
    '{"allow_gids": [-1]}', '{"request_timeout": 0}', '{"unlock_ttl": -1}', '{"workers": 0}',
    '{"max_connections": 100000}', "\xff", '{"confirm_ops": ["sign"]}', 
    '{"confirm_ops": ["status"], "confirm_command": ["true"]}', '{"confirm_command": "true"}', '{"confirm_command": [""]}',
    '{"confirm_timeout": 0}',
])
def test_config_rejects_malformed_values(tmp: Path, text: str) -> None:
    (tmp / "agent.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(Home.at(tmp))


def test_config_overrides_are_validated() -> None:
    assert AgentConfig().with_overrides(max_frame=4096, unlock_ttl=None).max_frame == 4096
    with pytest.raises(ConfigError):
        AgentConfig().with_overrides(max_frame=0)


# --- socket directory ---------------------------------------------------------------------------------------------


def test_private_dir_is_created_0700(tmp: Path) -> None:
    d = tmp / "sockets"
    ensure_private_dir(d)
    assert os.stat(d).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711, 0o770, 0o777])
def test_private_dir_with_loose_mode_is_refused_and_left_unchanged(tmp: Path, mode: int) -> None:
    d = tmp / "sockets"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(SocketDirError):
        ensure_private_dir(d)
    assert os.stat(d).st_mode & 0o777 == mode


def test_private_dir_symlink_and_file_are_refused(tmp: Path) -> None:
    real = tmp / "real"
    real.mkdir(mode=0o700)
    (tmp / "link").symlink_to(real)
    with pytest.raises(SocketDirError):
        ensure_private_dir(tmp / "link")
    (tmp / "file").write_text("")
    with pytest.raises(SocketDirError):
        ensure_private_dir(tmp / "file")


def test_private_dir_owned_by_another_uid_is_refused(tmp: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(SocketDirError, match="owned by uid 65534"):
        ensure_private_dir(d)


def test_shared_dir_may_be_traversable_but_never_writable_by_others(tmp: Path) -> None:
    d = tmp / "shared"
    d.mkdir()
    os.chmod(d, 0o755)
    ensure_private_dir(d, shared=True)
    os.chmod(d, 0o775)
    with pytest.raises(SocketDirError):
        ensure_private_dir(d, shared=True)


def test_claim_refuses_a_live_socket_and_replaces_a_stale_one(tmp: Path) -> None:
    d = tmp / "s"
    path = d / "agent.sock"
    first = claim_socket(path)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        with pytest.raises(AgentRunning):  # the lock file is held
            claim_socket(path)
    finally:
        first.release()
    assert not path.exists()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    second = claim_socket(path)
    try:
        assert second.still_ours()
        os.unlink(path)
        assert not second.still_ours()
        imposter = socket.socket(socket.AF_UNIX)
        imposter.bind(str(path))  # someone else's socket now sits at the path
    finally:
        second.release()
    assert path.exists(), "release must not delete a socket that is no longer ours"
    imposter.close()


def test_claim_without_lock_file_still_probes_a_live_listener(tmp: Path) -> None:
    d = tmp / "s"
    d.mkdir(mode=0o700)
    path = d / "agent.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(AgentRunning):
            claim_socket(path)
        assert path.exists()
    finally:
        live.close()


# --- lock ---------------------------------------------------------------------------------------------------------


class FakeBackend:
    """Just the lock surface of a Backend; ``secret`` opens it, PassphraseIncorrect otherwise."""

    kind = "software"

    def __init__(self, secret: str = "s3cret") -> None:
        self.secret = secret
        self.unlocked = True
        self.absent = False

    def lock(self) -> None:
        self.unlocked = False

    def unlock(self, secret: str, *, force: bool = False) -> None:
        if self.absent:
            raise backend_errors.TokenAbsent("gone")
        if secret != self.secret:
            raise backend_errors.PassphraseIncorrect("wrong passphrase")
        self.unlocked = True

    def status(self) -> BackendStatus:
        return BackendStatus("software", True, self.unlocked, b"\x02" * 33, "fake")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _manager(ttl: float = 0.0) -> tuple[LockManager, FakeBackend, list[float], FakeClock]:
    backend = FakeBackend()
    sleeps: list[float] = []
    clock = FakeClock()
    lm = LockManager(backend, ttl=ttl, clock=clock, sleep=sleeps.append)  # type: ignore[arg-type]
    return lm, backend, sleeps, clock


def test_failed_unlocks_wait_longer_each_time_and_success_resets() -> None:
    lm, backend, sleeps, _ = _manager()
    lm.lock()
    assert lm.locked and not backend.unlocked
    for _ in range(3):
        with pytest.raises(backend_errors.PassphraseIncorrect):
            lm.unlock("guess")
    assert sleeps == [failure_delay(1), failure_delay(2), failure_delay(3)] and sleeps == sorted(sleeps)
    assert sleeps[0] > 0 and lm.locked and lm.failures == 3
    lm.unlock("s3cret")
    assert not lm.locked and lm.failures == 0 and backend.unlocked
    assert failure_delay(10_000) == 10.0


def test_non_guess_failures_do_not_count_or_delay() -> None:
    lm, backend, sleeps, _ = _manager()
    lm.lock()
    backend.absent = True
    with pytest.raises(backend_errors.TokenAbsent):
        lm.unlock("s3cret")
    assert sleeps == [] and lm.failures == 0 and lm.locked


def test_password_lock_gates_without_touching_the_backend() -> None:
    lm, backend, sleeps, _ = _manager()
    lm.lock("pw")
    assert lm.locked and backend.unlocked
    with pytest.raises(AgentLocked):
        lm.check()
    with pytest.raises(UnlockFailed):
        lm.unlock("s3cret")  # the backend secret is not the lock password
    assert len(sleeps) == 1 and lm.locked
    lm.unlock("pw")
    lm.check()
    assert not lm.locked


def test_ttl_locks_after_expiry_and_restarts_on_unlock() -> None:
    lm, backend, _, clock = _manager(ttl=60)
    lm.check()
    assert lm.ttl_remaining() == 60
    clock.now += 59.9
    assert not lm.tick() and not lm.locked
    clock.now += 0.2
    assert lm.locked and not backend.unlocked
    with pytest.raises(AgentLocked):
        lm.check()
    lm.unlock("s3cret")
    assert lm.ttl_remaining() == 60 and not lm.locked


# --- errors and shells --------------------------------------------------------------------------------------------


def test_every_typed_error_maps_to_a_stable_code() -> None:
    classes = [getattr(backend_errors, n) for n in backend_errors.__all__] + \
              [getattr(core_errors, n) for n in core_errors.__all__]
    for cls in classes:
        code = error_code(cls("x"))
        if cls.code == "BACKEND_ERROR":
            assert code == pb.Error.INTERNAL
        else:
            assert code != pb.Error.INTERNAL, (
                f"{cls.__name__}.code = {cls.code!r} is not an Error.Code: add it to proto/keyagent/agent.proto "
                "(or alias it in agent/daemon/service.py _CODE_ALIASES)")
    assert error_code(backend_errors.PinRequired("x")) == pb.Error.PIN_REQUIRED
    assert error_code(core_errors.UnknownSession("x")) == pb.Error.NO_SESSION
    assert error_code(core_errors.DecryptFailed("x")) == pb.Error.DECRYPT_FAILED
    assert error_code(KeyError("x")) == pb.Error.INTERNAL


def test_error_code_numbers_never_change() -> None:
    # clients in other languages compiled these numbers in; renumbering breaks them silently
    assert [pb.Error.Code.Value(n) for n in ("INTERNAL", "BAD_REQUEST", "UNSUPPORTED", "DENIED", "LOCKED",
                                             "PIN_REQUIRED", "TOKEN_ABSENT", "NO_SESSION", "DECRYPT_FAILED")] == \
        [0, 1, 2, 3, 4, 5, 7, 13, 14]


def test_shell_lines_quote_the_path() -> None:
    path = "/tmp/dir with space/agent.sock"
    out = subprocess.run(["sh", "-c", shell_lines(path, 42, "sh") + 'printf "%s|%s" "$KEYAGENT_SOCK" "$KEYAGENT_PID"'],
                         capture_output=True, text=True, check=True).stdout
    assert out.endswith(f"{path}|42")
    assert f"setenv KEYAGENT_SOCK {shlex.quote(path)};" in shell_lines(path, 42, "csh")
    assert f"set -x KEYAGENT_SOCK {shlex.quote(path)};" in shell_lines(path, 42, "fish")


# --- service in process -----------------------------------------------------------------------------------------


def _service(tmp: Path, factory: object, **cfg: object) -> "Service":
    from concurrent.futures import ThreadPoolExecutor

    from agent.daemon.audit import AuditLog
    from agent.daemon.service import Service

    backend = FakeBackend()
    return Service(
        home=Home.at(tmp), config=AgentConfig().with_overrides(**cfg), backend=backend,  # type: ignore[arg-type]
        lock=LockManager(backend), audit=AuditLog(tmp / "audit.log"),  # type: ignore[arg-type]
        executor=ThreadPoolExecutor(2), sessions=factory, socket_path="x",  # type: ignore[arg-type]
        on_stop=lambda: None, on_release=lambda: None,
    )


def _ctx() -> "ClientContext":
    from agent.daemon.peercred import PeerCred
    from agent.daemon.service import ClientContext

    return ClientContext(PeerCred(os.getpid(), os.getuid(), os.getgid()), "/bin/test", 1, True)


def _answer(svc: "Service", request: pb.Request, ctx: "ClientContext") -> pb.Response:
    """What a server connection does with one request: process it in a worker within its time limit, audit it."""
    import concurrent.futures
    import time

    started = time.monotonic()
    future = svc.executor.submit(svc.process, request, ctx)
    try:
        response, fields = future.result(timeout=svc.limit(request.WhichOneof("request")))
    except concurrent.futures.TimeoutError:
        response, fields = svc.timeout_response(request, ctx, started)
    svc.record(ctx, fields)
    return response


def test_a_request_over_its_time_limit_gets_timeout(tmp: Path) -> None:
    import threading

    release = threading.Event()

    def slow_factory() -> object:
        release.wait(10)
        raise RuntimeError("never opened")

    svc = _service(tmp, slow_factory, request_timeout=0.2)
    try:
        resp = _answer(svc, pb.Request(bundle=pb.BundleRequest()), _ctx())
    finally:
        release.set()
    assert resp.error.code == pb.Error.TIMEOUT and "0.2 s" in resp.error.message
    (line,) = [json.loads(l) for l in (tmp / "audit.log").read_text().splitlines()]
    assert line["type"] == "bundle" and line["result"] == "TIMEOUT"


def test_unexpected_exceptions_are_internal_without_their_text(tmp: Path) -> None:
    def broken_factory() -> object:
        raise KeyError("secret-looking detail")

    svc = _service(tmp, broken_factory)
    resp = _answer(svc, pb.Request(bundle=pb.BundleRequest()), _ctx())
    assert resp.error.code == pb.Error.INTERNAL
    assert "secret-looking" not in resp.error.message and "KeyError" in resp.error.message


def test_no_session_errors_carry_reason_and_reply(tmp: Path) -> None:
    class NoSessionManager:
        installation_id = "me"

        def decrypt(self, sender: bytes, message: bytes) -> object:
            exc = core_errors.UnknownSession("no session for this message")
            exc.reason = "unknown_prekey"  # type: ignore[attr-defined]
            exc.reply = b"our bundle"  # type: ignore[attr-defined]
            raise exc

    svc = _service(tmp, NoSessionManager)
    peer = MemoryKey.generate().public_key()
    req = pb.Request(decrypt=pb.DecryptRequest(sender_identity=peer, message=b"\x01"))
    resp = _answer(svc, req, _ctx())
    assert resp.error.code == pb.Error.NO_SESSION
    assert (resp.error.reason, resp.error.reply) == ("unknown_prekey", b"our bundle")


def test_systemd_units_verify_and_use_our_options(tmp: Path) -> None:
    import shutil

    from agent.cli import build_parser

    unit_dir = Path(__file__).resolve().parents[2] / "agent" / "daemon" / "systemd"
    service = (unit_dir / "keyagent.service").read_text()
    exec_start = next(l for l in service.splitlines() if l.startswith("ExecStart="))
    argv = shlex.split(exec_start.split("keyagent", 1)[1].replace("%t", "/run/user/1000"))
    args = build_parser().parse_args(argv)  # the unit's options exist in our CLI
    assert args.foreground and args.socket == "/run/user/1000/keyagent/agent.sock"
    socket_unit = (unit_dir / "keyagent.socket").read_text()
    assert "ListenStream=%t/keyagent/agent.sock" in socket_unit and "UMask=0177" in service
    if shutil.which("systemd-analyze") is None:
        return
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
    cp = subprocess.run(["systemd-analyze", "verify", str(unit_dir / "keyagent.service"),
                         str(unit_dir / "keyagent.socket")], capture_output=True, text=True, env=env)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr


def test_idle_upkeep_runs_only_while_unlocked(tmp: Path) -> None:
    calls: list[str] = []

    class Manager:
        installation_id = "me"

        def maintain(self) -> None:
            calls.append("maintain")

    svc = _service(tmp, Manager)
    svc.maintain()  # not open yet: nothing to maintain
    assert calls == []
    svc.sessions()
    svc.maintain()
    svc.lock.lock()
    svc.maintain()
    assert calls == ["maintain"]




def test_a_peer_key_from_a_client_is_checked_on_the_curve_every_time_it_is_not_a_valid_point() -> None:
    """peer_public_key takes the 33-byte form through the validated-point cache: a valid key repeats cheaply, but
    a bad prefix or an x with no point on secp256k1 is a BAD_REQUEST every time (nothing invalid is remembered)."""
    from agent.core import secp256k1
    from agent.daemon.handler_api import BadRequest, peer_public_key

    key = MemoryKey.generate().public_key()
    full = secp256k1.decompress(key)
    assert peer_public_key(key, "peer") == key == peer_public_key(full, "peer")
    assert peer_public_key(key, "peer") == key  # the second time from the cache, same answer
    x = 5
    while True:  # an x coordinate with no point on the curve
        try:
            secp256k1.public_key(b"\x02" + x.to_bytes(32, "big"))
            x += 1
        except core_errors.MalformedKey:
            break
    for bad in (b"\x05" + key[1:], b"\x02" + x.to_bytes(32, "big"), b"\x04" + full[1:33] + bytes(32)):
        for _ in range(2):
            with pytest.raises(BadRequest):
                peer_public_key(bad, "peer")
