"""Events as Python sees them: payloads encoded by type, decoded by content type."""

from __future__ import annotations

import builtins
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message

from ganglion.v1 import bus_pb2

M = TypeVar("M", bound=Message)

#: The correlation id of the event being handled: set around each handler call, and
#: given to every event published meanwhile that names none.
correlation_id: ContextVar[str | None] = ContextVar("ganglion_correlation_id", default=None)
#: The W3C `traceparent` of the event being handled, carried the same way.
traceparent: ContextVar[str | None] = ContextVar("ganglion_traceparent", default=None)

JSON = "application/json"
BINARY = "application/octet-stream"
PROTOBUF = "application/x-protobuf"


def encode_payload(payload: Any) -> tuple[bytes, str, str]:
    """Payload bytes, content type and (for a protobuf message) its type name."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), BINARY, ""
    if isinstance(payload, Message):
        return payload.SerializeToString(), PROTOBUF, payload.DESCRIPTOR.full_name
    return json.dumps(payload, separators=(",", ":")).encode(), JSON, ""


@dataclass(frozen=True)
class Event:
    """An event as delivered or replayed."""

    topic: str
    payload: bytes
    content_type: str = ""
    type: str = ""
    source: str = ""
    id: str = ""
    seq: int = 0
    timestamp_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        """The payload decoded: JSON as Python values; anything else as bytes."""
        if self.content_type.split(";")[0].strip() == JSON:
            return json.loads(self.payload)
        return self.payload

    def decode(self, message_type: builtins.type[M]) -> M:
        """The payload as a protobuf message of `message_type`."""
        message = message_type()
        message.ParseFromString(self.payload)
        return message

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")

    @classmethod
    def from_wire(cls, e: bus_pb2.Event) -> Event:
        return cls(
            topic=e.topic,
            payload=bytes(e.payload),
            content_type=e.content_type,
            type=e.type,
            source=e.source,
            id=e.id,
            seq=e.seq,
            timestamp_ms=e.timestamp_ms,
            headers=dict(e.headers),
        )


def _current_correlation() -> str | None:
    return correlation_id.get()


def to_wire(
    topic: str,
    payload: Any,
    *,
    type: str = "",
    source: str = "",
    headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    content_type: str | None = None,
) -> bus_pb2.Event:
    body, detected, type_name = encode_payload(payload)
    all_headers = dict(headers or {})
    if idempotency_key is not None:
        all_headers["idempotency_key"] = idempotency_key
    inherited = {"correlation_id": correlation_id or _current_correlation(), "traceparent": traceparent.get()}
    for name, value in inherited.items():
        if value is not None:
            all_headers.setdefault(name, value)
    return bus_pb2.Event(
        topic=topic,
        payload=body,
        content_type=content_type or detected,
        type=type or type_name,
        source=source,
        headers=all_headers,
    )
