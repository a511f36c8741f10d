"""tests/helpers/p11kit.py really unplugs and replugs: a SoftHSM2 key served by ``p11-kit server`` is usable
through p11-kit-client.so (OpenSC pkcs11-tool as the client), stop breaks every client, start restores it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from tests.helpers.p11kit import SOFTHSM_MODULE, P11KitError, P11KitServer, p11kit_available

LABEL, PIN, SO_PIN = "hw-p11kit", "1234", "5678"

if not p11kit_available():  # .ci/setup installs p11-kit and p11-kit-modules; fail loudly rather than skip
    raise RuntimeError("p11-kit / p11-kit-client.so missing: run .ci/setup")


@pytest.fixture
def softhsm_env(tmp_path: Path) -> dict[str, str]:
    """A fresh SoftHSM2 store with one token holding a secp256k1 key pair (id 01), made on the module directly."""
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", SO_PIN],
                   env=env, check=True, capture_output=True)
    _tool(SOFTHSM_MODULE, env, "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:secp256k1",
          "--label", "k", "--id", "01")
    return {"SOFTHSM2_CONF": str(conf)}


@pytest.fixture
def server(tmp_path: Path, softhsm_env: dict[str, str]) -> Iterator[P11KitServer]:
    srv = P11KitServer(str(tmp_path / "p11.sock"), token_label=LABEL, env=softhsm_env)
    with srv:
        yield srv


def _tool(module: str, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["pkcs11-tool", "--module", module, *args], env=env, capture_output=True, text=True,
                         timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"pkcs11-tool {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def _public_key(srv: P11KitServer) -> ec.EllipticCurvePublicKey:
    out = _tool(srv.client_module, srv.client_env(), "--token-label", LABEL, "--list-objects", "--type", "pubkey").stdout
    m = re.search(r"EC_POINT:\s+([0-9a-f]+)", out)
    assert m, out
    der = bytes.fromhex(m.group(1))
    assert der[:2] == b"\x04\x41"  # DER OCTET STRING of the 65-byte uncompressed point
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), der[2:])


def _sign(srv: P11KitServer, tmp_path: Path, digest: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "digest").write_bytes(digest)
    return _tool(srv.client_module, srv.client_env(), "--token-label", LABEL, "--login", "--pin", PIN,
                 "--sign", "-m", "ECDSA", "--id", "01", "-i", str(tmp_path / "digest"),
                 "-o", str(tmp_path / "sig"), check=False)


def _verify(pub: ec.EllipticCurvePublicKey, digest: bytes, raw: bytes) -> None:
    assert len(raw) == 64
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_served_key_is_usable_then_unplug_then_replug(server: P11KitServer, tmp_path: Path) -> None:
    slots = _tool(server.client_module, server.client_env(), "--list-slots").stdout
    assert f"token label        : {LABEL}" in slots
    privs = _tool(server.client_module, server.client_env(), "--token-label", LABEL, "--login", "--pin", PIN,
                  "--list-objects", "--type", "privkey").stdout
    assert "never extractable" in privs
    pub = _public_key(server)

    digest = bytes(range(32))
    res = _sign(server, tmp_path, digest)
    assert res.returncode == 0, res.stderr
    _verify(pub, digest, (tmp_path / "sig").read_bytes())
    with pytest.raises(InvalidSignature):  # the check above can fail: a different digest does not verify
        _verify(pub, bytes(32), (tmp_path / "sig").read_bytes())

    server.stop()  # unplug
    assert not server.running and not os.path.exists(server.socket_path)
    gone = _tool(server.client_module, server.client_env(), "--list-slots", check=False)
    assert gone.returncode != 0 and LABEL not in gone.stdout
    (tmp_path / "sig").unlink()
    failed = _sign(server, tmp_path, digest)
    assert failed.returncode != 0 and not (tmp_path / "sig").exists()

    server.start()  # replug
    assert server.starts == 2
    res = _sign(server, tmp_path, digest[::-1])
    assert res.returncode == 0, res.stderr
    _verify(_public_key(server), digest[::-1], (tmp_path / "sig").read_bytes())
    assert _public_key(server).public_numbers() == pub.public_numbers()  # the same key came back


def test_stop_kills_per_connection_children(server: P11KitServer) -> None:
    # A connected client makes the server fork a p11-kit-remote child; stop() must take that child down too,
    # or an open client would never see the unplug.
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(server.socket_path)
    pgid = server.pid
    assert pgid is not None
    children = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
    assert len(children) >= 1
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    conn.settimeout(5)
    try:
        assert conn.recv(1) == b""  # the peer end is closed
    except ConnectionResetError:
        pass
    finally:
        conn.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_start_replaces_a_stale_socket(tmp_path: Path, softhsm_env: dict[str, str]) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file nobody listens on, like one left by a killed server
    stale.close()
    with P11KitServer(str(path), token_label=LABEL, env=softhsm_env) as srv:
        assert srv.running
        assert f"token label        : {LABEL}" in _tool(srv.client_module, srv.client_env(), "--list-slots").stdout


def test_unplugged_block(server: P11KitServer) -> None:
    with server.unplugged():
        assert not server.running
        assert _tool(server.client_module, server.client_env(), "--list-slots", check=False).returncode != 0
    assert server.running and server.starts == 2
    assert f"token label        : {LABEL}" in _tool(server.client_module, server.client_env(), "--list-slots").stdout


def test_sigkill_unplug_then_replug(server: P11KitServer) -> None:
    server.stop(signal.SIGKILL)  # a yanked cable: no graceful shutdown at all
    assert _tool(server.client_module, server.client_env(), "--list-slots", check=False).returncode != 0
    server.start()
    assert f"token label        : {LABEL}" in _tool(server.client_module, server.client_env(), "--list-slots").stdout


def test_start_failure_is_explained(tmp_path: Path, softhsm_env: dict[str, str]) -> None:
    srv = P11KitServer(str(tmp_path / "bad.sock"), provider=str(tmp_path / "no-such-module.so"),
                       token_label=LABEL, env=softhsm_env)
    with pytest.raises(P11KitError, match="no-such-module.so does not exist"):
        srv.start()
    assert not srv.running
    srv.close()
    # The socket listens, but no token matches the URI: not ready, and the message says which URI.
    srv = P11KitServer(str(tmp_path / "bad.sock"), token_label="no-such-token", env=softhsm_env, ready_timeout=1)
    with pytest.raises(P11KitError, match="pkcs11:token=no-such-token.*serves no token"):
        srv.start()
    assert not srv.running and not os.path.exists(srv.socket_path)
    srv.close()


def test_constructor_validation_and_own_socket_dir(softhsm_env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        P11KitServer(token_label="a", token_uri="pkcs11:token=a")
    with pytest.raises(ValueError):
        P11KitServer()
    srv = P11KitServer(token_label="a b;c", env=softhsm_env)
    assert srv.token_uri == "pkcs11:token=a%20b%3Bc"
    assert srv.address == f"unix:path={srv.socket_path}"
    assert srv.client_env({})["P11_KIT_SERVER_ADDRESS"] == srv.address
    own = os.path.dirname(srv.socket_path)
    assert os.path.isdir(own)
    srv.close()
    assert not os.path.exists(own)
