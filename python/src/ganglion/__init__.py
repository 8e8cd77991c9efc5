"""Ganglion's Python SDK: the event bus and the resource coordinator over gRPC (asyncio).

See `ganglion.bus` and `ganglion.coordinator`.
"""

from ganglion._connection import Tls
from ganglion.app import App, HandlerStats, Module
from ganglion._events import Event
from ganglion.bus import Backoff, Bus, DeadLetter, Delivery, PublishAck, Reject, Retry, Subscription, Window, event
from ganglion.coordinator import Coordinator, Lease, LeaseRevoked, Permit, Queue, Response, TakenRequest
from ganglion.errors import (
    DeadlineExceeded,
    GanglionError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Stale,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "App",
    "HandlerStats",
    "Module",
    "Backoff",
    "Bus",
    "Coordinator",
    "DeadLetter",
    "DeadlineExceeded",
    "Delivery",
    "Event",
    "GanglionError",
    "Internal",
    "InvalidArgument",
    "Lease",
    "LeaseRevoked",
    "NotFound",
    "Permit",
    "PermissionDenied",
    "PublishAck",
    "Queue",
    "Reject",
    "ResourceExhausted",
    "Response",
    "Retry",
    "Stale",
    "Subscription",
    "TakenRequest",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "Window",
    "event",
]
