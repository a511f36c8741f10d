from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WakuMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAKU_MODE_UNSPECIFIED: _ClassVar[WakuMode]
    WAKU_ASYMMETRIC: _ClassVar[WakuMode]
    WAKU_SYMMETRIC: _ClassVar[WakuMode]
WAKU_MODE_UNSPECIFIED: WakuMode
WAKU_ASYMMETRIC: WakuMode
WAKU_SYMMETRIC: WakuMode

class Request(_message.Message):
    __slots__ = ("identity", "bundle", "sign", "encrypt", "decrypt", "confirm", "add_bundle", "list_sessions", "lock", "unlock", "status", "rotate", "ecdh", "release", "stop", "waku_seal", "waku_open", "waku_negotiated", "waku_contact_code", "devices", "set_device", "public_message", "app_wrap", "app_unwrap")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    DECRYPT_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    ADD_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    LIST_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    ECDH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    WAKU_SEAL_FIELD_NUMBER: _ClassVar[int]
    WAKU_OPEN_FIELD_NUMBER: _ClassVar[int]
    WAKU_NEGOTIATED_FIELD_NUMBER: _ClassVar[int]
    WAKU_CONTACT_CODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SET_DEVICE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APP_WRAP_FIELD_NUMBER: _ClassVar[int]
    APP_UNWRAP_FIELD_NUMBER: _ClassVar[int]
    identity: IdentityRequest
    bundle: BundleRequest
    sign: SignRequest
    encrypt: EncryptRequest
    decrypt: DecryptRequest
    confirm: ConfirmRequest
    add_bundle: AddBundleRequest
    list_sessions: ListSessionsRequest
    lock: LockRequest
    unlock: UnlockRequest
    status: StatusRequest
    rotate: RotateRequest
    ecdh: EcdhRequest
    release: ReleaseRequest
    stop: StopRequest
    waku_seal: WakuSealRequest
    waku_open: WakuOpenRequest
    waku_negotiated: WakuNegotiatedRequest
    waku_contact_code: WakuContactCodeRequest
    devices: DevicesRequest
    set_device: SetDeviceRequest
    public_message: PublicMessageRequest
    app_wrap: AppWrapRequest
    app_unwrap: AppUnwrapRequest
    def __init__(self, identity: _Optional[_Union[IdentityRequest, _Mapping]] = ..., bundle: _Optional[_Union[BundleRequest, _Mapping]] = ..., sign: _Optional[_Union[SignRequest, _Mapping]] = ..., encrypt: _Optional[_Union[EncryptRequest, _Mapping]] = ..., decrypt: _Optional[_Union[DecryptRequest, _Mapping]] = ..., confirm: _Optional[_Union[ConfirmRequest, _Mapping]] = ..., add_bundle: _Optional[_Union[AddBundleRequest, _Mapping]] = ..., list_sessions: _Optional[_Union[ListSessionsRequest, _Mapping]] = ..., lock: _Optional[_Union[LockRequest, _Mapping]] = ..., unlock: _Optional[_Union[UnlockRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., rotate: _Optional[_Union[RotateRequest, _Mapping]] = ..., ecdh: _Optional[_Union[EcdhRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., stop: _Optional[_Union[StopRequest, _Mapping]] = ..., waku_seal: _Optional[_Union[WakuSealRequest, _Mapping]] = ..., waku_open: _Optional[_Union[WakuOpenRequest, _Mapping]] = ..., waku_negotiated: _Optional[_Union[WakuNegotiatedRequest, _Mapping]] = ..., waku_contact_code: _Optional[_Union[WakuContactCodeRequest, _Mapping]] = ..., devices: _Optional[_Union[DevicesRequest, _Mapping]] = ..., set_device: _Optional[_Union[SetDeviceRequest, _Mapping]] = ..., public_message: _Optional[_Union[PublicMessageRequest, _Mapping]] = ..., app_wrap: _Optional[_Union[AppWrapRequest, _Mapping]] = ..., app_unwrap: _Optional[_Union[AppUnwrapRequest, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("identity", "bundle", "sign", "encrypt", "decrypt", "confirm", "add_bundle", "list_sessions", "lock", "unlock", "status", "rotate", "ecdh", "release", "stop", "waku_seal", "waku_open", "waku_negotiated", "waku_contact_code", "devices", "set_device", "public_message", "app_wrap", "app_unwrap", "error")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    DECRYPT_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    ADD_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    LIST_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    ECDH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    WAKU_SEAL_FIELD_NUMBER: _ClassVar[int]
    WAKU_OPEN_FIELD_NUMBER: _ClassVar[int]
    WAKU_NEGOTIATED_FIELD_NUMBER: _ClassVar[int]
    WAKU_CONTACT_CODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SET_DEVICE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APP_WRAP_FIELD_NUMBER: _ClassVar[int]
    APP_UNWRAP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    identity: IdentityResponse
    bundle: BundleResponse
    sign: SignResponse
    encrypt: EncryptResponse
    decrypt: DecryptResponse
    confirm: ConfirmResponse
    add_bundle: AddBundleResponse
    list_sessions: ListSessionsResponse
    lock: LockResponse
    unlock: UnlockResponse
    status: StatusResponse
    rotate: RotateResponse
    ecdh: EcdhResponse
    release: ReleaseResponse
    stop: StopResponse
    waku_seal: WakuSealResponse
    waku_open: WakuOpenResponse
    waku_negotiated: WakuNegotiatedResponse
    waku_contact_code: WakuContactCodeResponse
    devices: DevicesResponse
    set_device: SetDeviceResponse
    public_message: PublicMessageResponse
    app_wrap: AppWrapResponse
    app_unwrap: AppUnwrapResponse
    error: Error
    def __init__(self, identity: _Optional[_Union[IdentityResponse, _Mapping]] = ..., bundle: _Optional[_Union[BundleResponse, _Mapping]] = ..., sign: _Optional[_Union[SignResponse, _Mapping]] = ..., encrypt: _Optional[_Union[EncryptResponse, _Mapping]] = ..., decrypt: _Optional[_Union[DecryptResponse, _Mapping]] = ..., confirm: _Optional[_Union[ConfirmResponse, _Mapping]] = ..., add_bundle: _Optional[_Union[AddBundleResponse, _Mapping]] = ..., list_sessions: _Optional[_Union[ListSessionsResponse, _Mapping]] = ..., lock: _Optional[_Union[LockResponse, _Mapping]] = ..., unlock: _Optional[_Union[UnlockResponse, _Mapping]] = ..., status: _Optional[_Union[StatusResponse, _Mapping]] = ..., rotate: _Optional[_Union[RotateResponse, _Mapping]] = ..., ecdh: _Optional[_Union[EcdhResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., stop: _Optional[_Union[StopResponse, _Mapping]] = ..., waku_seal: _Optional[_Union[WakuSealResponse, _Mapping]] = ..., waku_open: _Optional[_Union[WakuOpenResponse, _Mapping]] = ..., waku_negotiated: _Optional[_Union[WakuNegotiatedResponse, _Mapping]] = ..., waku_contact_code: _Optional[_Union[WakuContactCodeResponse, _Mapping]] = ..., devices: _Optional[_Union[DevicesResponse, _Mapping]] = ..., set_device: _Optional[_Union[SetDeviceResponse, _Mapping]] = ..., public_message: _Optional[_Union[PublicMessageResponse, _Mapping]] = ..., app_wrap: _Optional[_Union[AppWrapResponse, _Mapping]] = ..., app_unwrap: _Optional[_Union[AppUnwrapResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "reason", "reply")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INTERNAL: _ClassVar[Error.Code]
        BAD_REQUEST: _ClassVar[Error.Code]
        UNSUPPORTED: _ClassVar[Error.Code]
        DENIED: _ClassVar[Error.Code]
        LOCKED: _ClassVar[Error.Code]
        PIN_REQUIRED: _ClassVar[Error.Code]
        PASSPHRASE_REQUIRED: _ClassVar[Error.Code]
        TOKEN_ABSENT: _ClassVar[Error.Code]
        TOKEN_ERROR: _ClassVar[Error.Code]
        PIN_INCORRECT: _ClassVar[Error.Code]
        PIN_LOCKED: _ClassVar[Error.Code]
        PIN_FINAL_TRY: _ClassVar[Error.Code]
        PASSPHRASE_INCORRECT: _ClassVar[Error.Code]
        NO_SESSION: _ClassVar[Error.Code]
        DECRYPT_FAILED: _ClassVar[Error.Code]
        BAD_SIGNATURE: _ClassVar[Error.Code]
        BAD_IDENTITY: _ClassVar[Error.Code]
        KEY_NOT_FOUND: _ClassVar[Error.Code]
        IDENTITY_CHANGED: _ClassVar[Error.Code]
        STATE_ERROR: _ClassVar[Error.Code]
        TIMEOUT: _ClassVar[Error.Code]
        BUSY: _ClassVar[Error.Code]
        NOT_READY: _ClassVar[Error.Code]
        BAD_CONFIG: _ClassVar[Error.Code]
        KEYRING_UNAVAILABLE: _ClassVar[Error.Code]
        KEY_FILE_CORRUPT: _ClassVar[Error.Code]
        REFUSED_PAYLOAD: _ClassVar[Error.Code]
        RATE_LIMITED: _ClassVar[Error.Code]
        BAD_BUNDLE: _ClassVar[Error.Code]
        SUPERSEDED: _ClassVar[Error.Code]
    INTERNAL: Error.Code
    BAD_REQUEST: Error.Code
    UNSUPPORTED: Error.Code
    DENIED: Error.Code
    LOCKED: Error.Code
    PIN_REQUIRED: Error.Code
    PASSPHRASE_REQUIRED: Error.Code
    TOKEN_ABSENT: Error.Code
    TOKEN_ERROR: Error.Code
    PIN_INCORRECT: Error.Code
    PIN_LOCKED: Error.Code
    PIN_FINAL_TRY: Error.Code
    PASSPHRASE_INCORRECT: Error.Code
    NO_SESSION: Error.Code
    DECRYPT_FAILED: Error.Code
    BAD_SIGNATURE: Error.Code
    BAD_IDENTITY: Error.Code
    KEY_NOT_FOUND: Error.Code
    IDENTITY_CHANGED: Error.Code
    STATE_ERROR: Error.Code
    TIMEOUT: Error.Code
    BUSY: Error.Code
    NOT_READY: Error.Code
    BAD_CONFIG: Error.Code
    KEYRING_UNAVAILABLE: Error.Code
    KEY_FILE_CORRUPT: Error.Code
    REFUSED_PAYLOAD: Error.Code
    RATE_LIMITED: Error.Code
    BAD_BUNDLE: Error.Code
    SUPERSEDED: Error.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    code: Error.Code
    message: str
    reason: str
    reply: bytes
    def __init__(self, code: _Optional[_Union[Error.Code, str]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., reply: _Optional[bytes] = ...) -> None: ...

class IdentityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IdentityResponse(_message.Message):
    __slots__ = ("identity_public_key", "public_key", "compressed_key", "installation_id", "address", "key_uid", "key_uid_origin", "share_link", "contact_code_topic", "contact_code_key")
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_KEY_FIELD_NUMBER: _ClassVar[int]
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KEY_UID_FIELD_NUMBER: _ClassVar[int]
    KEY_UID_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SHARE_LINK_FIELD_NUMBER: _ClassVar[int]
    CONTACT_CODE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONTACT_CODE_KEY_FIELD_NUMBER: _ClassVar[int]
    identity_public_key: bytes
    public_key: str
    compressed_key: str
    installation_id: str
    address: str
    key_uid: str
    key_uid_origin: str
    share_link: str
    contact_code_topic: str
    contact_code_key: bytes
    def __init__(self, identity_public_key: _Optional[bytes] = ..., public_key: _Optional[str] = ..., compressed_key: _Optional[str] = ..., installation_id: _Optional[str] = ..., address: _Optional[str] = ..., key_uid: _Optional[str] = ..., key_uid_origin: _Optional[str] = ..., share_link: _Optional[str] = ..., contact_code_topic: _Optional[str] = ..., contact_code_key: _Optional[bytes] = ...) -> None: ...

class BundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    def __init__(self, bundle: _Optional[bytes] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    def __init__(self, digest: _Optional[bytes] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("peer_identity", "payload", "peer_bundle")
    PEER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PEER_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    peer_identity: bytes
    payload: bytes
    peer_bundle: bytes
    def __init__(self, peer_identity: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., peer_bundle: _Optional[bytes] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("message", "forward_secrecy", "installations")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECRECY_FIELD_NUMBER: _ClassVar[int]
    INSTALLATIONS_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    forward_secrecy: bool
    installations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message: _Optional[bytes] = ..., forward_secrecy: _Optional[bool] = ..., installations: _Optional[_Iterable[str]] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("sender_identity", "message")
    SENDER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sender_identity: bytes
    message: bytes
    def __init__(self, sender_identity: _Optional[bytes] = ..., message: _Optional[bytes] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("payload", "installation_id", "confirm_ref", "reply", "public", "forward_secrecy")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_REF_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECRECY_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    installation_id: str
    confirm_ref: bytes
    reply: bytes
    public: bool
    forward_secrecy: bool
    def __init__(self, payload: _Optional[bytes] = ..., installation_id: _Optional[str] = ..., confirm_ref: _Optional[bytes] = ..., reply: _Optional[bytes] = ..., public: _Optional[bool] = ..., forward_secrecy: _Optional[bool] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, refs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ConfirmResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddBundleRequest(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    def __init__(self, bundle: _Optional[bytes] = ...) -> None: ...

class AddBundleResponse(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: bytes
    def __init__(self, identity: _Optional[bytes] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("peer_identity", "installation_id", "initiator", "confirmed", "expired", "created_ns", "last_used_ns", "bundle_id")
    PEER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_NS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    peer_identity: bytes
    installation_id: str
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int
    bundle_id: bytes
    def __init__(self, peer_identity: _Optional[bytes] = ..., installation_id: _Optional[str] = ..., initiator: _Optional[bool] = ..., confirmed: _Optional[bool] = ..., expired: _Optional[bool] = ..., created_ns: _Optional[int] = ..., last_used_ns: _Optional[int] = ..., bundle_id: _Optional[bytes] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class LockRequest(_message.Message):
    __slots__ = ("password",)
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    password: str
    def __init__(self, password: _Optional[str] = ...) -> None: ...

class LockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnlockRequest(_message.Message):
    __slots__ = ("secret", "force")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    secret: str
    force: bool
    def __init__(self, secret: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class UnlockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("locked", "backend", "token_present", "backend_unlocked", "identity_public_key", "installation_id", "pid", "version", "home", "socket", "unlock_failures", "uptime_seconds", "sessions_open", "connections", "unlock_ttl_remaining", "ecdh_allowed", "detail", "anchor", "anchor_epoch", "rekeyed", "superseded")
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_PRESENT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_UNLOCKED_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_FAILURES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_OPEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_TTL_REMAINING_FIELD_NUMBER: _ClassVar[int]
    ECDH_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REKEYED_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    locked: bool
    backend: str
    token_present: bool
    backend_unlocked: bool
    identity_public_key: bytes
    installation_id: str
    pid: int
    version: str
    home: str
    socket: str
    unlock_failures: int
    uptime_seconds: int
    sessions_open: bool
    connections: int
    unlock_ttl_remaining: int
    ecdh_allowed: bool
    detail: str
    anchor: str
    anchor_epoch: int
    rekeyed: str
    superseded: bool
    def __init__(self, locked: _Optional[bool] = ..., backend: _Optional[str] = ..., token_present: _Optional[bool] = ..., backend_unlocked: _Optional[bool] = ..., identity_public_key: _Optional[bytes] = ..., installation_id: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., home: _Optional[str] = ..., socket: _Optional[str] = ..., unlock_failures: _Optional[int] = ..., uptime_seconds: _Optional[int] = ..., sessions_open: _Optional[bool] = ..., connections: _Optional[int] = ..., unlock_ttl_remaining: _Optional[int] = ..., ecdh_allowed: _Optional[bool] = ..., detail: _Optional[str] = ..., anchor: _Optional[str] = ..., anchor_epoch: _Optional[int] = ..., rekeyed: _Optional[str] = ..., superseded: _Optional[bool] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("force",)
    FORCE_FIELD_NUMBER: _ClassVar[int]
    force: bool
    def __init__(self, force: _Optional[bool] = ...) -> None: ...

class RotateResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    def __init__(self, bundle: _Optional[bytes] = ...) -> None: ...

class EcdhRequest(_message.Message):
    __slots__ = ("peer_public",)
    PEER_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    peer_public: bytes
    def __init__(self, peer_public: _Optional[bytes] = ...) -> None: ...

class EcdhResponse(_message.Message):
    __slots__ = ("shared_x",)
    SHARED_X_FIELD_NUMBER: _ClassVar[int]
    shared_x: bytes
    def __init__(self, shared_x: _Optional[bytes] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakuSealRequest(_message.Message):
    __slots__ = ("payload", "to", "sym_key", "sign")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    SYM_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    to: bytes
    sym_key: bytes
    sign: bool
    def __init__(self, payload: _Optional[bytes] = ..., to: _Optional[bytes] = ..., sym_key: _Optional[bytes] = ..., sign: _Optional[bool] = ...) -> None: ...

class WakuSealResponse(_message.Message):
    __slots__ = ("wire", "mode")
    WIRE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    wire: bytes
    mode: WakuMode
    def __init__(self, wire: _Optional[bytes] = ..., mode: _Optional[_Union[WakuMode, str]] = ...) -> None: ...

class WakuOpenRequest(_message.Message):
    __slots__ = ("wire", "sym_key")
    WIRE_FIELD_NUMBER: _ClassVar[int]
    SYM_KEY_FIELD_NUMBER: _ClassVar[int]
    wire: bytes
    sym_key: bytes
    def __init__(self, wire: _Optional[bytes] = ..., sym_key: _Optional[bytes] = ...) -> None: ...

class WakuOpenResponse(_message.Message):
    __slots__ = ("payload", "signer_public_key", "mode")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signer_public_key: bytes
    mode: WakuMode
    def __init__(self, payload: _Optional[bytes] = ..., signer_public_key: _Optional[bytes] = ..., mode: _Optional[_Union[WakuMode, str]] = ...) -> None: ...

class WakuNegotiatedRequest(_message.Message):
    __slots__ = ("peer_identity",)
    PEER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    peer_identity: bytes
    def __init__(self, peer_identity: _Optional[bytes] = ...) -> None: ...

class WakuNegotiatedResponse(_message.Message):
    __slots__ = ("sym_key", "content_topic", "topic")
    SYM_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    sym_key: bytes
    content_topic: str
    topic: bytes
    def __init__(self, sym_key: _Optional[bytes] = ..., content_topic: _Optional[str] = ..., topic: _Optional[bytes] = ...) -> None: ...

class WakuContactCodeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakuContactCodeResponse(_message.Message):
    __slots__ = ("content_topic", "sym_key", "topic", "partitioned_topic")
    CONTENT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SYM_KEY_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITIONED_TOPIC_FIELD_NUMBER: _ClassVar[int]
    content_topic: str
    sym_key: bytes
    topic: bytes
    partitioned_topic: str
    def __init__(self, content_topic: _Optional[str] = ..., sym_key: _Optional[bytes] = ..., topic: _Optional[bytes] = ..., partitioned_topic: _Optional[str] = ...) -> None: ...

class DevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("installation_id", "is_self", "enabled", "last_activity_ns", "spk_version", "active")
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    IS_SELF_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_NS_FIELD_NUMBER: _ClassVar[int]
    SPK_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    installation_id: str
    is_self: bool
    enabled: bool
    last_activity_ns: int
    spk_version: int
    active: bool
    def __init__(self, installation_id: _Optional[str] = ..., is_self: _Optional[bool] = ..., enabled: _Optional[bool] = ..., last_activity_ns: _Optional[int] = ..., spk_version: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class DevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ...) -> None: ...

class SetDeviceRequest(_message.Message):
    __slots__ = ("installation_id", "enabled")
    INSTALLATION_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    installation_id: str
    enabled: bool
    def __init__(self, installation_id: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SetDeviceResponse(_message.Message):
    __slots__ = ("bundle", "devices")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    def __init__(self, bundle: _Optional[bytes] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ...) -> None: ...

class PublicMessageRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class PublicMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    def __init__(self, message: _Optional[bytes] = ...) -> None: ...

class AppWrapRequest(_message.Message):
    __slots__ = ("payload", "type")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    type: int
    def __init__(self, payload: _Optional[bytes] = ..., type: _Optional[int] = ...) -> None: ...

class AppWrapResponse(_message.Message):
    __slots__ = ("message", "message_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    message_id: bytes
    def __init__(self, message: _Optional[bytes] = ..., message_id: _Optional[bytes] = ...) -> None: ...

class AppUnwrapRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    def __init__(self, message: _Optional[bytes] = ...) -> None: ...

class AppUnwrapResponse(_message.Message):
    __slots__ = ("signer", "type", "type_name", "payload", "message_id")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    signer: bytes
    type: int
    type_name: str
    payload: bytes
    message_id: bytes
    def __init__(self, signer: _Optional[bytes] = ..., type: _Optional[int] = ..., type_name: _Optional[str] = ..., payload: _Optional[bytes] = ..., message_id: _Optional[bytes] = ...) -> None: ...
