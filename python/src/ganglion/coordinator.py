"""The resource coordinator over gRPC: leases as async context managers, permits from
quotas, and the rate-limited request queue.

```python
coord = await Coordinator.connect("127.0.0.1:50051")
async with coord.lease("gpu", holder="trainer", wait=30) as lease:
    os.environ.update(lease.env)          # CUDA_VISIBLE_DEVICES
    train(fencing_token=lease.fencing_token)
```
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

#: What a stream's `read()` returns at its end (not in grpcio's type stubs).
EOF: Any = getattr(grpc.aio, "EOF")

from ganglion._connection import Connection, Tls
from ganglion._events import encode_payload
from ganglion.errors import GanglionError, ResourceExhausted, from_rpc_error
from ganglion.v1 import coordinator_pb2 as pb
from ganglion.v1 import coordinator_pb2_grpc

log = logging.getLogger("ganglion.coordinator")


def _ms(seconds: float | None) -> int:
    return int(seconds * 1000) if seconds else 0


class LeaseRevoked(GanglionError):
    """Raised in an `async with coord.lease(...)` block when the server revokes the
    lease at its maximum hold time: the work under it must stop (its fencing token no
    longer passes)."""

    code = "FAILED_PRECONDITION"


@dataclass
class Lease:
    """A granted lease: its units, fencing token and environment (for GPUs,
    `CUDA_VISIBLE_DEVICES`)."""

    id: int
    pool: str
    holder: str
    units: list[str]
    fencing_token: int
    env: dict[str, str] = field(default_factory=dict)
    #: Set when the server warns that the lease will be revoked, or revokes it.
    warning: str | None = None


class LeaseContext:
    """`async with coord.lease(...) as lease:` — acquired on entry, released on exit,
    also on an exception or a cancellation. The server holds the lease while the stream
    is open and renews it; `on_warning` is called with the seconds left before a
    revocation at the maximum hold time, and a revocation interrupts the block with
    `LeaseRevoked`."""

    def __init__(
        self,
        coordinator: Coordinator,
        request: pb.AcquireRequest,
        on_warning: Callable[[Lease, float], None] | None,
    ) -> None:
        self._coordinator = coordinator
        self._request = request
        self._on_warning = on_warning
        self._call: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._holder: asyncio.Task[Any] | None = None
        self._revoked = False
        self.lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        c = self._coordinator
        self._call = c._stub.Acquire(self._request, metadata=c._connection.metadata)
        try:
            update = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        except BaseException:
            self._call.cancel()
            raise
        if update is EOF or not update.HasField("granted"):
            self._call.cancel()
            raise GanglionError(f"the lease stream ended before a grant: {update}")
        g = update.granted
        env = {"CUDA_VISIBLE_DEVICES": g.cuda_visible_devices} if g.cuda_visible_devices else {}
        self.lease = Lease(g.id, g.pool, g.holder, list(g.units), g.fencing_token, env)
        self._holder = asyncio.current_task()
        self._watch = asyncio.create_task(self._follow(self.lease))
        return self.lease

    async def _follow(self, lease: Lease) -> None:
        try:
            # read(), as __aenter__ did: grpcio forbids mixing it with iteration.
            while (update := await self._call.read()) is not EOF:
                if update.HasField("warning"):
                    left = update.warning.revoked_in_ms / 1000
                    lease.warning = f"revoked in {left:.1f} s"
                    if self._on_warning:
                        self._on_warning(lease, left)
                    else:
                        log.warning("lease %s of %s will be revoked in %.1f s", lease.id, lease.pool, left)
                elif update.HasField("revoked"):
                    lease.warning = "revoked"
                    log.warning("lease %s of %s revoked at its maximum hold time", lease.id, lease.pool)
                    if self._holder is not None and not self._revoked:
                        self._revoked = True
                        self._holder.cancel()
                elif update.HasField("released"):
                    return
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, c = self.lease, self._coordinator
        if lease is None:
            return
        try:
            await asyncio.shield(
                c._stub.Release(pb.ReleaseRequest(lease_id=lease.id), metadata=c._connection.metadata)
            )
        except grpc.aio.AioRpcError as e:
            # Already gone (reclaimed, revoked): ending the stream is all that is left.
            log.debug("releasing lease %s: %s", lease.id, e.details())
        finally:
            if self._watch:
                self._watch.cancel()
            self._call.cancel()
        if self._revoked and exc_type is asyncio.CancelledError:
            # Our cancellation, not the caller's: it becomes the revocation.
            uncancel = getattr(self._holder, "uncancel", None)
            if uncancel is not None:
                uncancel()
            raise LeaseRevoked(f"lease {lease.id} of pool {lease.pool} was revoked at its maximum hold time")


@dataclass(frozen=True)
class Permit:
    quota: str
    component: str
    used: int
    remaining: int


@dataclass(frozen=True)
class Response:
    """A queued request's outcome."""

    ready: bool
    body: bytes | None = None
    error: str | None = None
    cached: bool = False
    degraded: bool = False

    def json(self) -> Any:
        return json.loads(self.body) if self.body is not None else None


class TakenRequest:
    """A request a worker took: answer it with `complete` or `fail`."""

    def __init__(self, queue: Queue, wire: pb.TakeResponse) -> None:
        self._queue = queue
        self.id = wire.request_id
        self.body = bytes(wire.request)
        self.priority = wire.priority
        self.component = wire.component

    def json(self) -> Any:
        return json.loads(self.body)

    async def complete(self, response: Any) -> None:
        body, _, _ = encode_payload(response)
        await self._queue._complete(pb.CompleteRequest(queue=self._queue.name, request_id=self.id, response=body))

    async def fail(self, error: str) -> None:
        await self._queue._complete(pb.CompleteRequest(queue=self._queue.name, request_id=self.id, error=error))


class Queue:
    """A request queue paced by its quota."""

    def __init__(self, coordinator: Coordinator, name: str) -> None:
        self._c = coordinator
        self.name = name

    async def submit(
        self,
        request: Any,
        *,
        priority: int = 0,
        component: str = "",
        idempotency_key: str = "",
        fallback: Any = None,
    ) -> int:
        """Queues a request (JSON values as JSON, bytes as they are); returns its id."""
        body, _, _ = encode_payload(request)
        wire = pb.SubmitRequest(
            queue=self.name, request=body, priority=priority, component=component, idempotency_key=idempotency_key
        )
        if fallback is not None:
            wire.fallback = encode_payload(fallback)[0]
        response = await self._c._call(self._c._stub.Submit, wire)
        return int(response.request_id)

    async def result(self, request_id: int, *, wait: float | None = None) -> Response:
        """The outcome of `request_id`, waiting up to `wait` seconds; `ready` is False if
        it is still waiting."""
        r = await self._c._call(
            self._c._stub.GetResponse, pb.GetResponseRequest(queue=self.name, request_id=request_id, wait_ms=_ms(wait))
        )
        which = r.WhichOneof("result")
        return Response(
            ready=r.ready,
            body=bytes(r.response) if which == "response" else None,
            error=r.error if which == "error" else None,
            cached=r.cached,
            degraded=r.degraded,
        )

    async def take_one(self, *, worker: str = "", wait: float | None = None) -> TakenRequest | None:
        """The next request for this worker, waiting up to `wait` seconds; None if none."""
        r = await self._c._call(self._c._stub.Take, pb.TakeRequest(queue=self.name, worker=worker, wait_ms=_ms(wait)))
        return TakenRequest(self, r) if r.taken else None

    async def take(self, *, worker: str = "", poll: float = 30.0) -> AsyncIterator[TakenRequest]:
        """Requests as the quota lets them through, until cancelled."""
        while True:
            taken = await self.take_one(worker=worker, wait=poll)
            if taken is not None:
                yield taken

    async def _complete(self, request: pb.CompleteRequest) -> None:
        await self._c._call(self._c._stub.Complete, request)


class Coordinator:
    """A connection to a Ganglion server's coordinator."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._stub = coordinator_pb2_grpc.CoordinatorStub(connection.channel)  # type: ignore[no-untyped-call]

    @classmethod
    async def connect(
        cls, server: str = "127.0.0.1:50051", *, token: str | None = None, tls: Tls | None = None, timeout: float = 5.0
    ) -> Coordinator:
        return cls(await Connection.ready(server, token, tls, timeout))

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Coordinator:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._connection.metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    def lease(
        self,
        pool: str,
        *,
        holder: str = "",
        priority: int = 0,
        amount: int = 1,
        wait: float | None = None,
        max_hold: float | None = None,
        on_warning: Callable[[Lease, float], None] | None = None,
    ) -> LeaseContext:
        """A lease on `pool`, waiting up to `wait` seconds in line (None: only if free)."""
        request = pb.AcquireRequest(
            pool=pool, holder=holder, priority=priority, amount=amount, wait_ms=_ms(wait), max_hold_ms=_ms(max_hold)
        )
        return LeaseContext(self, request, on_warning)

    async def check_fence(self, pool: str, fencing_token: int) -> bool:
        r = await self._call(self._stub.CheckFence, pb.CheckFenceRequest(pool=pool, fencing_token=fencing_token))
        return bool(r.valid)

    async def permit(self, quota: str, *, component: str = "", priority: int = 0, wait: float = 30.0) -> Permit:
        """A call from `quota`, waiting up to `wait` seconds (ResourceExhausted after)."""
        r = await self._call(
            self._stub.AcquirePermit, pb.PermitRequest(quota=quota, component=component, priority=priority, wait_ms=_ms(wait))
        )
        return Permit(r.quota, r.component, r.used, r.remaining)

    async def try_permit(self, quota: str, *, component: str = "") -> Permit | None:
        """A call from `quota` if one is free now, else None."""
        try:
            r = await self._call(self._stub.TryAcquirePermit, pb.PermitRequest(quota=quota, component=component))
        except ResourceExhausted:
            return None
        return Permit(r.quota, r.component, r.used, r.remaining)

    def queue(self, name: str) -> Queue:
        return Queue(self, name)
