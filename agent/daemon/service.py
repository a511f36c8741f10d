"""One handler per request: policy → work → audit, and typed errors → stable wire codes.

The server's event loop first offers every decoded :class:`Request` to :meth:`Service.answer_from_memory`: the
cheap requests (``status``, ``identity``, ``bundle``) are answered there, on the loop, from state already in memory,
touching neither the store nor the token, and never waiting on a lock another thread may hold for long. Every other
request (and a cheap one whose answer is not in memory right now) goes to :meth:`Service.process` on a worker
thread, because backend and session-manager calls block: token round trips, the store's fsync. The server applies
the time limit (:meth:`Service.limit`, :meth:`Service.timeout_response`). Each request checks
policy (lock state, ecdh policy, owner-only requests, the confirmation hook), does the work, yields one audit line
(:meth:`Service.record`) and one :class:`Response`. Every exception becomes ``Error{code, message}``: typed errors
derive from :class:`~agent.core.error_codes.CodedError` and name their code; anything else is a bug, reported as
INTERNAL without its text (which could hold anything) and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import time
from concurrent.futures import Executor
from typing import Any, Callable, Protocol, Sequence

from agent import __version__
from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.identity.formats import share_link, zq3_encode
from agent.daemon.agent_lock import AgentLocked, LockManager
from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, Home
from agent.daemon.handler_api import (
    BadRequest,
    ClientContext,
    Denied,
    Outcome,
    peer_public_key,
)
from agent.daemon.policy import Policy
from agent.daemon.rollback import RollbackGuard, slot_for
from agent.daemon.sessions import SessionManager
from agent.daemon.store.location import open_store
from agent.daemon.store.rows import StoreFailed
from backends.home_config import config_path
from agent.pb.keyagent import agent_pb2 as pb
from backends.base import Backend

__all__ = [
    "Service",
    "FROM_MEMORY",
    "ClientContext",
    "SessionsLike",
    "SessionFactory",
    "BadRequest",
    "Denied",
    "error_code",
]

log = logging.getLogger("keyagent.service")

#: Requests run on the event loop itself when the backend's keys are in this process (their work is CPU then; only
#: the wait for durability leaves the loop). Anything else - and everything with a token - runs on a worker.
_INLINE = frozenset({"encrypt", "decrypt", "confirm", "sign", "ecdh", "add_bundle", "list_sessions", "bundle",
                     "identity"})

#: Requests allowed while the agent is locked: nothing in them uses a secret or reveals session metadata
#: (``bundle`` answers the last bundle signed before the lock, never a new signature; ``app_unwrap`` only verifies).
_ALLOWED_LOCKED = frozenset({"identity", "bundle", "status", "lock", "unlock", "release", "stop", "app_unwrap"})

class SessionsLike(Protocol):
    """What the service needs from agent/daemon/sessions.py's SessionManager."""

    installation_id: str

    def our_bundle(self) -> bytes: ...
    def encrypt(self, peer_identity: bytes, payload: bytes, peer_bundle: bytes | None = None) -> Any: ...
    def decrypt(self, sender_identity: bytes, message: bytes) -> Any: ...
    def confirm(self, refs: Sequence[bytes]) -> None: ...
    def add_peer_bundle(self, bundle_bytes: bytes) -> bytes: ...
    def list_sessions(self) -> Sequence[Any]: ...
    def rotate_signed_prekey(self, min_interval_ns: int = 0) -> int: ...
    def last_bundle(self) -> bytes | None: ...
    def durable_bundle(self) -> bytes | None: ...


SessionFactory = Callable[[], SessionsLike]


def default_session_factory(home: Home, backend: Backend) -> SessionFactory:
    """Open the home's store with the identity key (needs the backend unlocked) and a SessionManager over it."""

    def factory() -> SessionsLike:
        from backends.home import load_config

        store = open_store(home.path, load_config(str(home.path)), backend.identity())
        try:
            guard = RollbackGuard(store, lambda name: slot_for(backend, name))
            manager: SessionsLike = SessionManager(backend, store, clock=time.time_ns, rng=os.urandom, rollback=guard)
        except BaseException:
            store.close()
            raise
        return manager

    return factory


def error_code(exc: BaseException) -> int:
    """The wire code of an exception: the one its :class:`CodedError` code travels as, else INTERNAL."""
    if isinstance(exc, CodedError):
        return int(pb.Error.Code.Value(exc.code.wire))
    if isinstance(exc, asyncio.TimeoutError):
        return int(pb.Error.TIMEOUT)
    return int(pb.Error.INTERNAL)


#: The request kinds :meth:`Service.answer_from_memory` may answer (the event loop offers it no other).
FROM_MEMORY = frozenset({"status", "identity", "bundle"})
#: A session manager's ``run_deferred`` as answer_inline calls it: (process' answer, seq, written).
_RunDeferred = Callable[..., tuple[tuple[pb.Response, dict[str, object]], int, int]]
#: "not given": the request's kind is read from it (None is a kind: a request with no known oneof set).
_ASK = "?"


class Service:
    """Dispatches requests; one instance per daemon."""

    def __init__(
        self,
        *,
        home: Home,
        config: AgentConfig,
        backend: Backend,
        lock: LockManager,
        audit: AuditLog,
        executor: Executor,
        sessions: SessionFactory,
        socket_path: str,
        on_stop: Callable[[], None],
        on_release: Callable[[], None],
        connections: Callable[[], int] = lambda: 0,
    ) -> None:
        self.home = home
        self.config = config
        self.backend = backend
        self.lock = lock
        self.audit = audit
        self.executor = executor
        self._factory = sessions
        self._sessions: SessionsLike | None = None
        self._sessions_mu = threading.Lock()
        # the session manager answer_inline found able to run requests inline, with its run_deferred
        self._inline: tuple[SessionsLike, _RunDeferred] | None = None
        self._open_mu = threading.Lock()
        self.socket_path = socket_path
        self._on_stop = on_stop
        self._on_release = on_release
        self._connections = connections
        self._started = time.monotonic()
        self.policy = Policy(config.policy, allow_ecdh=config.allow_ecdh)
        # identity answer cache: (config.json's stat signature, installation id, response); the identity key never
        # changes under a running agent, the recorded key UID only with config.json
        self._identity_cache: tuple[object, str, bytes] | None = None  # ... and the serialised Response
        self._bundle_answer: tuple[bytes, bytes] | None = None  # (our bundle, the serialised Response carrying it)
        self._status_answer: tuple[object, bytes] | None = None  # (the values it was built from, the Response)
        self._status_nowait: Callable[[], Any] | None = getattr(backend, "status_nowait", None)
        self._keys_in_process = bool(getattr(backend, "keys_in_process", False))
        self._backend_busy: Callable[[], bool] = getattr(backend, "busy", lambda: True)
        self._handlers: dict[str, Callable[[pb.Request, ClientContext], Outcome]] = {
            "identity": self._identity,
            "bundle": self._bundle,
            "sign": self._sign,
            "encrypt": self._encrypt,
            "decrypt": self._decrypt,
            "confirm": self._confirm,
            "add_bundle": self._add_bundle,
            "list_sessions": self._list_sessions,
            "lock": self._lock,
            "unlock": self._unlock,
            "status": self._status,
            "rotate": self._rotate,
            "ecdh": self._ecdh,
            "release": self._release,
            "stop": self._stop,
        }
        from agent.daemon.waku_service import (
            waku_handlers,  # waku_seal/open/negotiated/contact_code (issue 6)
        )

        self._handlers.update(waku_handlers(self))
        from agent.daemon.devices_service import (
            device_handlers,  # devices/set_device/public_message (issue 4)
        )

        self._handlers.update(device_handlers(self))
        from agent.daemon.app_service import app_handlers  # app_wrap/app_unwrap (issue 14)

        self._handlers.update(app_handlers(self))

    # --- session manager lifecycle --------------------------------------------------------------------------
    def sessions(self) -> SessionsLike:
        """The session manager, opened on first use (the store needs the identity key, so the backend unlocked)."""
        manager = self._sessions  # open already (every request asks; only close() sets it back to None)
        if manager is not None:
            return manager
        with self._open_mu:  # one opener at a time; readers of the reference (status) never wait for it
            with self._sessions_mu:
                manager = self._sessions
            if manager is None:
                manager = self._factory()
                with self._sessions_mu:
                    self._sessions = manager
                self._report_rekey(manager)
            return manager

    def _report_rekey(self, manager: SessionsLike) -> None:
        """A start that re-keyed every session (agent/daemon/rollback.py) goes to the audit log too."""
        guard = _rollback_of(manager)
        if guard is not None and guard.rekeyed:
            self.audit.record(None, "", type="rekey", result="rekeyed",
                              detail=f"{guard.rekeyed}; {guard.rekeyed_sessions} sessions expired; anchor "
                                     f"{guard.where} at epoch {guard.epoch}")

    def sessions_if_open(self) -> SessionsLike | None:
        return self._sessions  # one attribute read (atomic under the GIL), as the lock gave it

    def try_open_sessions(self) -> None:
        """Open the session state now if possible (after start or unlock); failures surface on the next request."""
        try:
            self.sessions()
        except Exception as exc:
            log.info("session state not opened yet: %s", type(exc).__name__)

    def maintain(self) -> None:
        """Periodic upkeep while idle (signed-prekey rotation, destroying expired ones); skipped while locked."""
        manager = self.sessions_if_open()
        upkeep = getattr(manager, "maintain", None)
        if manager is None or not callable(upkeep) or self.lock.locked:
            return
        try:
            upkeep()
        except Exception as exc:  # e.g. the token is absent right now: the next request or tick retries
            log.warning("maintenance failed: %s: %s", type(exc).__name__, exc)

    def close(self) -> None:
        with self._sessions_mu:
            manager, self._sessions = self._sessions, None
        close = getattr(manager, "close", None)
        if callable(close):
            try:
                close()
            except StoreFailed as exc:  # an earlier commit failed: stopping is what it asked for; the rollback
                log.error("agent state not written at stop: %s", exc)  # anchor still says "running": the next
                # start re-keys every session (sessions.py rule 7), whatever the disk missed

    # --- dispatch ---------------------------------------------------------------------------------------------
    def limit(self, kind: str | None) -> float:
        """Seconds a request of this kind may take before its client is answered TIMEOUT."""
        limit = self.config.request_timeout
        if kind in self.config.confirm_ops:
            limit += self.config.confirm_timeout
        return limit

    def process(self, request: pb.Request, ctx: ClientContext,
                kind: str | None = _ASK) -> tuple[pb.Response, dict[str, object]]:
        """Answer one request in the calling thread (never raises); returns the response and its audit fields.
        ``kind``: the request's oneof, if the caller has it already (the event loop does).

        Blocking (token, fsync): call it from a worker or connection thread, never from the event loop.
        """
        if kind is _ASK:
            kind = request.WhichOneof("request")
        start = time.monotonic()
        outcome: Outcome | None = None
        exc_seen: Exception | None = None
        try:
            if kind is None or kind not in self._handlers:
                raise _Unsupported("unknown request type")
            outcome = self._guarded(self._handlers[kind], kind, request, ctx)
            response = outcome.response
            result = "ok"
        except Exception as exc:
            exc_seen = exc
            response = self._error(exc, kind)
            result = pb.Error.Code.Name(response.error.code)
        fields: dict[str, object] = dict(
            type=kind or "unknown", result=result, ms=round((time.monotonic() - start) * 1000, 3), conn=ctx.conn,
            key=outcome.key if outcome else "", peer=outcome.peer if outcome else _peer_hint(request, kind),
            detail=outcome.detail if outcome else "",
        )
        if kind in _FORCEABLE and _forced(request, kind):
            fields["force"] = True  # skipping a guard is always on record, whether it worked or not
        rule = getattr(exc_seen, "rule", None) if exc_seen is not None else None
        if isinstance(rule, str):
            fields["rule"] = rule
        return response, fields

    def answer_from_memory(self, request: pb.Request, ctx: ClientContext) -> tuple[pb.Response | bytes,
                                                                                 dict[str, object]] | None:
        """The answer to a cheap request from memory, on the caller's (the event loop's) thread, or None.

        None means "send it to :meth:`process` on a worker": not a cheap kind, the confirmation hook applies to it,
        or its answer needs the token, the store or a lock someone may hold for long (an unlock's KDF, a commit)
        right now. Never blocks, never raises for the client's input (the answer is the same as process' would be).
        The answer may come serialised (a Response's bytes): identity and bundle do not change per request.
        """
        kind = request.WhichOneof("request")
        if kind not in FROM_MEMORY or kind in self.config.confirm_ops:
            return None
        try:
            self.policy.check(kind, request, ctx)
        except Exception:  # refused: the worker path gives the refusal (and its audit line) as always
            return None
        start = time.monotonic()
        response: pb.Response | bytes | None
        if kind == "status":
            response = self._status_from_memory()
        elif kind == "identity":
            response = self._identity_from_memory()
        elif kind == "bundle":
            if self.lock.lock_due() or self.lock.locked:  # locked: the last signed bundle, said so (worker path)
                return None
            manager = self.sessions_if_open()
            from_memory = getattr(manager, "durable_bundle", None)  # a test double may not have one
            cached = from_memory() if callable(from_memory) else None
            answer = self._bundle_answer
            if cached is None:
                response = None
            elif answer is not None and answer[0] is cached:
                response = answer[1]
            else:
                response = pb.Response(bundle=pb.BundleResponse(bundle=cached)).SerializeToString()
                self._bundle_answer = (cached, response)
        else:
            return None
        if response is None:
            return None
        fields: dict[str, object] = dict(
            type=kind, result="ok", ms=round((time.monotonic() - start) * 1000, 3), conn=ctx.conn,
            key="" if kind == "status" else "identity", peer="", detail="",
        )
        return response, fields

    def answer_inline(self, request: pb.Request, ctx: ClientContext,
                      kind: str | None = _ASK) -> tuple[pb.Response, dict[str, object], int, int, Any] | None:
        """Run a request on the caller's (the event loop's) thread without waiting for durability, or None.

        Only when the backend's keys are in this process (a key file: signatures and DHs are CPU work), nobody
        holds them (an unlock's KDF), the session state is open in the embedded store (a shared PostgreSQL
        store's turns are database round trips) and no hook or TTL lock applies. Returns the
        response, its audit fields, the store batch it needs on disk (0: none), the batch it wrote without
        needing it (0: none) and the session manager to wait with (``wait_durable``/``is_durable``); the caller
        must not send the response before the first batch is durable, and must start the second one's commit
        right after sending (sessions.py, rules 5 and 8, ``run_deferred``). ``kind``: as for :meth:`process`.
        """
        if kind is _ASK:
            kind = request.WhichOneof("request")
        if not self._keys_in_process or kind not in _INLINE or kind in self.config.confirm_ops:
            return None
        manager = self._sessions
        if manager is None:
            return None
        inline = self._inline
        if inline is None or inline[0] is not manager:  # asked once per manager
            run = getattr(manager, "run_deferred", None)  # a test double may not have it
            can = getattr(manager, "can_defer", None)  # not with a shared store: its turns wait on the database
            if not (callable(run) and callable(can) and can()):
                return None
            inline = self._inline = (manager, run)
        if self.lock.lock_due() or self._backend_busy():
            return None
        (response, fields), seq, written = inline[1](self.process, request, ctx, kind)
        return response, fields, seq, written, manager

    def durability_failed(self, request: pb.Request, fields: dict[str, object],
                          exc: BaseException) -> tuple[pb.Response, dict[str, object]]:
        """The answer for an inline request whose state could not be made durable (the store failed)."""
        response = self._error(exc, request.WhichOneof("request"))
        return response, dict(fields, result=pb.Error.Code.Name(response.error.code))

    def timeout_response(self, request: pb.Request, ctx: ClientContext, started: float) -> tuple[pb.Response,
                                                                                               dict[str, object]]:
        """The TIMEOUT answer (and its audit fields) for a request still running past :meth:`limit`."""
        kind = request.WhichOneof("request")
        fields: dict[str, object] = dict(
            type=kind or "unknown", result="TIMEOUT", ms=round((time.monotonic() - started) * 1000, 3),
            conn=ctx.conn, peer=_peer_hint(request, kind),
        )
        return self._error(TimeoutError(), kind), fields

    def record(self, ctx: ClientContext, fields: dict[str, object]) -> None:
        """Write one audit line; a full disk must not take the agent down (the failure itself is logged)."""
        try:
            self.audit.write_line(self.audit.line(ctx.cred, ctx.exe, **fields))
        except OSError as exc:
            log.error("cannot write the audit log: %s", exc.strerror)

    def record_all(self, entries: Sequence[tuple[ClientContext, dict[str, object]]]) -> None:
        """Write the audit lines of several requests with one write (the server's batch of answers)."""
        try:
            self.audit.write([self.audit.line(ctx.cred, ctx.exe, **fields) for ctx, fields in entries])
        except OSError as exc:
            log.error("cannot write the audit log: %s", exc.strerror)

    def _guarded(
        self, handler: Callable[[pb.Request, ClientContext], Outcome], kind: str, request: pb.Request,
        ctx: ClientContext,
    ) -> Outcome:
        self.policy.check(kind, request, ctx)  # before anything else: a refused client learns nothing more
        if kind not in _ALLOWED_LOCKED:
            self.lock.check()
        if kind in self.config.confirm_ops:
            self._confirm_with_user(kind, request, ctx)
        return handler(request, ctx)

    def _confirm_with_user(self, kind: str, request: pb.Request, ctx: ClientContext) -> None:
        """Run the confirmation hook (Secretive/ssh-add -c style); only public facts go into its environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_")}
        env.update(
            KEYAGENT_CONFIRM_OP=kind, KEYAGENT_CONFIRM_PEER=_peer_hint(request, kind),
            KEYAGENT_CONFIRM_UID=str(ctx.cred.uid), KEYAGENT_CONFIRM_PID=str(ctx.cred.pid),
            KEYAGENT_CONFIRM_EXE=ctx.exe, KEYAGENT_HOME=str(self.home.path),
        )
        try:
            rc = subprocess.run(list(self.config.confirm_command), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=self.config.confirm_timeout).returncode
        except subprocess.TimeoutExpired as exc:
            raise Denied(f"{kind} was not confirmed within {self.config.confirm_timeout:g} s") from exc
        except OSError as exc:
            raise Denied(f"the confirmation command could not run: {exc.strerror}") from exc
        if rc != 0:
            raise Denied(f"{kind} was refused by the confirmation hook")

    def _error(self, exc: BaseException, kind: str | None) -> pb.Response:
        code = error_code(exc)
        if isinstance(exc, asyncio.TimeoutError):
            message = f"request took longer than {self.limit(kind):g} s"
        elif code == pb.Error.INTERNAL:
            log.error("request %s failed", kind, exc_info=exc)
            message = f"internal error ({type(exc).__name__}); see the agent's log"
        else:
            message = str(exc) or type(exc).__name__
        err = pb.Error(code=code, message=message)  # type: ignore[arg-type]
        reason = getattr(exc, "reason", None)
        if isinstance(reason, str):
            err.reason = reason
        reply = getattr(exc, "reply", None)
        if isinstance(reply, bytes):
            err.reply = reply
        return pb.Response(error=err)

    # --- handlers (run in a worker thread) -------------------------------------------------------------------
    def _config_signature(self) -> object:
        """What changes when config.json (the recorded key UID) does: its inode, size and times."""
        try:
            st = os.stat(config_path(str(self.home.path)))
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _identity_from_memory(self) -> bytes | None:
        cached = self._identity_cache
        if cached is None:
            return None
        manager = self.sessions_if_open()
        iid = manager.installation_id if manager is not None else ""
        if cached[0] != self._config_signature() or cached[1] != iid:
            return None  # the worker rebuilds it (and the cache)
        return cached[2]

    def _identity(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        signature = self._config_signature()  # before reading: a change while we read invalidates what we cache
        pub = self.backend.identity().public_key()
        out = pb.IdentityResponse(
            identity_public_key=pub,
            public_key="0x" + secp256k1.decompress(pub).hex(),
            address="0x" + secp256k1.address(pub).hex(),
        )
        out.compressed_key = zq3_encode(pub)
        manager = self.sessions_if_open()
        if manager is not None:
            out.installation_id = manager.installation_id
        from agent.identity.record import read_status_record
        from agent.identity.whoami import contact_code_fields

        record = read_status_record(str(self.home.path), pub)  # key UID recorded at phrase import, if any
        cc = contact_code_fields(pub)
        out.key_uid, out.key_uid_origin = record.key_uid, record.key_uid_origin
        out.share_link = share_link(pub)
        out.contact_code_topic = cc["contact_code_topic"]
        out.contact_code_key = bytes.fromhex(cc["contact_code_key"][2:])
        response = pb.Response(identity=out)
        self._identity_cache = (signature, out.installation_id, response.SerializeToString())
        return Outcome(response, key="identity")

    def _bundle(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        if self.lock.locked:
            # locked means locked: the last bundle signed before the lock, never a new signature (no upkeep either)
            manager = self.sessions_if_open()
            last = manager.last_bundle() if manager is not None else None
            if last is None:
                raise AgentLocked("the agent is locked and has signed no bundle yet; run keyagent unlock")
            return Outcome(pb.Response(bundle=pb.BundleResponse(bundle=last)), detail="locked,last-signed")
        return Outcome(pb.Response(bundle=pb.BundleResponse(bundle=self.sessions().our_bundle())), key="identity")

    def _sign(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        digest = req.sign.digest
        if len(digest) != 32:
            raise BadRequest("digest must be exactly 32 bytes")
        sig = self.backend.identity().sign(digest)
        return Outcome(pb.Response(sign=pb.SignResponse(signature=sig)), key="identity")

    def _encrypt(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        peer = peer_public_key(req.encrypt.peer_identity, "peer_identity")
        bundle = req.encrypt.peer_bundle or None
        res = self.sessions().encrypt(peer, req.encrypt.payload, bundle)
        response = pb.Response()  # filled in place: pb.Response(encrypt=...) would copy the message once more
        out = response.encrypt
        out.SetInParent()
        out.message, out.forward_secrecy = res.message, res.forward_secrecy
        out.installations.extend(res.installations)
        return Outcome(response, key="identity", peer=peer.hex(),
                       detail="" if res.forward_secrecy else "no-forward-secrecy")

    def _decrypt(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        sender = peer_public_key(req.decrypt.sender_identity, "sender_identity")
        if not req.decrypt.message:
            raise BadRequest("message is empty")
        res = self.sessions().decrypt(sender, req.decrypt.message)
        response = pb.Response()  # filled in place: pb.Response(decrypt=...) would copy the plaintext once more
        out = response.decrypt
        out.SetInParent()
        out.payload, out.installation_id, out.confirm_ref = res.payload, res.installation_id, res.confirm_ref
        if res.reply:
            out.reply = res.reply
        out.public = bool(getattr(res, "public", False))  # unencrypted public_message: say so
        out.forward_secrecy = bool(getattr(res, "forward_secrecy", True))
        return Outcome(response, key="identity", peer=sender.hex(),
                       detail=f"installation={res.installation_id}" + (",public" if out.public else ""))

    def _confirm(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        refs = list(req.confirm.refs)
        if len(refs) > 4096:
            raise BadRequest("at most 4096 refs per confirm")
        self.sessions().confirm(refs)
        return Outcome(pb.Response(confirm=pb.ConfirmResponse()), detail=f"refs={len(refs)}")

    def _add_bundle(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        if not req.add_bundle.bundle:
            raise BadRequest("bundle is empty")
        identity = self.sessions().add_peer_bundle(req.add_bundle.bundle)
        return Outcome(pb.Response(add_bundle=pb.AddBundleResponse(identity=identity)), peer=identity.hex())

    def _list_sessions(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        out = pb.ListSessionsResponse()
        for info in self.sessions().list_sessions():
            out.sessions.add(
                peer_identity=info.identity, installation_id=info.installation_id, initiator=info.initiator,
                confirmed=info.confirmed, expired=info.expired, created_ns=max(0, info.created_ns),
                last_used_ns=max(0, info.last_used_ns), bundle_id=info.bundle_id,
            )
        return Outcome(pb.Response(list_sessions=out))

    def _lock(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        self.lock.lock(req.lock.password)
        return Outcome(pb.Response(lock=pb.LockResponse()), detail="password" if req.lock.password else "")

    def _unlock(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        if not req.unlock.secret:
            raise BadRequest("secret is empty")
        self.lock.unlock(req.unlock.secret, force=req.unlock.force)
        self.try_open_sessions()
        return Outcome(pb.Response(unlock=pb.UnlockResponse()))

    def _status_from_memory(self) -> bytes | None:
        """Status from memory: only if the backend can say its state without waiting (a key file's backend; a
        token's status is a token round trip) and no unlock TTL is about to lock the backend. Serialised, and
        built again only when one of its values changed (the seconds counters change once a second)."""
        if self._status_nowait is None or self.lock.lock_due():
            return None
        st = self._status_nowait()
        if st is None:
            return None
        manager = self.sessions_if_open()
        guard = _rollback_of(manager)
        key = (st, id(manager), self.lock.locked, self.lock.failures, int(time.monotonic() - self._started),
               self._connections(), int(self.lock.ttl_remaining()),
               (guard.epoch, guard.rekeyed, guard.superseded) if guard is not None else None)
        cached = self._status_answer
        if cached is not None and cached[0] == key:
            return cached[1]
        answer: bytes = self._status_response(st).SerializeToString()
        self._status_answer = (key, answer)
        return answer

    def _status(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        return Outcome(self._status_response(self.backend.status()))

    def _status_response(self, st: Any) -> pb.Response:
        manager = self.sessions_if_open()
        out = pb.StatusResponse(
            locked=self.lock.locked,
            backend=st.kind,
            token_present=st.present,
            backend_unlocked=st.unlocked,
            identity_public_key=st.identity_public_key,
            installation_id=manager.installation_id if manager else "",
            pid=os.getpid(),
            version=__version__,
            home=str(self.home.path),
            socket=self.socket_path,
            unlock_failures=self.lock.failures,
            uptime_seconds=int(time.monotonic() - self._started),
            sessions_open=manager is not None,
            connections=self._connections(),
            unlock_ttl_remaining=int(self.lock.ttl_remaining()),
            ecdh_allowed=self.config.allow_ecdh,
            detail=st.detail,
        )
        guard = _rollback_of(manager)
        if guard is not None:
            out.anchor, out.anchor_epoch = guard.where, guard.epoch
            out.rekeyed, out.superseded = guard.rekeyed, guard.superseded
        return pb.Response(status=out)

    def _rotate(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        manager = self.sessions()
        interval = 0 if req.rotate.force else int(self.config.rotate_interval * 1e9)
        version = manager.rotate_signed_prekey(min_interval_ns=interval)
        return Outcome(pb.Response(rotate=pb.RotateResponse(bundle=manager.our_bundle())), key=f"spk:{version}")

    def _ecdh(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        peer = peer_public_key(req.ecdh.peer_public, "peer_public")
        shared = self.backend.identity().dh(peer)
        return Outcome(pb.Response(ecdh=pb.EcdhResponse(shared_x=shared)), key="identity", peer=peer.hex())

    def _release(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        self._on_release()
        return Outcome(pb.Response(release=pb.ReleaseResponse()))

    def _stop(self, req: pb.Request, ctx: ClientContext) -> Outcome:
        if not ctx.owner:
            raise Denied("only the agent's own user (or root) may stop it")
        self._on_stop()
        return Outcome(pb.Response(stop=pb.StopResponse()))


def _rollback_of(manager: object) -> RollbackGuard | None:
    """The session manager's rollback guard (a test double may have none)."""
    guard = getattr(manager, "rollback", None)
    return guard if isinstance(guard, RollbackGuard) else None


class _Unsupported(CodedError):
    code = ErrorCode.UNSUPPORTED


#: The request kinds with a ``force`` field (asked before :func:`_forced`, on every request).
_FORCEABLE = frozenset({"unlock", "rotate"})


def _forced(request: pb.Request, kind: str | None) -> bool:
    """The request asked to skip a guard (unlock's final-try guard, rotate's rate limit)."""
    return (kind == "unlock" and request.unlock.force) or (kind == "rotate" and request.rotate.force)


def _peer_hint(request: pb.Request, kind: str | None) -> str:
    """The peer a failed request named (public keys only), for the audit line."""
    try:
        if kind == "encrypt":
            return bytes(request.encrypt.peer_identity)[:65].hex()
        if kind == "decrypt":
            return bytes(request.decrypt.sender_identity)[:65].hex()
        if kind == "ecdh":
            return bytes(request.ecdh.peer_public)[:65].hex()
    except Exception:  # pragma: no cover
        return ""
    return ""
