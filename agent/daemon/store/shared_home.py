"""Homes whose state is a shared PostgreSQL store: ``keyagent init --store URL`` and ``--join``.

The first agent creates the store (schema, the data-key wrapping under its identity key) and leaves a *home
record* in it: the identity public key and, for a token, the token-object namespace and the identity key's
CKA_ID/label, so that the signed prekeys any agent makes are found by all. A joining agent reads the record,
adopts that very key on its token (the same token, or the same network HSM through its module or p11-kit),
checks the token's public key against the record, and then opens the store, whose key check proves once more
that the data key unwraps with this key. Nothing in the record is secret.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .location import check_store_url
from .rows import PutMeta, StoreError

__all__ = ["JoinRefused", "attach_new_store", "read_home_record", "join_store"]

RECORD_KEY = "home_record"


class JoinRefused(StoreError):
    """This home cannot join that store (another identity, another kind of backend): check the token and URL."""


def _home_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"identity_public_key": cfg["identity_public_key"], "backend": cfg["backend"]}
    if cfg["backend"] == "pkcs11":
        p = cfg["pkcs11"]
        rec.update(namespace=p["namespace"], identity_id=p["identity_id"], identity_label=p.get("identity_label"))
    return rec


def attach_new_store(home: str, cfg: dict[str, Any], url: str, *, secret: str) -> dict[str, Any]:
    """Create the store at ``url`` for a freshly provisioned home and point its config at it.

    ``secret``: the PIN (pkcs11) or passphrase (software) the home was just provisioned with. If the store
    cannot be created (the database is away, it already holds a store: ``--join`` was meant, ...) everything
    provisioning made is undone (:func:`_undo_provision`): a home without its state is unusable, and keys
    left behind on a token would be orphans nobody knows to delete.
    """
    from backends.home import open_backend, write_config

    from .postgres import PgStore

    check_store_url(url)
    try:
        backend = open_backend(cfg, home=home, pin_source=lambda _w: secret, passphrase_source=lambda _w: secret)
    except BaseException:
        os.unlink(os.path.join(home, "config.json"))  # without the backend its keys cannot be destroyed here
        raise
    try:
        store = PgStore(url, backend.identity(), create=True)
        try:
            store.write([PutMeta(RECORD_KEY, json.dumps(_home_record(cfg), sort_keys=True).encode())])
        finally:
            store.close()
        cfg = dict(cfg, store={"kind": "postgresql", "url": url})
        write_config(home, cfg)
        return cfg
    except BaseException:
        _undo_provision(home, cfg, backend)
        raise
    finally:
        backend.close()


def _undo_provision(home: str, cfg: Mapping[str, Any], backend: Any) -> None:
    """Remove what ``provision_identity`` made for a home whose store could not be created: the config, the
    first signed prekey, and the identity key unless it was adopted (it existed before init; its owner keeps
    it). Best effort after the config is gone: the store error is what the caller must see."""
    os.unlink(os.path.join(home, "config.json"))
    if cfg["backend"] == "pkcs11":
        from backends.pkcs11.keys import KeyRef

        try:
            backend.destroy_signed_prekey(1)
        except Exception:  # noqa: BLE001 - see the docstring
            pass
        if cfg["pkcs11"].get("identity_origin") != "adopted":
            try:
                backend.destroy_key(KeyRef(bytes.fromhex(cfg["pkcs11"]["identity_id"]),
                                           cfg["pkcs11"].get("identity_label")))
            except Exception:  # noqa: BLE001 - see the docstring
                pass
    else:
        Path(home, cfg["software"]["key_file"]).unlink(missing_ok=True)


def read_home_record(url: str) -> dict[str, Any]:
    """The record the first agent left in the store at ``url`` (no key needed: nothing in it is secret)."""
    from .postgres import _psycopg, _unavailable

    psycopg = _psycopg()
    check_store_url(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            try:
                row = conn.execute("SELECT value FROM meta WHERE key=%s", (RECORD_KEY,)).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
    except psycopg.OperationalError as exc:
        raise _unavailable(exc) from None
    if row is None:
        raise JoinRefused("this database holds no keyagent store to join: create it with init --store URL")
    rec = json.loads(bytes(row[0]))
    if not isinstance(rec, dict):
        raise JoinRefused("the store's home record is damaged")
    return rec


def join_store(home: str, url: str, *, module: str, token: str, pin: str, os_locking: bool = False) -> dict[str, Any]:
    """Provision ``home`` as another agent of the identity in the store at ``url`` (same token key)."""
    from backends.home import open_backend, provision_identity, write_config

    from .postgres import PgStore

    rec = read_home_record(url)
    if rec.get("backend") != "pkcs11":
        raise JoinRefused("only a store whose identity lives in a token can be joined (a key file is one "
                          "agent's; move it onto a token with keyagent migrate first)")
    try:
        cfg = provision_identity(home, "pkcs11", module=module, token=token, pin=pin, os_locking=os_locking,
                                 adopt_id=bytes.fromhex(rec["identity_id"]), adopt_label=rec.get("identity_label"),
                                 namespace=bytes.fromhex(rec["namespace"]), first_spk=False)
    except (KeyError, ValueError, TypeError) as exc:
        raise JoinRefused(f"the store's home record is damaged ({exc})") from None
    try:
        if cfg["identity_public_key"] != rec.get("identity_public_key"):
            raise JoinRefused("the token's key is not the identity the store was made for")
        cfg["pkcs11"]["identity_origin"] = "joined"
        backend = open_backend(cfg, home=home, pin_source=lambda _w: pin)
        try:
            PgStore(url, backend.identity()).close()  # the key check: StoreKeyMismatch for another key
        finally:
            backend.close()
        cfg = dict(cfg, store={"kind": "postgresql", "url": url})
        write_config(home, cfg)
        return cfg
    except BaseException:
        Path(home, "config.json").unlink(missing_ok=True)
        raise
