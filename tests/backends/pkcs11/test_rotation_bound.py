"""A rotation flood leaves a bounded number of prekey objects on a real token (SoftHSM2): superseded prekeys
beyond the cap are destroyed at once, not after their grace period."""

from __future__ import annotations

import os
import time

from agent.daemon.prekeys import MAX_LIVE_PREKEYS
from agent.daemon.sessions import SessionManager
from agent.daemon.store import Store
from backends.home import load_config, open_backend
from tests.backends.pkcs11.helpers import pkcs11_home
from tests.helpers.softhsm import SoftHSMToken


def test_forced_rotations_keep_the_token_object_count_bounded(softhsm_token: SoftHSMToken) -> None:
    home = pkcs11_home(softhsm_token)
    backend = open_backend(load_config(home), home=home)
    backend.unlock(softhsm_token.pin)
    store = Store(os.path.join(home, "state.db"), backend.identity())
    mgr = SessionManager(backend, store, clock=time.time_ns, rng=os.urandom)
    try:
        for _ in range(3 * MAX_LIVE_PREKEYS + 2):
            mgr.rotate_signed_prekey()  # min_interval_ns=0: the owner's force
        assert len(backend.list_signed_prekeys()) == MAX_LIVE_PREKEYS
        listing = softhsm_token.pkcs11_tool("--list-objects", "--type", "privkey", login=True)
        assert listing.count("keyagent-spk") == MAX_LIVE_PREKEYS
        assert mgr.our_bundle()
    finally:
        mgr.close()
        backend.close()
