"""The event bus over gRPC, for asyncio.

```python
bus = await Bus.connect("127.0.0.1:50051")
await bus.publish("game.state.update", {"game_id": "abc123", "round": 3})

@bus.subscribe("game.state.*", durable="analytics")
async def on_state(event: Event) -> None:   # returning acks; raising nacks (redelivered with backoff)
    ...

await bus.run()   # until cancelled; or `async for delivery in bus.subscription(...)`
```
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

#: What a stream's `read()` returns at its end (not in grpcio's type stubs).
EOF: Any = getattr(grpc.aio, "EOF")

from ganglion._connection import Connection, Tls
from ganglion._events import Event, correlation_id, to_wire, traceparent
from ganglion.errors import GanglionError, Unavailable, from_rpc_error, from_wire
from ganglion.v1 import bus_pb2, bus_pb2_grpc


log = logging.getLogger("ganglion.bus")


@dataclass(frozen=True)
class PublishAck:
    """Where an event went: its log sequence (0 for ephemeral topics), its id, and whether
    it repeated an idempotency key already published."""

    seq: int
    id: str
    duplicate: bool


class Retry(Exception):
    """Raise in a handler to have the delivery redelivered after `delay` seconds (default:
    the subscription's backoff)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry")
        self.delay = delay


class Reject(Exception):
    """Raise in a handler to dead-letter the delivery at once (no more attempts)."""


class Delivery:
    """One event (or one batch window) handed to a subscriber, to settle once."""

    def __init__(self, wire: bus_pb2.Delivery, settle: Callable[[bus_pb2.SubscribeRequest], None]) -> None:
        self.events = [Event.from_wire(d.event) for d in wire.events]
        self.attempt = max((d.attempt for d in wire.events), default=1)
        self.counts = {c.key: c.count for c in wire.counts}
        self._seqs = list(wire.seqs)
        self._settle = settle
        self.settled = False

    @property
    def event(self) -> Event:
        """The delivered event (the last one of a batch window)."""
        if not self.events:
            raise ValueError("this delivery is a count window: it carries `counts`, not events")
        return self.events[-1]

    def _once(self, request: bus_pb2.SubscribeRequest) -> None:
        if self.settled:
            raise RuntimeError("this delivery is already settled")
        self.settled = True
        self._settle(request)

    def ack(self) -> None:
        self._once(bus_pb2.SubscribeRequest(ack=bus_pb2.Ack(seqs=self._seqs)))

    def nack(self, delay: float | None = None, error: str = "") -> None:
        """Redeliver, after `delay` seconds or the subscription's backoff."""
        nack = bus_pb2.Nack(seqs=self._seqs, error=error)
        if delay is not None:
            nack.delay_ms = int(delay * 1000)
        self._once(bus_pb2.SubscribeRequest(nack=nack))

    def term(self, reason: str = "") -> None:
        """Dead-letter now."""
        self._once(bus_pb2.SubscribeRequest(term=bus_pb2.Term(seqs=self._seqs, reason=reason)))


@dataclass
class Backoff:
    """Redelivery delays: `initial` seconds, times `multiplier` per attempt, at most `max`."""

    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 60.0


@dataclass(frozen=True)
class Window:
    """A batch window: events collected for `ms` milliseconds (or until `max_events`) and
    delivered together. `keep_last="game_id"` keeps only the newest event per value of
    that header (`""`: per topic); `count=` counts events per key instead of keeping
    them. A handler of a windowed subscription receives a list of events."""

    ms: int = 100
    keep_last: str | None = None
    count: str | None = None
    max_events: int = 0

    def to_wire(self) -> bus_pb2.BatchOptions:
        aggregation, key = bus_pb2.AGGREGATION_NONE, ""
        if self.keep_last is not None:
            aggregation, key = bus_pb2.AGGREGATION_KEEP_LAST, self.keep_last
        elif self.count is not None:
            aggregation, key = bus_pb2.AGGREGATION_COUNT, self.count
        return bus_pb2.BatchOptions(
            window_ms=self.ms, max_events=self.max_events, key_header=key, aggregation=aggregation
        )


@dataclass(frozen=True)
class DeadLetter:
    """An event a subscription gave up on: on its dead-letter topic (`event`, with the
    original payload), with where it came from and why."""

    event: Event
    origin_topic: str
    origin_seq: int
    subscription: str
    attempts: int
    last_error: str

    @classmethod
    def from_wire(cls, d: bus_pb2.DeadLetter) -> DeadLetter:
        return cls(Event.from_wire(d.event), d.origin_topic, d.origin_seq, d.subscription, d.attempts, d.last_error)


class Subscription:
    """A live subscription: iterate it for deliveries; settle each one."""

    def __init__(self, stub: bus_pb2_grpc.EventBusStub, metadata: tuple[tuple[str, str], ...], open: bus_pb2.OpenSubscription) -> None:
        self._outgoing: asyncio.Queue[bus_pb2.SubscribeRequest | None] = asyncio.Queue()
        self._outgoing.put_nowait(bus_pb2.SubscribeRequest(open=open))
        self._call = stub.Subscribe(self._requests(), metadata=metadata)
        self._pending: list[Delivery] = []
        self.name = ""
        self.closed_reason: str | None = None

    async def _requests(self) -> AsyncIterator[bus_pb2.SubscribeRequest]:
        while True:
            request = await self._outgoing.get()
            if request is None:
                return
            yield request

    async def opened(self) -> Subscription:
        """Waits for the server to confirm the subscription (raising its refusal)."""
        if self.name:
            return self
        response = await self._next_response()
        if response is None or not response.HasField("subscribed"):
            raise GanglionError(f"the server did not confirm the subscription: {response}")
        self.name = response.subscribed.name
        return self

    async def _next_response(self) -> bus_pb2.SubscribeResponse | None:
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        except asyncio.CancelledError:
            # grpcio cancels the whole call when any task waiting in a read is cancelled;
            # for another reader (closing the subscription, say) the stream has ended.
            if self._call.cancelled() and not _being_cancelled():
                return None
            raise
        if response is EOF:
            return None
        assert isinstance(response, bus_pb2.SubscribeResponse)
        return response

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        await self.opened()
        while not self._pending:
            response = await self._next_response()
            if response is None:
                raise StopAsyncIteration
            if response.HasField("closed"):
                self.closed_reason = response.closed.reason
                raise StopAsyncIteration
            if response.HasField("deliveries"):
                self._pending.extend(
                    Delivery(d, self._outgoing.put_nowait) for d in response.deliveries.deliveries
                )
        return self._pending.pop(0)

    async def close(self, grace: float = 2.0) -> None:
        """Ends the subscription: the acks already given are sent first (within `grace`
        seconds); unsettled deliveries are redelivered later."""
        self._outgoing.put_nowait(None)
        if self._call.done():
            # Ended already: by the server, or cancelled (grpcio cancels the whole call
            # when a task waiting in a read is cancelled).
            return
        try:
            # Half-closed, the server ends the stream once it has read what was sent.
            await asyncio.wait_for(self._drain(), grace)
        except (asyncio.TimeoutError, grpc.aio.AioRpcError, GanglionError):
            pass
        finally:
            self._call.cancel()

    async def _drain(self) -> None:
        while await self._next_response() is not None:
            pass


Handler = (
    Callable[[Event], Awaitable[Any]]
    | Callable[[list[Event]], Awaitable[Any]]
    | Callable[[dict[str, int]], Awaitable[Any]]
)


class Bus:
    """A connection to a Ganglion server's event bus."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._stub = bus_pb2_grpc.EventBusStub(connection.channel)  # type: ignore[no-untyped-call]
        self._handlers: list[tuple[Handler, dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._publisher: _Publisher | None = None
        #: Handler tasks inside a handler call now, and whether the bus is closing.
        self._busy: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        #: Handlers whose subscription the server refused for good when they subscribed
        #: again (a permission or the durable's pattern changed), with the refusal.
        self.refused: dict[Handler, GanglionError] = {}

    @classmethod
    async def connect(
        cls,
        server: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: Tls | None = None,
        timeout: float = 5.0,
    ) -> Bus:
        """Connects (within `timeout` seconds) to a `ganglion serve` gRPC address. The
        channel reconnects by itself after a server restart."""
        return cls(await Connection.ready(server, token, tls, timeout))

    async def close(self, drain: float = 5.0) -> None:
        """Stops the handlers gracefully: one in the middle of an event finishes it (and
        its ack is sent) within `drain` seconds; idle ones stop at once. Then closes the
        connection."""
        self._stopping.set()
        for task in self._tasks - self._busy:
            task.cancel()
        busy = self._tasks & self._busy
        if busy:
            await asyncio.wait(busy, timeout=drain)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.close()
        await self._connection.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        type: str = "",
        source: str = "",
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
    ) -> PublishAck:
        """Publishes one event: a dict, list or other JSON value as JSON, bytes as they
        are, a protobuf message encoded (its full name as the type). Returns once it is
        in the log (durable topics) or handed to subscribers (ephemeral)."""
        event = to_wire(
            topic,
            payload,
            type=type,
            source=source,
            headers=headers,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            content_type=content_type,
        )
        return (await self._publish([event]))[0]

    async def publish_batch(self, events: list[bus_pb2.Event]) -> list[PublishAck]:
        """Publishes events built with `ganglion.event(...)` in one call: all or none."""
        return await self._publish(events)

    async def _publish(self, events: list[bus_pb2.Event]) -> list[PublishAck]:
        """Publishes through the coalescing publisher (see `_Publisher`)."""
        if self._publisher is None:
            self._publisher = _Publisher(self)
        return await self._publisher.publish(events)

    async def _publish_unary(self, events: list[bus_pb2.Event], *, reconnect: float | None = None) -> list[PublishAck]:
        """One Publish call; with `reconnect`, waits up to that many seconds for a
        connection that is down to come back."""
        try:
            response = await self._stub.Publish(
                bus_pb2.PublishRequest(events=events),
                metadata=self._connection.metadata,
                wait_for_ready=reconnect is not None,
                timeout=reconnect,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        if response.HasField("error"):
            err = response.error
            raise from_wire(err.code, err.message, err.field, err.retry_after_ms)
        return [PublishAck(a.seq, a.id, a.duplicate) for a in response.acks]

    async def replay(
        self,
        pattern: str,
        *,
        from_seq: int | None = None,
        since: float | None = None,
        limit: int = 0,
    ) -> list[Event]:
        """The logged events matching `pattern`, oldest first: from sequence `from_seq`,
        or logged at or after `since` (seconds since the epoch), or from the start; at
        most `limit` (0: the server's 1,000)."""
        if from_seq is not None and since is not None:
            raise ValueError("give from_seq or since, not both")
        request = bus_pb2.ReplayRequest(
            pattern=pattern,
            from_seq=from_seq or 0,
            since_ms=int(since * 1000) if since is not None else 0,
            limit=limit,
        )
        events: list[Event] = []
        try:
            async for page in self._stub.Replay(request, metadata=self._connection.metadata):
                events.extend(Event.from_wire(e) for e in page.events)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return events

    async def dead_letters(self, subscription: str, *, limit: int = 0) -> list[DeadLetter]:
        """The dead letters of `subscription` not yet redriven, oldest first (at most
        `limit`; 0: the server's 100)."""
        request = bus_pb2.ListDeadLettersRequest(subscription=subscription, limit=limit)
        try:
            response = await self._stub.ListDeadLetters(request, metadata=self._connection.metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return [DeadLetter.from_wire(d) for d in response.dead_letters]

    async def redrive(self, subscription: str, seqs: list[int] | None = None) -> int:
        """Publishes `subscription`'s dead letters (those at `seqs` on the dead-letter
        topic, or all of them) again on their original topics; returns how many."""
        request = bus_pb2.RedriveDeadLettersRequest(subscription=subscription, seqs=seqs or [])
        try:
            response = await self._stub.RedriveDeadLetters(request, metadata=self._connection.metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return int(response.redriven)

    def subscription(
        self,
        pattern: str,
        *,
        durable: str | None = None,
        queue: str | None = None,
        max_in_flight: int = 0,
        max_deliveries: int = 0,
        ack_deadline: float | None = None,
        backoff: Backoff | None = None,
        dead_letter_topic: str | None = None,
        from_seq: int | None = None,
        types: list[str] | None = None,
        headers: dict[str, str] | None = None,
        batch: Window | None = None,
        prioritized: bool = False,
    ) -> Subscription:
        """A subscription to iterate: `async for delivery in bus.subscription("game.>")`.
        Zero or None means the server's default for each option."""
        options = bus_pb2.SubscribeOptions(
            durable=durable or "",
            queue_group=queue or "",
            max_in_flight=max_in_flight,
            max_deliveries=max_deliveries,
            ack_deadline_ms=int(ack_deadline * 1000) if ack_deadline else 0,
            dead_letter_topic=dead_letter_topic or "",
        )
        if backoff is not None:
            options.backoff.CopyFrom(
                bus_pb2.Backoff(
                    initial_ms=int(backoff.initial * 1000),
                    multiplier=backoff.multiplier,
                    max_ms=int(backoff.max * 1000),
                )
            )
        if from_seq is not None:
            options.start.CopyFrom(bus_pb2.StartPosition(seq=from_seq))
        if types:
            options.filter.types.extend(types)
        if headers:
            options.filter.headers.update(headers)
        if batch is not None:
            options.batch.CopyFrom(batch.to_wire())
        options.prioritized = prioritized
        open = bus_pb2.OpenSubscription(pattern=pattern, options=options)
        return Subscription(self._stub, self._connection.metadata, open)

    def subscribe(self, pattern: str, **options: Any) -> Callable[[Handler], Handler]:
        """Registers an async handler for `run()`: returning acks the event, raising
        `Retry` or any other exception nacks it (redelivered with backoff, dead-lettered
        after `max_deliveries`), raising `Reject` dead-letters it at once. The options
        are `subscription`'s; with `batch=Window(...)` the handler receives a list of
        events, or with `Window(count=...)` a dict of counts per key."""

        def register(handler: Handler) -> Handler:
            self._handlers.append((handler, {"pattern": pattern, **options}))
            return handler

        return register

    async def run(self) -> None:
        """Runs every registered handler until cancelled, subscribing again after a
        server restart."""
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    async def start(self) -> None:
        """Like `run()`, in the background: returns once every subscription is open.
        Handlers registered since the last start are the ones started."""
        handlers, self._handlers = self._handlers, []
        # Opened here, so that a refusal (a bad option, a permission) raises now.
        opened = [await self.subscription(**options).opened() for _, options in handlers]
        for (handler, options), subscription in zip(handlers, opened):
            task = asyncio.create_task(self._keep_serving(handler, options, subscription))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _keep_serving(self, handler: Handler, options: dict[str, Any], subscription: Subscription) -> None:
        """Serves `handler` on `subscription` (opened with `options`), subscribing again
        (after a backoff from 0.1 s doubling to 5 s) whenever the server ends it or
        cannot be reached: a server restart, a crash, a cut-off. A durable resumes where
        its acks left it."""
        batch = options.get("batch")
        delay = 0.1
        while True:
            try:
                await subscription.opened()
                delay = 0.1
                await self._serve(handler, subscription, batch, self._busy, self._stopping)
                reason = subscription.closed_reason or "the stream ended"
            except Unavailable as error:
                reason = str(error)
            except GanglionError as error:
                # Refused for good (the pattern or a permission changed): say so, stop.
                self.refused[handler] = error
                log.error("subscription to %s refused: %s; its handler %s stops", options["pattern"], error, getattr(handler, "__name__", handler))
                return
            if self._stopping.is_set():
                return
            log.info("subscription to %s ended (%s); subscribing again in %.1f s", options["pattern"], reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            subscription = self.subscription(**options)

    @staticmethod
    async def _serve(
        handler: Handler,
        subscription: Subscription,
        batch: Window | None = None,
        busy: set[asyncio.Task[Any]] | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        me = asyncio.current_task()
        try:
            async for delivery in subscription:
                if busy is not None and me is not None:
                    busy.add(me)
                last = delivery.events[-1] if delivery.events else None
                correlation = correlation_id.set((last.correlation_id or last.id or None) if last else None)
                trace = traceparent.set(last.headers.get("traceparent") if last else None)
                argument: Any = delivery.event if batch is None else delivery.events
                if batch is not None and batch.count is not None:
                    argument = delivery.counts
                try:
                    await handler(argument)
                except Retry as retry:
                    delivery.nack(retry.delay, str(retry))
                except Reject as reject:
                    delivery.term(str(reject))
                except Exception as error:  # a handler's failure is the event's, not ours
                    delivery.nack(error=f"{type(error).__name__}: {error}")
                else:
                    delivery.ack()
                finally:
                    correlation_id.reset(correlation)
                    traceparent.reset(trace)
                    if busy is not None and me is not None:
                        busy.discard(me)
                if stopping is not None and stopping.is_set():
                    return
        finally:
            await subscription.close()


_Job = tuple[list[bus_pb2.Event], "asyncio.Future[list[PublishAck]]"]


class _Publisher:
    """Coalesces publishes from many coroutines into pipelined frames on one
    `PublishStream`, as the Rust client does: whatever callers have queued when a frame
    leaves goes in it (up to `MAX_FRAME_EVENTS` events or `MAX_FRAME_BYTES`), with up to
    `PIPELINE` frames in flight. A frame is refused whole (the bus validates a batch
    before appending any of it), so a refused frame of several callers is resent caller
    by caller and one caller's bad event fails only that caller. When the stream breaks
    (a server restart), what was in flight fails with `Unavailable` and the next publish
    opens a new stream."""

    #: How long a publish waits for a broken connection to come back.
    RECONNECT = 10.0
    MAX_FRAME_EVENTS = 256
    MAX_FRAME_BYTES = 4 * 1024 * 1024
    PIPELINE = 32

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, events: list[bus_pb2.Event]) -> list[PublishAck]:
        future: asyncio.Future[list[PublishAck]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        outgoing: asyncio.Queue[bus_pb2.PublishRequest | None] = asyncio.Queue()
        in_flight: dict[int, list[_Job]] = {}
        slots = asyncio.Semaphore(self.PIPELINE)

        async def requests() -> Any:
            while (request := await outgoing.get()) is not None:
                yield request

        call = self._bus._stub.PublishStream(requests(), metadata=self._bus._connection.metadata)
        reader = asyncio.create_task(self._read(call, in_flight, slots))
        try:
            for request_id in itertools.count(1):
                await slots.acquire()
                jobs = [await self._queue.get()]
                count = len(jobs[0][0])
                size = sum(len(e.payload) for e in jobs[0][0])
                while count < self.MAX_FRAME_EVENTS and size < self.MAX_FRAME_BYTES and not self._queue.empty():
                    job = self._queue.get_nowait()
                    jobs.append(job)
                    count += len(job[0])
                    size += sum(len(e.payload) for e in job[0])
                if reader.done():
                    # The stream ended (a server restart, say): these go alone, waiting
                    # for the connection to come back; the next publish opens a new
                    # stream.
                    for events, future in jobs:
                        asyncio.create_task(self._alone(events, future))
                    return
                in_flight[request_id] = jobs
                outgoing.put_nowait(
                    bus_pb2.PublishRequest(events=[e for job in jobs for e in job[0]], request_id=request_id)
                )
        finally:
            outgoing.put_nowait(None)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for jobs in in_flight.values():
                self._fail(jobs, reader)

    @staticmethod
    def _fail(jobs: list[_Job], reader: asyncio.Task[None]) -> None:
        error: BaseException = GanglionError("the publish stream ended")
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            error = reader.exception() or error
        for _, future in jobs:
            if not future.done():
                future.set_exception(error)

    async def _read(self, call: Any, in_flight: dict[int, list[_Job]], slots: asyncio.Semaphore) -> None:
        answered = False
        try:
            async for response in call:
                answered = True
                jobs = in_flight.pop(response.request_id, [])
                slots.release()
                if not response.HasField("error"):
                    acks = [PublishAck(a.seq, a.id, a.duplicate) for a in response.acks]
                    for events, future in jobs:
                        mine, acks = acks[: len(events)], acks[len(events) :]
                        if not future.done():
                            future.set_result(mine)
                elif len(jobs) == 1:
                    err = response.error
                    if not jobs[0][1].done():
                        jobs[0][1].set_exception(from_wire(err.code, err.message, err.field, err.retry_after_ms))
                else:
                    for events, future in jobs:
                        asyncio.create_task(self._alone(events, future))
        except grpc.aio.AioRpcError as e:
            # What was sent on this stream is settled now (callers must not wait for the
            # next publish to find out). A stream refused before it answered anything
            # (no credentials, say: the server answers before reading the request, and
            # grpcio sometimes reports that race as INTERNAL) sends each caller's events
            # alone, to get each its own answer; otherwise they fail with the stream's
            # error, having maybe been published.
            error = from_rpc_error(e)
            for jobs in in_flight.values():
                for events, future in jobs:
                    if future.done():
                        continue
                    if answered:
                        future.set_exception(error)
                    else:
                        asyncio.create_task(self._alone(events, future))
            in_flight.clear()
            raise error from None

    async def _alone(self, events: list[bus_pb2.Event], future: asyncio.Future[list[PublishAck]]) -> None:
        try:
            future.set_result(await self._bus._publish_unary(events, reconnect=self.RECONNECT))
        except GanglionError as error:
            future.set_exception(error)


def _being_cancelled() -> bool:
    """Whether the current task has been asked to stop (unknown before Python 3.11:
    then yes, so a cancellation is never swallowed)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0


def event(topic: str, payload: Any, **fields: Any) -> bus_pb2.Event:
    """An event for `Bus.publish_batch`, with the same fields as `Bus.publish`."""
    return to_wire(topic, payload, **fields)
