"""Where a home's state lives: ``state.db`` beside it (the default), or a PostgreSQL database named by a libpq
URL in ``config.json`` (``"store": {"kind": "postgresql", "url": "postgresql://..."}``, written by
``keyagent init --store URL``).

A URL never carries a password: libpq's own mechanisms supply it (``passfile=`` in the URL or ``PGPASSFILE``,
which libpq ignores unless it is 0600; a client certificate; peer authentication on a Unix socket), so the
secret is on no command line, in no process list and in no config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.core.keyops import KeyOps

from .api import StateStore
from .rows import StoreError

__all__ = ["StoreUrlRefused", "check_store_url", "store_config", "open_store"]


class StoreUrlRefused(StoreError):
    """The store URL is not one we accept (not PostgreSQL, or it carries a password): fix the URL."""


def check_store_url(url: str) -> str:
    """A PostgreSQL libpq URL without a password, or :class:`StoreUrlRefused`."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise StoreUrlRefused("the store must be a postgresql:// URL (libpq form)")
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise StoreError("the PostgreSQL store needs psycopg: pip install 'keyagent[postgresql]'") from exc
    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # noqa: BLE001 - psycopg raises ProgrammingError for a malformed URL
        raise StoreUrlRefused(f"not a valid libpq URL: {exc}") from None
    if params.get("password"):
        raise StoreUrlRefused("the store URL carries a password: put it in a 0600 passfile (passfile= in the URL, "
                              "or PGPASSFILE) instead")
    return url


def store_config(config: Mapping[str, Any]) -> tuple[str, str]:
    """``(kind, url)`` of a home's config: ``("sqlite", "")`` unless it names a PostgreSQL store."""
    store = config.get("store")
    if store is None:
        return "sqlite", ""
    if not isinstance(store, Mapping) or store.get("kind") != "postgresql" or not isinstance(store.get("url"), str):
        raise StoreUrlRefused("config store must be {\"kind\": \"postgresql\", \"url\": \"postgresql://...\"}")
    return "postgresql", check_store_url(store["url"])


def open_store(home: Path, config: Mapping[str, Any], identity: KeyOps, *, create: bool = False) -> StateStore:
    """Open the home's store with the identity key (the data key needs it)."""
    kind, url = store_config(config)
    if kind == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(home / "state.db", identity)
    from .postgres import PgStore

    return PgStore(url, identity, create=create)
