"""Shared fixtures for the Waku payload tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.waku.helpers import load_vectors


@pytest.fixture(scope="session")
def doc() -> dict[str, Any]:
    return load_vectors()
