from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplicationMetadataMessage(_message.Message):
    __slots__ = ("signature", "payload", "type")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[ApplicationMetadataMessage.Type]
        CHAT_MESSAGE: _ClassVar[ApplicationMetadataMessage.Type]
        CONTACT_UPDATE: _ClassVar[ApplicationMetadataMessage.Type]
        MEMBERSHIP_UPDATE_MESSAGE: _ClassVar[ApplicationMetadataMessage.Type]
        PAIR_INSTALLATION: _ClassVar[ApplicationMetadataMessage.Type]
        SYNC_INSTALLATION: _ClassVar[ApplicationMetadataMessage.Type]
        REQUEST_ADDRESS_FOR_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        ACCEPT_REQUEST_ADDRESS_FOR_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        DECLINE_REQUEST_ADDRESS_FOR_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        REQUEST_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        SEND_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        DECLINE_REQUEST_TRANSACTION: _ClassVar[ApplicationMetadataMessage.Type]
        SYNC_INSTALLATION_CONTACT: _ClassVar[ApplicationMetadataMessage.Type]
        SYNC_INSTALLATION_ACCOUNT: _ClassVar[ApplicationMetadataMessage.Type]
        SYNC_INSTALLATION_PUBLIC_CHAT: _ClassVar[ApplicationMetadataMessage.Type]
        CONTACT_CODE_ADVERTISEMENT: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_REGISTRATION: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_REGISTRATION_RESPONSE: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_QUERY: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_QUERY_RESPONSE: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_REQUEST: _ClassVar[ApplicationMetadataMessage.Type]
        PUSH_NOTIFICATION_RESPONSE: _ClassVar[ApplicationMetadataMessage.Type]
        EMOJI_REACTION: _ClassVar[ApplicationMetadataMessage.Type]
        GROUP_CHAT_INVITATION: _ClassVar[ApplicationMetadataMessage.Type]
        CHAT_IDENTITY: _ClassVar[ApplicationMetadataMessage.Type]
        COMMUNITY_DESCRIPTION: _ClassVar[ApplicationMetadataMessage.Type]
        COMMUNITY_INVITATION: _ClassVar[ApplicationMetadataMessage.Type]
    UNKNOWN: ApplicationMetadataMessage.Type
    CHAT_MESSAGE: ApplicationMetadataMessage.Type
    CONTACT_UPDATE: ApplicationMetadataMessage.Type
    MEMBERSHIP_UPDATE_MESSAGE: ApplicationMetadataMessage.Type
    PAIR_INSTALLATION: ApplicationMetadataMessage.Type
    SYNC_INSTALLATION: ApplicationMetadataMessage.Type
    REQUEST_ADDRESS_FOR_TRANSACTION: ApplicationMetadataMessage.Type
    ACCEPT_REQUEST_ADDRESS_FOR_TRANSACTION: ApplicationMetadataMessage.Type
    DECLINE_REQUEST_ADDRESS_FOR_TRANSACTION: ApplicationMetadataMessage.Type
    REQUEST_TRANSACTION: ApplicationMetadataMessage.Type
    SEND_TRANSACTION: ApplicationMetadataMessage.Type
    DECLINE_REQUEST_TRANSACTION: ApplicationMetadataMessage.Type
    SYNC_INSTALLATION_CONTACT: ApplicationMetadataMessage.Type
    SYNC_INSTALLATION_ACCOUNT: ApplicationMetadataMessage.Type
    SYNC_INSTALLATION_PUBLIC_CHAT: ApplicationMetadataMessage.Type
    CONTACT_CODE_ADVERTISEMENT: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_REGISTRATION: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_REGISTRATION_RESPONSE: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_QUERY: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_QUERY_RESPONSE: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_REQUEST: ApplicationMetadataMessage.Type
    PUSH_NOTIFICATION_RESPONSE: ApplicationMetadataMessage.Type
    EMOJI_REACTION: ApplicationMetadataMessage.Type
    GROUP_CHAT_INVITATION: ApplicationMetadataMessage.Type
    CHAT_IDENTITY: ApplicationMetadataMessage.Type
    COMMUNITY_DESCRIPTION: ApplicationMetadataMessage.Type
    COMMUNITY_INVITATION: ApplicationMetadataMessage.Type
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    payload: bytes
    type: ApplicationMetadataMessage.Type
    def __init__(self, signature: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., type: _Optional[_Union[ApplicationMetadataMessage.Type, str]] = ...) -> None: ...
