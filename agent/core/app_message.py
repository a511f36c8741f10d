"""Status application messages (status-go ``ApplicationMetadataMessage``), and what the identity key must not sign.

status-go wraps every chat-level message as ``ApplicationMetadataMessage{signature, payload, type}`` where
``signature`` is go-ethereum's 65-byte ``R‖S‖V`` (V in {0,1}, low S) over Keccak-256 of ``payload``; the message id
is Keccak-256 of the author's 65-byte public key followed by the marshalled wrapper.

The same key signs bundles (Keccak-256 of the bundle material) and Waku envelopes (Keccak-256 of
``flags ‖ size ‖ payload ‖ padding``) with the same scheme, and none of these formats separates domains. So a
signature over an arbitrary payload could verify as a bundle or an envelope signature. :func:`refusal` names the
reason a payload must not be signed: not a well-formed message of a type we know, bundle material
(:func:`could_be_bundle_material`), or a signed Waku envelope's preimage (:func:`could_be_waku_preimage`).

Pure: no I/O; the signer is any :class:`~agent.core.keyops.KeyOps`.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agent.pb.status import application_metadata_message_pb2 as app_pb

from . import secp256k1
from .error_codes import CodedError, ErrorCode
from .errors import BadSignature, MalformedMessage
from .hashing import keccak256
from .keyops import KeyOps

__all__ = [
    "AppMessage",
    "RefusedPayload",
    "MAX_APP_PAYLOAD",
    "type_number",
    "type_name",
    "refusal",
    "could_be_bundle_material",
    "could_be_waku_preimage",
    "wrap",
    "unwrap",
    "message_id",
]

Type = app_pb.ApplicationMetadataMessage.Type

#: Largest payload the agent signs (the request frame cap, 256 KiB, is the real bound; this keeps the reply under it).
MAX_APP_PAYLOAD = 200 * 1024
#: Work budget of the bundle-material parse (steps); an input that needs more is refused, never signed.
_PARSE_BUDGET = 2_000_000
_DIGITS = frozenset(b"0123456789")


class RefusedPayload(CodedError, ValueError):
    """The identity key will not sign this payload: it could stand for another signature, or is malformed."""

    code = ErrorCode.REFUSED_PAYLOAD


@dataclass(frozen=True)
class AppMessage:
    """A verified application message: who signed it, its type, payload and status-go message id."""

    signer: bytes  # 65-byte uncompressed public key (0x04 ‖ X ‖ Y)
    type: int
    payload: bytes
    message_id: bytes


def type_number(text: str) -> int:
    """A type given as status-go's enum name (``CHAT_MESSAGE``, case-insensitive) or as its number."""
    t = text.strip()
    if t.isdigit():
        n = int(t)
        if n > 0xFFFFFFFF:
            raise ValueError(f"type {t} is out of range")
        return n
    try:
        return int(Type.Value(t.upper()))
    except ValueError:
        raise ValueError(f"unknown application message type {text!r} (a status-go Type name or a number)") from None


def type_name(number: int) -> str:
    """status-go's enum name of ``number``, or ``""`` when this agent does not know it."""
    try:
        return str(Type.Name(number))
    except ValueError:
        return ""


def message_id(author: bytes, wrapped: bytes) -> bytes:
    """status-go ``MessageID``: Keccak-256(65-byte uncompressed author key ‖ marshalled wrapper)."""
    return keccak256(secp256k1.decompress(author), wrapped)


# --- what must not be signed -------------------------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    return None


def _protobuf_problem(data: bytes) -> str | None:
    """Why ``data`` is not protobuf wire format (field numbers ≥ 1, wire types 0/1/2/5, lengths in bounds)."""
    pos = 0
    while pos < len(data):
        tag = _varint(data, pos)
        if tag is None:
            return "truncated field tag"
        key, pos = tag
        field, wire = key >> 3, key & 7
        if field == 0 or field > (1 << 29) - 1:
            return "field number out of range"
        if wire == 0:
            v = _varint(data, pos)
            if v is None:
                return "truncated varint"
            pos = v[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n = _varint(data, pos)
            if n is None:
                return "truncated length"
            pos = n[1] + n[0]
        else:
            return f"wire type {wire} is not used by status-go messages"
        if pos > len(data):
            return "a field runs past the end"
    return None


def could_be_waku_preimage(data: bytes) -> bool:
    """True if a signature over Keccak-256(``data``) would verify as a signed Waku envelope's.

    A signed envelope's preimage is ``flags ‖ size(n) ‖ payload ‖ padding`` with ``flags & 0x04`` set and
    ``n = flags & 0x03``; receivers ignore the other flag bits and never check padding, so any such prefix with a
    size that fits counts. (Protobuf never starts this way: a first byte with bit 2 set is wire type 4-7, i.e.
    end-group, 6, 7 or a fixed32 field - well-formed messages of the known types are refused only in that last
    case, where the risk is real.)
    """
    if not data or not data[0] & 0x04:
        return False
    n = data[0] & 0x03
    if n == 0:
        return True  # no size field: every remaining byte can be the payload
    if len(data) < 1 + n:
        return False
    size = int.from_bytes(data[1 : 1 + n], "little")
    return size <= len(data) - 1 - n


def _is_point(data: bytes, pos: int, cache: dict[int, bool]) -> bool:
    hit = cache.get(pos)
    if hit is None:
        try:
            secp256k1.public_key(data[pos : pos + 33])
            hit = True
        except Exception:  # noqa: BLE001 - any parse failure means "not a key"
            hit = False
        cache[pos] = hit
    return hit


def _timestamp(tail: bytes) -> bool:
    """A non-zero decimal int64 as Go's ``strconv.FormatInt`` writes it (no leading zeros, optional '-')."""
    digits = tail[1:] if tail[:1] == b"-" else tail
    if not digits or not all(c in _DIGITS for c in digits) or digits[:1] == b"0" or len(digits) > 19:
        return False
    value = int(digits) * (-1 if tail[:1] == b"-" else 1)
    return -(1 << 63) <= value < (1 << 63)


def could_be_bundle_material(data: bytes) -> bool:
    """True if ``data`` parses as a bundle's signed material (status-go ``buildSignatureMaterial``).

    Material is one or more ``installation_id(UTF-8) ‖ signed_pre_key(33-byte point) ‖ decimal(uint32 version)``
    then, optionally, ``decimal(int64 timestamp)``: no separators, so we search every split (sortedness of the
    ids is not required: a looser test refuses more, never less). Work is bounded; past the budget the answer is
    True (refuse rather than sign something we could not rule out).
    """
    n = len(data)
    if n < 34:
        return False
    if data[-1] not in _DIGITS:
        return False  # material always ends in a digit (a version or the timestamp)
    keys = [j for j in range(n - 33) if data[j] in (2, 3) and data[j + 33] in _DIGITS]
    points: dict[int, bool] = {}
    seen: set[int] = set()
    todo = [0]
    steps = 0
    while todo:
        start = todo.pop()
        if start in seen:
            continue
        seen.add(start)
        try:
            data[start:].decode("utf-8")
            valid_to = n
        except UnicodeDecodeError as exc:
            valid_to = start + exc.start  # the id may not reach past the first invalid byte
        for j in keys:
            steps += 1
            if steps > _PARSE_BUDGET:
                return True
            if j < start:
                continue
            if j > valid_to:
                break
            if not _is_point(data, j, points):
                continue
            v = j + 33
            end = v
            while end < n and data[end] in _DIGITS and end - v < 10:
                end += 1
            # uint32 without leading zeros: "0" alone, or 1..10 digits not starting with 0
            for stop in range(v + 1, end + 1):
                if (data[v] == 0x30 and stop > v + 1) or int(data[v:stop]) > 0xFFFFFFFF:
                    break
                if stop == n or _timestamp(data[stop:]):
                    return True
                todo.append(stop)
    return False


def refusal(payload: bytes, type_: int) -> str | None:
    """Why the identity key must not sign ``payload`` as an application message of ``type_`` (None: it may)."""
    if not payload:
        return "the payload is empty"
    if len(payload) > MAX_APP_PAYLOAD:
        return f"the payload is larger than {MAX_APP_PAYLOAD} bytes"
    if type_name(type_) and type_ != Type.UNKNOWN:
        problem = _protobuf_problem(payload)
        if problem is not None:
            return f"the payload is not a well-formed {type_name(type_)} message ({problem})"
    if could_be_bundle_material(payload):
        return "the payload could be read as bundle-signature material: its signature would sign that bundle"
    if could_be_waku_preimage(payload):
        return "the payload could be read as a signed Waku envelope: its signature would sign that envelope"
    return None


# --- wrap / unwrap -----------------------------------------------------------------------------------------------

def wrap(signer: KeyOps, payload: bytes, type_: int) -> tuple[bytes, bytes]:
    """Sign ``payload`` as status-go ``WrapMessageV1`` does; returns (marshalled wrapper, message id).

    Raises :class:`RefusedPayload` (nothing signed) when :func:`refusal` names a reason.
    """
    why = refusal(payload, type_)
    if why is not None:
        raise RefusedPayload(why)
    digest = keccak256(payload)
    pub = signer.public_key()
    sig = secp256k1.recoverable_from_rs(bytes(signer.sign(digest)[:64]), digest, pub)
    wrapped = app_pb.ApplicationMetadataMessage(signature=sig, payload=payload, type=type_)  # type: ignore[arg-type]
    data = wrapped.SerializeToString()
    return data, message_id(pub, data)


def unwrap(data: bytes) -> AppMessage:
    """Parse and verify a marshalled wrapper; the signer is whoever the signature recovers to (as status-go)."""
    msg = app_pb.ApplicationMetadataMessage()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise MalformedMessage("not an ApplicationMetadataMessage") from exc
    sig = bytes(msg.signature)
    if len(sig) != 65 or sig[64] not in (0, 1):
        raise BadSignature("signature must be 65 bytes R‖S‖V with V in {0,1}")
    signer = secp256k1.recover(keccak256(bytes(msg.payload)), sig)
    return AppMessage(secp256k1.decompress(signer), int(msg.type), bytes(msg.payload), message_id(signer, data))
