"""The agent home's key configuration: provisioning (``keyagent init``/``migrate``) and opening the backend.

``<home>/config.json`` (mode 0600, written atomically; unknown top-level keys written by other parts of the
agent are preserved)::

    {
      "version": 1,
      "backend": "pkcs11" | "software",
      "identity_public_key": "<hex, 33-byte compressed>",
      "pkcs11": {                                   # only for backend "pkcs11"
        "module": "/usr/lib/softhsm/libsofthsm2.so",  # the ONLY place a module path comes from (or the CLI)
        "token": "pkcs11:token=...",                  # selector: RFC 7512 URI, serial:..., label:..., or a label
        "token_serial": "…", "token_label": "…",      # recorded at init; another serial is refused before any PIN
        "namespace": "<hex, 8 bytes>",                # SPK ids = namespace ‖ 02 ‖ version(4, BE)
        "identity_id": "<hex>", "identity_label": "…" | null,
        "identity_origin": "generated" | "adopted" | "imported",
        "allow_extractable": false,                   # true only when the user forced an extractable key
        "os_locking": false, "workers": 1,            # CKF_OS_LOCKING_OK init and parallel token workers
        "pin_ttl": 900,                               # seconds a PIN is kept for re-login after a replug
        "max_pin_failures": 3,                        # the agent's own wrong-PIN limit
        "pin_keyring": {"service": "keyagent-pin",    # optional, opt-in only: the PIN kept in the OS keyring
                        "username": "<serial>", "backend": "<class>" | null}
      },
      "software": {                                 # only for backend "software"
        "key_file": "identity.key"                    # relative to the home
      }
    }

The daemon calls :func:`open_backend` with the parsed config; the identity public key in the config is the
one the token must prove it still holds after every (re)connect.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Mapping

from backends.base import Backend, SecretSource
from backends.errors import BackendConfigError, KeyExists, PinRequired
from backends.home_config import ConfigUnreadable, ConfigUntrusted, config_path, read_home_config
from backends.files import write_atomic
from backends.software import DEFAULT_SCRYPT_N, SoftwareBackend

__all__ = [
    "CONFIG_VERSION",
    "load_config",
    "write_config",
    "open_backend",
    "provision_identity",
    "migrate_to_token",
]

#: the agent's own count of consecutive wrong PINs, kept across restarts: {"serial": "...", "failures": n}
PIN_FAILURES_NAME = "pin-failures.json"
CONFIG_VERSION = 1


def load_config(home: str) -> dict[str, Any]:
    """Read and validate ``<home>/config.json``; BackendConfigError on anything wrong (the typed ones of
    :mod:`backends.home_config` when the file cannot be read as JSON), the OS's own error when it is unreadable,
    UnsafeHome when another user could have written the home (the config names the module the agent loads)."""
    from agent.home_trust import check_home_file, verify_home

    verify_home(home)  # every file the agent keeps there (read_home_config checks the home and config.json)
    try:
        cfg = read_home_config(home)
    except ConfigUnreadable as exc:
        raise exc.error from None  # permissions / I/O: the caller sees the OSError, as open() raised it
    except ConfigUntrusted as exc:
        raise exc.error from None  # UnsafeHome, naming the path and the fix
    validate_config(cfg)
    assert isinstance(cfg, dict)
    if cfg["backend"] == "software":
        key_file = cfg["software"]["key_file"]
        check_home_file(key_file if os.path.isabs(key_file) else os.path.join(home, key_file), secret=True)
    return cfg


def write_config(home: str, cfg: Mapping[str, Any]) -> None:
    """Validate and write the config atomically (0600); the home directory is created 0700 if missing."""
    from agent.home_trust import check_home

    validate_config(cfg)
    os.makedirs(home, mode=0o700, exist_ok=True)
    check_home(home)
    write_atomic(config_path(home), (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode())


def _need(section: Mapping[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    val = section.get(key)
    if not isinstance(val, typ) or isinstance(val, bool) and typ is not bool:
        raise BackendConfigError(f"config {what}.{key} is missing or has the wrong type")
    return val


def validate_config(cfg: Any) -> None:
    if not isinstance(cfg, dict):
        raise BackendConfigError("config is not a JSON object")
    if cfg.get("version") != CONFIG_VERSION:
        raise BackendConfigError(f"unsupported config version {cfg.get('version')!r}")
    pub = _need(cfg, "identity_public_key", str, "config")
    try:
        from agent.core import secp256k1

        if len(bytes.fromhex(pub)) != 33:
            raise ValueError
        secp256k1.public_key(bytes.fromhex(pub))
    except ValueError as exc:
        raise BackendConfigError("config identity_public_key is not a 33-byte secp256k1 key") from exc
    store = cfg.get("store")
    if store is not None and not (isinstance(store, dict) and store.get("kind") == "postgresql"
                                  and isinstance(store.get("url"), str)):
        raise BackendConfigError("config store must be {\"kind\": \"postgresql\", \"url\": \"postgresql://...\"}")
    kind = cfg.get("backend")
    if kind == "pkcs11":
        p = _need(cfg, "pkcs11", dict, "config")
        _need(p, "module", str, "pkcs11")
        _need(p, "token", str, "pkcs11")
        _need(p, "token_serial", str, "pkcs11")
        ns = _need(p, "namespace", str, "pkcs11")
        ident = _need(p, "identity_id", str, "pkcs11")
        try:
            if len(bytes.fromhex(ns)) != 8 or not bytes.fromhex(ident):
                raise ValueError
        except ValueError as exc:
            raise BackendConfigError("config pkcs11.namespace / identity_id are not valid hex") from exc
        if p.get("identity_label") is not None and not isinstance(p["identity_label"], str):
            raise BackendConfigError("config pkcs11.identity_label must be a string or null")
        for key, typ in (("allow_extractable", bool), ("os_locking", bool)):
            if key in p and not isinstance(p[key], typ):
                raise BackendConfigError(f"config pkcs11.{key} must be a boolean")
        for key in ("workers", "max_pin_failures"):
            if key in p and (isinstance(p[key], bool) or not isinstance(p[key], int) or not 1 <= p[key] <= 64):
                raise BackendConfigError(f"config pkcs11.{key} must be an int in 1..64")
        pk = p.get("pin_keyring")
        if pk is not None and not (isinstance(pk, dict) and isinstance(pk.get("service"), str)
                                   and isinstance(pk.get("username"), str)
                                   and (pk.get("backend") is None or isinstance(pk.get("backend"), str))):
            raise BackendConfigError("config pkcs11.pin_keyring must be {service, username, backend}")
        if "pin_ttl" in p and (isinstance(p["pin_ttl"], bool) or not isinstance(p["pin_ttl"], (int, float))
                               or p["pin_ttl"] < 0):
            raise BackendConfigError("config pkcs11.pin_ttl must be a number >= 0")
    elif kind == "software":
        s = _need(cfg, "software", dict, "config")
        kf = _need(s, "key_file", str, "software")
        if not kf:
            raise BackendConfigError("config software.key_file is empty")
    else:
        raise BackendConfigError(f"unknown backend {kind!r} (pkcs11 or software)")


def open_backend(
    config: Mapping[str, Any],
    *,
    home: str,
    pin_source: SecretSource | None = None,
    passphrase_source: SecretSource | None = None,
) -> Backend:
    """Build the home's backend from its config (the daemon's one entry point). Nothing is unlocked here:
    the first sign/dh asks the source once, or raises PinRequired / PassphraseRequired."""
    validate_config(config)
    ik_pub = bytes.fromhex(config["identity_public_key"])
    if config["backend"] == "software":
        path = config["software"]["key_file"]
        if not os.path.isabs(path):
            path = os.path.join(home, path)
        sw = SoftwareBackend(path, secret_source=passphrase_source)
        if sw.identity().public_key() != ik_pub:
            from backends.errors import IdentityChanged

            raise IdentityChanged(f"key file {path} holds another identity than the config names")
        return sw
    from backends.pkcs11.backend import Pkcs11Backend
    from backends.pkcs11.keys import KeyRef

    p = config["pkcs11"]
    pk = p.get("pin_keyring")
    if pk is not None:  # the user opted in at init: the keyring is asked after the daemon's own source
        from backends.pin import chain_sources, keyring_source

        pin_source = chain_sources(pin_source, keyring_source(pk["service"], pk["username"], pk.get("backend")))
    return Pkcs11Backend(
        p["module"], p["token"],
        namespace=bytes.fromhex(p["namespace"]),
        identity=KeyRef(bytes.fromhex(p["identity_id"]), p.get("identity_label")),
        identity_public_key=ik_pub,
        token_serial=p["token_serial"],
        pin_source=pin_source,
        pin_ttl=float(p.get("pin_ttl", 900)),
        max_pin_failures=int(p.get("max_pin_failures", 3)),
        allow_extractable=bool(p.get("allow_extractable", False)),
        os_locking=bool(p.get("os_locking", False)),
        workers=int(p.get("workers", 1)),
        failure_file=os.path.join(home, PIN_FAILURES_NAME),
    )


def _refuse_existing(home: str) -> None:
    if os.path.exists(config_path(home)):
        raise KeyExists(f"{config_path(home)} already exists; this home is provisioned")


def provision_identity(
    home: str,
    backend_kind: str,
    *,
    module: str | None = None,
    token: str | None = None,
    pin: str | None = None,
    passphrase: str | None = None,
    use_keyring: bool = False,
    keyring_backend: str | None = None,
    adopt_id: bytes | None = None,
    adopt_label: str | None = None,
    import_secret: bytes | None = None,
    force: bool = False,
    os_locking: bool = False,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    first_spk: bool = True,
    store_pin_in_keyring: bool = False,
    namespace: bytes | None = None,
) -> dict[str, Any]:
    """Create the home's identity key (generated, adopted from the token, or imported from ``import_secret``),
    the first signed prekey (version 1), and ``config.json``. Returns the written config.

    ``store_pin_in_keyring`` (pkcs11, opt-in) keeps the PIN in the OS keyring (``keyring_backend`` names it) so
    the agent can log in unattended; a missing keyring is an error, never a plaintext fallback.
    ``namespace`` (pkcs11): the 8-byte prefix of the token objects' ids, given when a home joins a shared store
    and must find the signed prekeys the other agents of the identity made (random otherwise).
    ``import_secret`` is a 32-byte secp256k1 scalar (e.g. derived from a recovery phrase). On a token it is
    stored SENSITIVE and non-EXTRACTABLE, but the token marks it imported (NEVER_EXTRACTABLE false): it is
    protected from now on, it was not born there. ``force`` accepts an adopted extractable key.
    Nothing is written if any step fails (a token key made before the failure is destroyed again).
    """
    from agent.home_trust import check_home

    check_home(home)  # before a key is made: an unsafe home gets nothing written into it
    _refuse_existing(home)
    if import_secret is not None and (adopt_id is not None or adopt_label is not None):
        raise BackendConfigError("import a key or adopt one, not both")
    if backend_kind == "software":
        if adopt_id is not None or adopt_label is not None:
            raise BackendConfigError("adopting a key needs the pkcs11 backend")
        os.makedirs(home, mode=0o700, exist_ok=True)
        key_path = os.path.join(home, "identity.key")
        sw = SoftwareBackend.create(key_path, passphrase=passphrase, use_keyring=use_keyring,
                                    keyring_backend=keyring_backend, identity_secret=import_secret,
                                    scrypt_n=scrypt_n)
        try:
            if first_spk:
                sw.create_signed_prekey(1)
            cfg: dict[str, Any] = {
                "version": CONFIG_VERSION, "backend": "software",
                "identity_public_key": sw.identity().public_key().hex(),
                "software": {"key_file": "identity.key"},
            }
            write_config(home, cfg)
        except BaseException:
            os.unlink(key_path)
            raise
        finally:
            sw.close()
        return cfg
    if backend_kind != "pkcs11":
        raise BackendConfigError(f"unknown backend {backend_kind!r} (pkcs11 or software)")
    if not module or not token:
        raise BackendConfigError("the pkcs11 backend needs --module and --token")
    from backends.pkcs11.backend import Pkcs11Backend
    from backends.pkcs11.keys import KeyRef, identity_key_ref, spk_key_ref

    if namespace is None:
        namespace = secrets.token_bytes(8)
    elif len(namespace) != 8:
        raise BackendConfigError("a token namespace is 8 bytes")
    adopted = adopt_id is not None or adopt_label is not None
    if adopted:
        ik_ref = KeyRef(adopt_id or b"", adopt_label)
    else:
        ik_ref = identity_key_ref(namespace)
    backend = Pkcs11Backend(module, token, namespace=namespace, identity=ik_ref, pin_source=None,
                            allow_extractable=force, os_locking=os_locking, pin_ttl=0)
    made: list[int] = []  # 0: identity, n: SPK n — destroyed again if provisioning fails
    try:
        if not pin:
            raise PinRequired("provisioning a token needs its user PIN (--pin-file or KEYAGENT_PIN)")
        backend.unlock(pin)
        if adopted:
            ik_ref = backend.adopt(adopt_id, adopt_label)
            ik_pub = backend.identity().public_key()
            origin = "adopted"
        elif import_secret is not None:
            ik_pub = backend.import_key(ik_ref, import_secret)
            made.append(0)
            origin = "imported"
        else:
            ik_pub = backend.generate_identity()
            made.append(0)
            origin = "generated"
        if first_spk:
            backend.create_signed_prekey(1)
            made.append(1)
        cfg = {
            "version": CONFIG_VERSION, "backend": "pkcs11", "identity_public_key": ik_pub.hex(),
            "pkcs11": {
                "module": module, "token": token, "token_serial": backend.token_serial,
                "token_label": backend.token_label, "namespace": namespace.hex(),
                "identity_id": ik_ref.id.hex(), "identity_label": ik_ref.label, "identity_origin": origin,
                "allow_extractable": bool(force and adopted), "os_locking": os_locking, "workers": 1,
                "pin_ttl": 900, "max_pin_failures": 3,
            },
        }
        if store_pin_in_keyring:
            from backends.errors import KeyringUnavailable
            from backends.software import keyring_load

            kr = keyring_load(keyring_backend)
            try:
                kr.set_password("keyagent-pin", backend.token_serial, pin)
            except Exception as exc:
                raise KeyringUnavailable(f"the keyring refused to store the PIN: {type(exc).__name__}") from exc
            cfg["pkcs11"]["pin_keyring"] = {"service": "keyagent-pin", "username": backend.token_serial,
                                            "backend": keyring_backend}
        write_config(home, cfg)
        return cfg
    except BaseException:
        for what in reversed(made):
            try:
                backend.destroy_key(ik_ref if what == 0 else spk_key_ref(namespace, what))
            except Exception:
                pass
        raise
    finally:
        backend.close()


def migrate_to_token(
    home: str,
    *,
    module: str,
    token: str,
    pin: str,
    passphrase_source: SecretSource | None,
    os_locking: bool = False,
    remove_software_key: bool = False,
) -> dict[str, Any]:
    """Move a software home's identity and SPKs onto a token (non-extractable from now on) and switch config.

    The software key file stays unless ``remove_software_key``; either way the old key existed outside the
    token, which the token records (NEVER_EXTRACTABLE false) and this function's caller must say to the user.
    """
    cfg = load_config(home)
    if cfg["backend"] != "software":
        raise BackendConfigError("this home already uses a token")
    sw = open_backend(cfg, home=home, passphrase_source=passphrase_source)
    assert isinstance(sw, SoftwareBackend)
    ik_secret, spk_secrets = sw.export_secrets()
    sw.close()
    from backends.pkcs11.backend import Pkcs11Backend
    from backends.pkcs11.keys import identity_key_ref, spk_key_ref

    namespace = secrets.token_bytes(8)
    ik_ref = identity_key_ref(namespace)
    backend = Pkcs11Backend(module, token, namespace=namespace, identity=ik_ref, os_locking=os_locking, pin_ttl=0)
    made: list[Any] = []
    try:
        backend.unlock(pin)
        ik_pub = backend.import_key(ik_ref, ik_secret)
        made.append(ik_ref)
        for version, secret in sorted(spk_secrets.items()):
            backend.import_signed_prekey(version, secret)
            made.append(spk_key_ref(namespace, version))
        new = dict(cfg)
        new.pop("software", None)
        new.update(backend="pkcs11", identity_public_key=ik_pub.hex(), pkcs11={
            "module": module, "token": token, "token_serial": backend.token_serial,
            "token_label": backend.token_label, "namespace": namespace.hex(), "identity_id": ik_ref.id.hex(),
            "identity_label": ik_ref.label, "identity_origin": "imported", "allow_extractable": False,
            "os_locking": os_locking, "workers": 1, "pin_ttl": 900, "max_pin_failures": 3,
        })
        write_config(home, new)
    except BaseException:
        for ref in reversed(made):
            try:
                backend.destroy_key(ref)
            except Exception:
                pass
        raise
    finally:
        backend.close()
    if remove_software_key:
        os.unlink(sw.path)
    return new
