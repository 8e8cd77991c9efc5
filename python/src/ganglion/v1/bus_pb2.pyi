from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AckMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_MODE_MANUAL: _ClassVar[AckMode]
    ACK_MODE_AUTO: _ClassVar[AckMode]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_NONE: _ClassVar[Aggregation]
    AGGREGATION_KEEP_LAST: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]

class StorageClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_CLASS_DURABLE: _ClassVar[StorageClass]
    STORAGE_CLASS_EPHEMERAL: _ClassVar[StorageClass]
ACK_MODE_MANUAL: AckMode
ACK_MODE_AUTO: AckMode
AGGREGATION_NONE: Aggregation
AGGREGATION_KEEP_LAST: Aggregation
AGGREGATION_COUNT: Aggregation
STORAGE_CLASS_DURABLE: StorageClass
STORAGE_CLASS_EPHEMERAL: StorageClass

class Event(_message.Message):
    __slots__ = ("id", "topic", "type", "source", "timestamp_ms", "headers", "payload", "content_type", "seq")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    topic: str
    type: str
    source: str
    timestamp_ms: int
    headers: _containers.ScalarMap[str, str]
    payload: bytes
    content_type: str
    seq: int
    def __init__(self, id: _Optional[str] = ..., topic: _Optional[str] = ..., type: _Optional[str] = ..., source: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("events", "request_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    request_id: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., request_id: _Optional[int] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("seq", "id", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    id: str
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("acks", "request_id", "error")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[PublishAck]
    request_id: int
    error: Error
    def __init__(self, acks: _Optional[_Iterable[_Union[PublishAck, _Mapping]]] = ..., request_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "field", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    retry_after_ms: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("open", "ack", "nack", "term")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    open: OpenSubscription
    ack: Ack
    nack: Nack
    term: Term
    def __init__(self, open: _Optional[_Union[OpenSubscription, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., term: _Optional[_Union[Term, _Mapping]] = ...) -> None: ...

class OpenSubscription(_message.Message):
    __slots__ = ("pattern", "options")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    options: SubscribeOptions
    def __init__(self, pattern: _Optional[str] = ..., options: _Optional[_Union[SubscribeOptions, _Mapping]] = ...) -> None: ...

class StartPosition(_message.Message):
    __slots__ = ("new", "all", "seq", "time_ms")
    NEW_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    new: bool
    all: bool
    seq: int
    time_ms: int
    def __init__(self, new: _Optional[bool] = ..., all: _Optional[bool] = ..., seq: _Optional[int] = ..., time_ms: _Optional[int] = ...) -> None: ...

class Backoff(_message.Message):
    __slots__ = ("initial_ms", "multiplier", "max_ms", "jitter")
    INITIAL_MS_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    initial_ms: int
    multiplier: float
    max_ms: int
    jitter: float
    def __init__(self, initial_ms: _Optional[int] = ..., multiplier: _Optional[float] = ..., max_ms: _Optional[int] = ..., jitter: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("types", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPES_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.ScalarMap[str, str]
    def __init__(self, types: _Optional[_Iterable[str]] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchOptions(_message.Message):
    __slots__ = ("window_ms", "max_events", "key_header", "aggregation", "max_bytes")
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    KEY_HEADER_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    window_ms: int
    max_events: int
    key_header: str
    aggregation: Aggregation
    max_bytes: int
    def __init__(self, window_ms: _Optional[int] = ..., max_events: _Optional[int] = ..., key_header: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class SubscribeOptions(_message.Message):
    __slots__ = ("durable", "queue_group", "start", "ack_mode", "ack_deadline_ms", "max_in_flight", "max_deliveries", "backoff", "dead_letter_topic", "filter", "prioritized", "batch", "max_in_flight_bytes")
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ACK_MODE_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PRIORITIZED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    durable: str
    queue_group: str
    start: StartPosition
    ack_mode: AckMode
    ack_deadline_ms: int
    max_in_flight: int
    max_deliveries: int
    backoff: Backoff
    dead_letter_topic: str
    filter: Filter
    prioritized: bool
    batch: BatchOptions
    max_in_flight_bytes: int
    def __init__(self, durable: _Optional[str] = ..., queue_group: _Optional[str] = ..., start: _Optional[_Union[StartPosition, _Mapping]] = ..., ack_mode: _Optional[_Union[AckMode, str]] = ..., ack_deadline_ms: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., max_deliveries: _Optional[int] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ..., dead_letter_topic: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., prioritized: _Optional[bool] = ..., batch: _Optional[_Union[BatchOptions, _Mapping]] = ..., max_in_flight_bytes: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seqs",)
    SEQS_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("seqs", "delay_ms", "error")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    delay_ms: int
    error: str
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., delay_ms: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Term(_message.Message):
    __slots__ = ("seqs", "reason")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    reason: str
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., reason: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("subscribed", "deliveries", "closed")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    deliveries: DeliveryFrame
    closed: Closed
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., deliveries: _Optional[_Union[DeliveryFrame, _Mapping]] = ..., closed: _Optional[_Union[Closed, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("subscription_id", "name")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    subscription_id: int
    name: str
    def __init__(self, subscription_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class DeliveryFrame(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("events", "counts", "seqs")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeliveredEvent]
    counts: _containers.RepeatedCompositeFieldContainer[KeyCount]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, events: _Optional[_Iterable[_Union[DeliveredEvent, _Mapping]]] = ..., counts: _Optional[_Iterable[_Union[KeyCount, _Mapping]]] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class DeliveredEvent(_message.Message):
    __slots__ = ("event", "attempt", "coalesced")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    event: Event
    attempt: int
    coalesced: int
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., attempt: _Optional[int] = ..., coalesced: _Optional[int] = ...) -> None: ...

class KeyCount(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    count: int
    def __init__(self, key: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Closed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("pattern", "from_seq", "since_ms", "limit")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    from_seq: int
    since_ms: int
    limit: int
    def __init__(self, pattern: _Optional[str] = ..., from_seq: _Optional[int] = ..., since_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class ListTopicsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TopicInfo(_message.Message):
    __slots__ = ("topic", "storage", "events", "last_seq")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    topic: str
    storage: StorageClass
    events: int
    last_seq: int
    def __init__(self, topic: _Optional[str] = ..., storage: _Optional[_Union[StorageClass, str]] = ..., events: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ListTopicsResponse(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[TopicInfo]
    def __init__(self, topics: _Optional[_Iterable[_Union[TopicInfo, _Mapping]]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("subscription", "limit")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    limit: int
    def __init__(self, subscription: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("event", "origin_topic", "origin_seq", "subscription", "attempts", "last_error")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    event: Event
    origin_topic: str
    origin_seq: int
    subscription: str
    attempts: int
    last_error: str
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., origin_topic: _Optional[str] = ..., origin_seq: _Optional[int] = ..., subscription: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters",)
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class RedriveDeadLettersRequest(_message.Message):
    __slots__ = ("subscription", "seqs")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, subscription: _Optional[str] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class RedriveDeadLettersResponse(_message.Message):
    __slots__ = ("redriven",)
    REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    redriven: int
    def __init__(self, redriven: _Optional[int] = ...) -> None: ...

class PurgeTopicsRequest(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    def __init__(self, pattern: _Optional[str] = ...) -> None: ...

class PurgeTopicsResponse(_message.Message):
    __slots__ = ("topics", "events")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    topics: int
    events: int
    def __init__(self, topics: _Optional[int] = ..., events: _Optional[int] = ...) -> None: ...

class DeleteTopicsRequest(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    def __init__(self, pattern: _Optional[str] = ...) -> None: ...

class DeleteTopicsResponse(_message.Message):
    __slots__ = ("topics", "events")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    events: int
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., events: _Optional[int] = ...) -> None: ...

class ListSubscriptionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscriptionInfo(_message.Message):
    __slots__ = ("name", "pattern", "queue_group", "durable", "members", "lag", "in_flight", "ready", "dead_letter_topic", "dead_letters", "delivered", "redelivered", "acked", "nacked", "expired")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    NACKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    pattern: str
    queue_group: str
    durable: bool
    members: int
    lag: int
    in_flight: int
    ready: int
    dead_letter_topic: str
    dead_letters: int
    delivered: int
    redelivered: int
    acked: int
    nacked: int
    expired: int
    def __init__(self, name: _Optional[str] = ..., pattern: _Optional[str] = ..., queue_group: _Optional[str] = ..., durable: _Optional[bool] = ..., members: _Optional[int] = ..., lag: _Optional[int] = ..., in_flight: _Optional[int] = ..., ready: _Optional[int] = ..., dead_letter_topic: _Optional[str] = ..., dead_letters: _Optional[int] = ..., delivered: _Optional[int] = ..., redelivered: _Optional[int] = ..., acked: _Optional[int] = ..., nacked: _Optional[int] = ..., expired: _Optional[int] = ...) -> None: ...

class ListSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionInfo]
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[SubscriptionInfo, _Mapping]]] = ...) -> None: ...
