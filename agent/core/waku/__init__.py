"""The Waku payload layer (26/WAKU2-PAYLOAD, "WakuMessage version 1") as status-go, go-waku and js-waku run it.

Pure: every random byte (padding, ephemeral keys, IVs, nonces) is injected; the identity key is reached only
through :class:`agent.core.keyops.KeyOps` (sign for outgoing envelopes, dh for opening ECIES and for the
negotiated secret). Facts: ``shared/reference/waku-payload-facts.md``.
"""

from __future__ import annotations

from .ecies import check_wire, kdf, open_asymmetric, seal_asymmetric
from .envelope import (
    MAX_PAYLOAD,
    Opened,
    Rng,
    decode_envelope,
    encode_envelope,
    envelope_len,
    padding_len,
    size_field_len,
)
from .payload import Mode, open_wire, seal
from .symmetric import open_symmetric, seal_symmetric
from .topics import (
    PBKDF2_ITERATIONS,
    contact_code_key,
    contact_code_name,
    contact_code_topic,
    content_topic,
    key_from_password,
    negotiated_key,
    negotiated_name,
    negotiated_secret,
    negotiated_topic,
    partitioned_name,
    partitioned_topic,
    topic_bytes,
)

__all__ = [
    "MAX_PAYLOAD",
    "PBKDF2_ITERATIONS",
    "Mode",
    "Opened",
    "Rng",
    "check_wire",
    "contact_code_key",
    "contact_code_name",
    "contact_code_topic",
    "content_topic",
    "decode_envelope",
    "encode_envelope",
    "envelope_len",
    "kdf",
    "key_from_password",
    "negotiated_key",
    "negotiated_name",
    "negotiated_secret",
    "negotiated_topic",
    "open_asymmetric",
    "open_symmetric",
    "open_wire",
    "padding_len",
    "partitioned_name",
    "partitioned_topic",
    "seal",
    "seal_asymmetric",
    "seal_symmetric",
    "size_field_len",
    "topic_bytes",
]
