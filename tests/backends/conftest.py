"""Fixtures for the backend tests: fresh SoftHSM2 tokens (see tests/helpers/softhsm.py)."""

from tests.helpers.softhsm import softhsm_token as softhsm_token  # noqa: F401  (re-exported fixture)
