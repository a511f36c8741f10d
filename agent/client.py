"""A typed Python client for the agent's socket API (proto/keyagent/agent.proto).

    with AgentClient() as agent:          # $KEYAGENT_SOCK, else the default home's socket
        sig = agent.sign(digest)
        msg = agent.encrypt(peer_identity, b"hi").message

Every failure the agent reports raises :class:`AgentError` with the stable ``code`` name (``"LOCKED"``,
``"NO_SESSION"``, ...); transport failures raise :class:`AgentUnavailable`; a socket that another user controls
raises :class:`UntrustedSocket` before anything is sent (agent/socket_trust.py). One client object holds one
connection and is safe to share between threads (requests are serialised on it); open one per thread for
parallelism.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from agent.framing import MAX_FRAME, FrameDecoder, FrameError, encode_frame
from agent.paths import default_home, socket_path_for
from agent.pb.keyagent import agent_pb2 as pb
from agent.socket_trust import UntrustedSocket, check_peer, check_socket_dir, trusted_agent_uids

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentUnavailable",
    "UntrustedSocket",
    "Encrypted",
    "Decrypted",
    "Identity",
    "Device",
    "resolve_socket",
]

#: A connection answered less than this many seconds ago is not checked for an idle hang-up before the next
#: request (the agent's idle_timeout is minutes by default; a test sets 1 s).
_FRESH = 0.25


class AgentUnavailable(ConnectionError):
    """No agent answers on the socket (not started, wrong KEYAGENT_SOCK, or it closed the connection)."""

    code = "UNAVAILABLE"


class AgentError(Exception):
    """The agent answered with an error: ``code`` is the stable Error.Code name, ``message`` one line."""

    def __init__(self, code: str, message: str, *, reason: str = "", reply: bytes = b"") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.reply = reply


@dataclass(frozen=True)
class Encrypted:
    message: bytes
    forward_secrecy: bool
    installations: list[str]


@dataclass(frozen=True)
class Decrypted:
    payload: bytes
    installation_id: str
    confirm_ref: bytes
    reply: bytes | None
    public: bool = False  # an UNENCRYPTED public_message: anyone could have written or read it
    forward_secrecy: bool = True  # False for public messages and the DH fallback


@dataclass(frozen=True)
class Device:
    """One of our installations (agent/daemon/devices_service.py): ``active`` = in our bundle and sent to."""

    installation_id: str
    is_self: bool
    enabled: bool
    last_activity_ns: int
    spk_version: int
    active: bool


@dataclass(frozen=True)
class Identity:
    identity_public_key: bytes
    public_key: str
    compressed_key: str
    installation_id: str
    address: str
    key_uid: str = ""
    key_uid_origin: str = ""  # "recovery_phrase" (recorded at import) or "chat_key"
    share_link: str = ""
    contact_code_topic: str = ""
    contact_code_key: bytes = b""


def _identity_bytes(value: bytes | str) -> bytes:
    """Identity text travels as its UTF-8 bytes; the agent parses it (BAD_IDENTITY when it is no Status key)."""
    return value.encode("utf-8") if isinstance(value, str) else value


def resolve_socket(socket_path: str | None = None, home: str | None = None) -> str:
    """Explicit socket, else the socket of an explicit home, else ``$KEYAGENT_SOCK``, else the default home's."""
    if socket_path:
        return socket_path
    if home:
        return str(socket_path_for(home))
    env = os.environ.get("KEYAGENT_SOCK")
    if env:
        return env
    return str(socket_path_for(default_home()))


class AgentClient:
    """One connection to one agent."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *, timeout: float | None = 60.0,
                 max_frame: int = 16 * 1024 * 1024, max_request: int = MAX_FRAME,
                 agent_uids: frozenset[int] | None = None) -> None:
        """``agent_uids``: the uids the listener may run as (default: ours, root and ``$KEYAGENT_AGENT_UID``)."""
        self._trusted = agent_uids
        self.socket_path = os.fspath(socket_path) if socket_path is not None else resolve_socket()
        self._timeout = timeout
        self._max_frame = max_frame
        # The agent closes the connection on a frame above its cap (256 KiB unless agent.json raises it); saying
        # so here is clearer than the bare close the agent must answer with.
        self._max_request = max_request
        self._sock: socket.socket | None = None
        self._frames = FrameDecoder(max_frame)
        self._mu = threading.Lock()
        self._answered_at = -1e9  # time.monotonic() of the last answer read on this connection

    # --- connection -------------------------------------------------------------------------------------------
    def connect(self) -> "AgentClient":
        if self._sock is None:
            trusted = self._trusted if self._trusted is not None else trusted_agent_uids()
            check_socket_dir(self.socket_path, trusted)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self._timeout)
            try:
                s.connect(self.socket_path)
            except OSError as exc:
                s.close()
                raise AgentUnavailable(f"no agent at {self.socket_path}: {exc.strerror or exc}") from exc
            try:
                check_peer(s, self.socket_path, trusted)
            except BaseException:
                s.close()
                raise
            self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._frames = FrameDecoder(self._max_frame)

    def _drop_if_hung_up(self) -> None:
        """The agent hangs up on connections idle past its ``idle_timeout``: notice that before sending, and
        connect again, rather than fail a request that was never sent (nothing is retried once sent)."""
        s = self._sock
        if s is None or time.monotonic() - self._answered_at < _FRESH:
            return  # answered just now: no idle hang-up can have come since (one select() per request saved)
        try:
            if not select.select([s], [], [], 0)[0]:
                return
            gone = not s.recv(1, socket.MSG_PEEK)
        except OSError:
            gone = True
        if gone:
            self.close()

    def __enter__(self) -> "AgentClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_response(self, sock: socket.socket) -> bytes:
        """One response frame; usually a single recv (header and body arrive together)."""
        while True:
            try:
                frame = self._frames.next()
            except FrameError as exc:
                raise AgentUnavailable(f"the agent broke the framing: {exc}") from exc
            if frame is not None:
                return frame
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise AgentUnavailable("the agent closed the connection")
            self._frames.feed(chunk)

    def call(self, request: pb.Request) -> pb.Response:
        """Send one request, return the response (errors are returned, not raised)."""
        payload = request.SerializeToString()
        if len(payload) > self._max_request:
            raise AgentError("BAD_REQUEST", f"the request is {len(payload)} bytes, above the agent's frame cap of "
                                            f"{self._max_request} bytes (max_frame in the agent's agent.json)")
        with self._mu:
            self._drop_if_hung_up()
            sock = self.connect()._sock
            assert sock is not None
            try:
                sock.sendall(encode_frame(payload))
                data = self._read_response(sock)
                self._answered_at = time.monotonic()
            except OSError as exc:
                self.close()
                if isinstance(exc, AgentUnavailable):
                    raise
                raise AgentUnavailable(f"lost the agent at {self.socket_path}: {exc}") from exc
        response: pb.Response = pb.Response.FromString(data)
        return response

    def _do(self, request: pb.Request, expect: str) -> pb.Response:
        response = self.call(request)
        kind = response.WhichOneof("response")
        if kind == "error":
            err = response.error
            raise AgentError(pb.Error.Code.Name(err.code), err.message, reason=err.reason, reply=err.reply)
        if kind != expect:
            raise AgentError("INTERNAL", f"expected a {expect} response, got {kind}")
        return response

    # --- requests -----------------------------------------------------------------------------------------------
    def identity(self) -> Identity:
        r = self._do(pb.Request(identity=pb.IdentityRequest()), "identity").identity
        return Identity(r.identity_public_key, r.public_key, r.compressed_key, r.installation_id, r.address,
                        r.key_uid, r.key_uid_origin, r.share_link, r.contact_code_topic, bytes(r.contact_code_key))

    def bundle(self) -> bytes:
        return bytes(self._do(pb.Request(bundle=pb.BundleRequest()), "bundle").bundle.bundle)

    def sign(self, digest: bytes) -> bytes:
        return bytes(self._do(pb.Request(sign=pb.SignRequest(digest=digest)), "sign").sign.signature)

    def encrypt(self, peer_identity: bytes | str, payload: bytes, peer_bundle: bytes | None = None) -> Encrypted:
        """``peer_identity``: 33/65 key bytes, or text (0x04…, compressed hex, zQ3…, status.app link)."""
        req = pb.EncryptRequest(peer_identity=_identity_bytes(peer_identity), payload=payload,
                                peer_bundle=peer_bundle or b"")
        r = self._do(pb.Request(encrypt=req), "encrypt").encrypt
        return Encrypted(bytes(r.message), r.forward_secrecy, list(r.installations))

    def decrypt(self, sender_identity: bytes | str, message: bytes) -> Decrypted:
        req = pb.DecryptRequest(sender_identity=_identity_bytes(sender_identity), message=message)
        r = self._do(pb.Request(decrypt=req), "decrypt").decrypt
        return Decrypted(bytes(r.payload), r.installation_id, bytes(r.confirm_ref), bytes(r.reply) or None,
                         r.public, r.forward_secrecy)

    def confirm(self, refs: Sequence[bytes]) -> None:
        self._do(pb.Request(confirm=pb.ConfirmRequest(refs=list(refs))), "confirm")

    def add_bundle(self, bundle: bytes) -> bytes:
        r = self._do(pb.Request(add_bundle=pb.AddBundleRequest(bundle=bundle)), "add_bundle")
        return bytes(r.add_bundle.identity)

    def list_sessions(self) -> list[pb.SessionInfo]:
        return list(self._do(pb.Request(list_sessions=pb.ListSessionsRequest()), "list_sessions")
                    .list_sessions.sessions)

    def lock(self, password: str = "") -> None:
        self._do(pb.Request(lock=pb.LockRequest(password=password)), "lock")

    def unlock(self, secret: str, *, force: bool = False) -> None:
        self._do(pb.Request(unlock=pb.UnlockRequest(secret=secret, force=force)), "unlock")

    def status(self) -> pb.StatusResponse:
        return self._do(pb.Request(status=pb.StatusRequest()), "status").status

    def rotate(self, *, force: bool = False) -> bytes:
        """Rotate the signed prekey (owner only); ``force`` skips the rate limit (audited)."""
        return bytes(self._do(pb.Request(rotate=pb.RotateRequest(force=force)), "rotate").rotate.bundle)

    def ecdh(self, peer_public: bytes) -> bytes:
        return bytes(self._do(pb.Request(ecdh=pb.EcdhRequest(peer_public=peer_public)), "ecdh").ecdh.shared_x)

    def release(self) -> None:
        self._do(pb.Request(release=pb.ReleaseRequest()), "release")

    def stop(self) -> None:
        self._do(pb.Request(stop=pb.StopRequest()), "stop")

    # --- devices and public messages (agent/daemon/devices_service.py) -----------------------------------------
    def devices(self) -> list[Device]:
        """Our installations: this one first, then our other devices newest first (approved or not)."""
        r = self._do(pb.Request(devices=pb.DevicesRequest()), "devices").devices
        return [_device(d) for d in r.devices]

    def set_device(self, installation_id: str, enabled: bool) -> tuple[bytes, list[Device]]:
        """Approve (``enabled``) or disable one of our own devices; returns our new bundle and the device list."""
        req = pb.SetDeviceRequest(installation_id=installation_id, enabled=enabled)
        r = self._do(pb.Request(set_device=req), "set_device").set_device
        return bytes(r.bundle), [_device(d) for d in r.devices]

    def approve_device(self, installation_id: str) -> bytes:
        """Pair one of our own devices; returns our new bundle (it also rides on our next messages)."""
        return self.set_device(installation_id, True)[0]

    def disable_device(self, installation_id: str) -> bytes:
        """Unpair one of our own devices; returns our new bundle."""
        return self.set_device(installation_id, False)[0]

    def public_message(self, payload: bytes) -> bytes:
        """A ProtocolMessage with ``payload`` UNENCRYPTED in ``public_message`` (no session, no secrecy)."""
        req = pb.PublicMessageRequest(payload=payload)
        return bytes(self._do(pb.Request(public_message=req), "public_message").public_message.message)

    # --- Status application messages (agent/daemon/app_service.py) ----------------------------------------------
    def app_wrap(self, payload: bytes, type_: int) -> "AppWrapped":
        """Sign ``payload`` as a status-go ApplicationMetadataMessage of ``type_`` (the agent hashes it itself)."""
        r = self._do(pb.Request(app_wrap=pb.AppWrapRequest(payload=payload, type=type_)), "app_wrap").app_wrap
        return AppWrapped(bytes(r.message), bytes(r.message_id))

    def app_unwrap(self, message: bytes) -> "AppUnwrapped":
        """Verify a marshalled ApplicationMetadataMessage: its signer (65-byte key), type, payload and id."""
        r = self._do(pb.Request(app_unwrap=pb.AppUnwrapRequest(message=message)), "app_unwrap").app_unwrap
        return AppUnwrapped(bytes(r.signer), r.type, r.type_name, bytes(r.payload), bytes(r.message_id))

    # --- Waku payload layer (agent/daemon/waku_service.py) ------------------------------------------------------
    def waku_seal(self, payload: bytes, *, to: bytes | None = None, sym_key: bytes | None = None,
                  sign: bool = False) -> bytes:
        """Seal a Waku payload to a chat key (ECIES) or with a 32-byte key (AES-GCM); the wire bytes."""
        if (to is None) == (sym_key is None):
            raise ValueError("give exactly one of to= or sym_key=")
        req = (pb.WakuSealRequest(payload=payload, to=to, sign=sign) if to is not None
               else pb.WakuSealRequest(payload=payload, sym_key=sym_key, sign=sign))
        return bytes(self._do(pb.Request(waku_seal=req), "waku_seal").waku_seal.wire)

    def waku_open(self, wire: bytes, *, sym_key: bytes | None = None) -> "WakuOpened":
        """Open a Waku wire with our identity key (no sym_key) or a 32-byte key; never returns a secret."""
        req = pb.WakuOpenRequest(wire=wire) if sym_key is None else pb.WakuOpenRequest(wire=wire, sym_key=sym_key)
        r = self._do(pb.Request(waku_open=req), "waku_open").waku_open
        return WakuOpened(bytes(r.payload), bytes(r.signer_public_key) or None,
                          "asymmetric" if r.mode == pb.WAKU_ASYMMETRIC else "symmetric")

    def waku_negotiated(self, peer_identity: bytes | str) -> "WakuTopic":
        """The negotiated topic with a peer: derived key and content topic (the DH secret stays in the agent)."""
        req = pb.WakuNegotiatedRequest(peer_identity=_identity_bytes(peer_identity))
        r = self._do(pb.Request(waku_negotiated=req), "waku_negotiated").waku_negotiated
        return WakuTopic(bytes(r.sym_key), r.content_topic, bytes(r.topic))

    def waku_contact_code(self) -> "WakuContactCode":
        """Our contact-code channel (key and topic) and the partitioned topic 1:1 messages to us arrive on."""
        r = self._do(pb.Request(waku_contact_code=pb.WakuContactCodeRequest()), "waku_contact_code").waku_contact_code
        return WakuContactCode(bytes(r.sym_key), r.content_topic, bytes(r.topic), r.partitioned_topic)


@dataclass(frozen=True)
class AppWrapped:
    message: bytes  # marshalled ApplicationMetadataMessage
    message_id: bytes  # Keccak-256(our 65-byte key || message)


@dataclass(frozen=True)
class AppUnwrapped:
    signer: bytes  # 65-byte uncompressed key (0x04...)
    type: int
    type_name: str  # "" when the agent does not know the number
    payload: bytes
    message_id: bytes


@dataclass(frozen=True)
class WakuOpened:
    payload: bytes
    signer_public_key: bytes | None  # 65-byte uncompressed, None if the envelope was not signed
    mode: str  # "asymmetric" or "symmetric"


@dataclass(frozen=True)
class WakuTopic:
    sym_key: bytes
    content_topic: str
    topic: bytes


@dataclass(frozen=True)
class WakuContactCode:
    sym_key: bytes
    content_topic: str
    topic: bytes
    partitioned_topic: str


def _device(d: pb.DeviceInfo) -> Device:
    return Device(d.installation_id, d.is_self, d.enabled, d.last_activity_ns, d.spk_version, d.active)
