"""Which p11-kit versions carry X3DH's ECDH between agent and token: both ends need p11-kit >= 0.25.0.

Every combination of Debian 12's p11-kit 0.24.1 and 0.25.5 (built by .ci/pkcs11-extras), client module x server,
in front of SoftHSM2: signing works in all four; ECDH works only with 0.25.5 on both ends, and otherwise fails
with UNSUPPORTED naming which end is too old (never TOKEN_ABSENT: the token is there).
"""

from __future__ import annotations

import tempfile
from typing import Iterator

import pytest

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import MechanismUnsupported
from backends.home import load_config, open_backend, provision_identity
from backends.memory import MemoryKey
from tests.helpers.extras import require_p11kit
from tests.helpers.softhsm import P11KIT_CLIENT_MODULE, P11KitServer, SoftHSMToken

COMBOS = ["client0.24-server0.24", "client0.24-server0.25", "client0.25-server0.24", "client0.25-server0.25"]


@pytest.fixture(params=COMBOS, ids=[f"p11kit_ecdh-{c}" for c in COMBOS])
def combo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[tuple[str, object]]:
    new = require_p11kit()
    client_new, server_new = request.param.split("-")[0].endswith("0.25"), request.param.endswith("0.25")
    with SoftHSMToken() as tok:
        monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        srv = P11KitServer(tok, p11kit=new.bin if server_new else "p11-kit",
                           module=new.client_module if client_new else P11KIT_CLIENT_MODULE)
        with srv:
            monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", srv.env["P11_KIT_SERVER_ADDRESS"])
            home = tempfile.mkdtemp(prefix="home-", dir=str(tmp_path))
            provision_identity(home, "pkcs11", module=srv.module, token=f"pkcs11:token={tok.label}", pin=tok.pin)
            b = open_backend(load_config(home), home=home)
            b.unlock(tok.pin)
            yield request.param, b
            b.close()


def test_sign_everywhere_ecdh_only_with_025_on_both_ends(combo: tuple[str, object]) -> None:
    name, b = combo
    ik = b.identity()  # type: ignore[attr-defined]
    d = keccak256(b"remote")
    secp256k1.verify(d, ik.sign(d), ik.public_key())
    peer = MemoryKey.generate()
    if name == "client0.25-server0.25":
        assert ik.dh(peer.public_key()) == peer.dh(ik.public_key())
        return
    with pytest.raises(MechanismUnsupported) as err:
        ik.dh(peer.public_key())
    msg = str(err.value)
    assert err.value.code == "UNSUPPORTED" and ">= 0.25.0" in msg
    assert ("client module" in msg) and ("p11-kit server is" in msg)
    client_old, server_old = name.startswith("client0.24"), name.endswith("0.24")
    assert ("is p11-kit 0.24 or older" in msg) is client_old
    assert ("server is 0.24 or older" in msg) is server_old
    secp256k1.verify(d, ik.sign(d), ik.public_key())  # still signing: nothing was torn down
