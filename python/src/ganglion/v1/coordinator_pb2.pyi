from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AcquireRequest(_message.Message):
    __slots__ = ("pool", "holder", "priority", "amount", "wait_ms", "max_hold_ms")
    POOL_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_HOLD_MS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    holder: str
    priority: int
    amount: int
    wait_ms: int
    max_hold_ms: int
    def __init__(self, pool: _Optional[str] = ..., holder: _Optional[str] = ..., priority: _Optional[int] = ..., amount: _Optional[int] = ..., wait_ms: _Optional[int] = ..., max_hold_ms: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("id", "pool", "holder", "units", "cuda_visible_devices", "fencing_token", "granted_at_ms", "expires_at_ms", "max_hold_until_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    CUDA_VISIBLE_DEVICES_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_HOLD_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    pool: str
    holder: str
    units: _containers.RepeatedScalarFieldContainer[str]
    cuda_visible_devices: str
    fencing_token: int
    granted_at_ms: int
    expires_at_ms: int
    max_hold_until_ms: int
    def __init__(self, id: _Optional[int] = ..., pool: _Optional[str] = ..., holder: _Optional[str] = ..., units: _Optional[_Iterable[str]] = ..., cuda_visible_devices: _Optional[str] = ..., fencing_token: _Optional[int] = ..., granted_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., max_hold_until_ms: _Optional[int] = ...) -> None: ...

class LeaseUpdate(_message.Message):
    __slots__ = ("granted", "warning", "revoked", "released")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    granted: Lease
    warning: LeaseWarning
    revoked: LeaseRevoked
    released: LeaseReleased
    def __init__(self, granted: _Optional[_Union[Lease, _Mapping]] = ..., warning: _Optional[_Union[LeaseWarning, _Mapping]] = ..., revoked: _Optional[_Union[LeaseRevoked, _Mapping]] = ..., released: _Optional[_Union[LeaseReleased, _Mapping]] = ...) -> None: ...

class LeaseWarning(_message.Message):
    __slots__ = ("revoked_in_ms",)
    REVOKED_IN_MS_FIELD_NUMBER: _ClassVar[int]
    revoked_in_ms: int
    def __init__(self, revoked_in_ms: _Optional[int] = ...) -> None: ...

class LeaseRevoked(_message.Message):
    __slots__ = ("release_in_ms",)
    RELEASE_IN_MS_FIELD_NUMBER: _ClassVar[int]
    release_in_ms: int
    def __init__(self, release_in_ms: _Optional[int] = ...) -> None: ...

class LeaseReleased(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckFenceRequest(_message.Message):
    __slots__ = ("pool", "fencing_token")
    POOL_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pool: str
    fencing_token: int
    def __init__(self, pool: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class CheckFenceResponse(_message.Message):
    __slots__ = ("valid", "reason")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class PermitRequest(_message.Message):
    __slots__ = ("quota", "component", "priority", "wait_ms")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    quota: str
    component: str
    priority: int
    wait_ms: int
    def __init__(self, quota: _Optional[str] = ..., component: _Optional[str] = ..., priority: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class Permit(_message.Message):
    __slots__ = ("quota", "component", "granted_at_ms", "used", "remaining")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    quota: str
    component: str
    granted_at_ms: int
    used: int
    remaining: int
    def __init__(self, quota: _Optional[str] = ..., component: _Optional[str] = ..., granted_at_ms: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("queue", "request", "priority", "idempotency_key", "fallback", "component")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    request: bytes
    priority: int
    idempotency_key: str
    fallback: bytes
    component: str
    def __init__(self, queue: _Optional[str] = ..., request: _Optional[bytes] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., fallback: _Optional[bytes] = ..., component: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class GetResponseRequest(_message.Message):
    __slots__ = ("queue", "request_id", "wait_ms")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    request_id: int
    wait_ms: int
    def __init__(self, queue: _Optional[str] = ..., request_id: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetResponseResponse(_message.Message):
    __slots__ = ("ready", "response", "error", "cached", "degraded")
    READY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    response: bytes
    error: str
    cached: bool
    degraded: bool
    def __init__(self, ready: _Optional[bool] = ..., response: _Optional[bytes] = ..., error: _Optional[str] = ..., cached: _Optional[bool] = ..., degraded: _Optional[bool] = ...) -> None: ...

class TakeRequest(_message.Message):
    __slots__ = ("queue", "worker", "wait_ms")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    worker: str
    wait_ms: int
    def __init__(self, queue: _Optional[str] = ..., worker: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class TakeResponse(_message.Message):
    __slots__ = ("taken", "request_id", "request", "priority", "component")
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    taken: bool
    request_id: int
    request: bytes
    priority: int
    component: str
    def __init__(self, taken: _Optional[bool] = ..., request_id: _Optional[int] = ..., request: _Optional[bytes] = ..., priority: _Optional[int] = ..., component: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("queue", "request_id", "response", "error")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    queue: str
    request_id: int
    response: bytes
    error: str
    def __init__(self, queue: _Optional[str] = ..., request_id: _Optional[int] = ..., response: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("name", "capacity", "free", "holders", "waiters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: int
    free: int
    holders: _containers.RepeatedCompositeFieldContainer[Lease]
    waiters: int
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[int] = ..., free: _Optional[int] = ..., holders: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., waiters: _Optional[int] = ...) -> None: ...

class QuotaStatus(_message.Message):
    __slots__ = ("name", "limit", "window_ms", "used", "remaining", "near_limit", "suspended_for_ms", "waiters", "by_component")
    class ByComponentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    NEAR_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FOR_MS_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    BY_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    window_ms: int
    used: int
    remaining: int
    near_limit: bool
    suspended_for_ms: int
    waiters: int
    by_component: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., window_ms: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ..., near_limit: _Optional[bool] = ..., suspended_for_ms: _Optional[int] = ..., waiters: _Optional[int] = ..., by_component: _Optional[_Mapping[str, int]] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("name", "quota", "depth")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    quota: str
    depth: int
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class BreakerStatus(_message.Message):
    __slots__ = ("name", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("pools", "quotas", "queues", "breakers")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaStatus]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStatus]
    breakers: _containers.RepeatedCompositeFieldContainer[BreakerStatus]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., quotas: _Optional[_Iterable[_Union[QuotaStatus, _Mapping]]] = ..., queues: _Optional[_Iterable[_Union[QueueStatus, _Mapping]]] = ..., breakers: _Optional[_Iterable[_Union[BreakerStatus, _Mapping]]] = ...) -> None: ...
