"""The server's refusals as Python exceptions, one class per gRPC code."""

from __future__ import annotations

from typing import Any

import grpc

FIELD_METADATA = "ganglion-field"
RETRY_AFTER_METADATA = "retry-after-ms"


class GanglionError(Exception):
    """A call the server refused or could not serve."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class InvalidArgument(GanglionError):
    """Bad input; `field` names it (`events[2].topic`)."""

    code = "INVALID_ARGUMENT"


class NotFound(GanglionError):
    code = "NOT_FOUND"


class ResourceExhausted(GanglionError):
    """A limit was reached; try again after `retry_after` seconds."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(GanglionError):
    """The server cannot serve this now (unreachable, a full disk, shutting down)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(GanglionError):
    code = "DEADLINE_EXCEEDED"


class Stale(GanglionError):
    """A lease or fencing token that is no longer valid."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(GanglionError):
    """No valid credentials (a token, or a client certificate)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(GanglionError):
    """The caller's identity may not do this."""

    code = "PERMISSION_DENIED"


class Internal(GanglionError):
    code = "INTERNAL"


_BY_STATUS: dict[grpc.StatusCode, type[GanglionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: Stale,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

_BY_NAME: dict[str, type[GanglionError]] = {cls.code: cls for cls in _BY_STATUS.values()}


def from_rpc_error(error: grpc.aio.AioRpcError) -> GanglionError:
    """The exception for a failed call, with the field and retry-after the server sent."""
    metadata: Any = error.trailing_metadata() or ()
    trailers = {str(k): v for k, v in metadata if isinstance(v, str)}
    field = trailers.get(FIELD_METADATA) or None
    retry = trailers.get(RETRY_AFTER_METADATA)
    message = error.details() or ""
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    cls = _BY_STATUS.get(error.code(), Internal)
    return cls(message, field=field, retry_after=int(retry) / 1000 if retry else None)


def from_wire(code: str, message: str, field: str = "", retry_after_ms: int = 0) -> GanglionError:
    """The exception for an error carried in a response message (a publish stream's)."""
    cls = _BY_NAME.get(code, Internal)
    return cls(message, field=field or None, retry_after=retry_after_ms / 1000 if retry_after_ms else None)
