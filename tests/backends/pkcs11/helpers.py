"""Shared set-up for the PKCS#11 backend tests."""

from __future__ import annotations

import tempfile
from typing import Any

from backends.home import provision_identity
from tests.helpers.softhsm import SoftHSMToken


def pkcs11_home(tok: SoftHSMToken, **kw: Any) -> str:
    """A fresh home provisioned on ``tok`` (identity generated on the token unless ``kw`` says otherwise)."""
    home = tempfile.mkdtemp(prefix="home-", dir=tok.dir)
    provision_identity(home, "pkcs11", module=tok.module, token=tok.label, pin=tok.pin, **kw)
    return home
