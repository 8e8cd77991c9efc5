"""Test doubles with the SDK's API, in memory and on virtual time: `TestBus` and
`TestCoordinator`, sharing a `VirtualClock` you advance. Nothing sleeps.

```python
bus = TestBus()
await bus.publish("test.event", {"n": 1})
assert len(bus.published_events) == 1

@bus.subscribe("jobs.>", durable="worker", max_deliveries=3)
async def handle(event): raise RuntimeError("fails")
await bus.start()
await bus.publish("jobs.x", {})
await bus.clock.advance(10)          # redeliveries with backoff, then the dead letter
assert bus.dead_letters("worker")[0].data == {}
```

What matches the server: topic and pattern grammar (`*` one token, `>` the rest),
refusals naming the field, idempotency keys, queue groups (one member per event),
at-least-once delivery with ack / nack / term, redelivery after the backoff (100 ms
doubling to 60 s by default, no jitter here), dead letters on `dlq.<name>` after
`max_deliveries` (5) with the same `dlq_*` headers. Not modelled: ack deadlines, batch
windows, replay, retention, byte budgets, and events kept for a durable while nobody is
subscribed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ganglion._events import Event, encode_payload, to_wire
from ganglion.bus import Backoff, Bus, Delivery, PublishAck
from ganglion.coordinator import Lease, Response
from ganglion.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from ganglion.v1 import bus_pb2


class VirtualClock:
    """Seconds that pass only when `advance` says so; timers fire in order as it does."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def call_at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._order), action))

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        self.call_at(self.now + seconds, _wake(woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Moves time on by `seconds`, firing each timer due on the way, and lets the
        tasks they wake run before moving on."""
        until = self.now + seconds
        await _settle()
        while self._timers and self._timers[0][0] <= until:
            when, _, action = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            action()
            await _settle()
        self.now = until
        await _settle()


def _wake(future: asyncio.Future[None]) -> Callable[[], None]:
    """A timer action that resolves `future` unless something already did."""

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    return wake


async def _settle() -> None:
    """Lets every ready task run until nothing is left to do now."""
    for _ in range(50):
        await asyncio.sleep(0)


def _check_topic(topic: str, field: str, wildcards: bool) -> None:
    problem = None
    if not topic:
        problem = "is empty"
    elif len(topic) > 256:
        problem = f"is {len(topic)} bytes; at most 256"
    elif any(c.isspace() or not c.isprintable() for c in topic):
        problem = "has whitespace or a control character"
    elif "" in topic.split("."):
        problem = "has an empty token"
    else:
        tokens = topic.split(".")
        for i, token in enumerate(tokens):
            wild = "*" in token or ">" in token
            if wild and not wildcards:
                problem = f"token {i} is a wildcard; topics have none"
            elif wild and token not in ("*", ">"):
                problem = f"token {i} mixes a wildcard with other characters"
            elif token == ">" and i != len(tokens) - 1:
                problem = "`>` must be the last token"
    if problem:
        raise InvalidArgument(f"{topic!r} {problem}", field=field)


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches `pattern` (`*` one token, `>` one or more at the end)."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


@dataclass
class _Member:
    queue: asyncio.Queue[Delivery | None] = field(default_factory=asyncio.Queue)


@dataclass
class _Subscription:
    name: str
    pattern: str
    max_deliveries: int
    backoff: Backoff
    dead_letter_topic: str
    members: list[_Member] = field(default_factory=list)
    turn: int = 0


class TestSubscription:
    """A subscription to iterate, as `Bus.subscription` returns."""

    def __init__(self, bus: TestBus, state: _Subscription, member: _Member) -> None:
        self._bus, self._state, self._member = bus, state, member
        self.name = state.name
        self.closed_reason: str | None = None

    async def opened(self) -> TestSubscription:
        return self

    def __aiter__(self) -> TestSubscription:
        return self

    async def __anext__(self) -> Delivery:
        delivery = await self._member.queue.get()
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def close(self) -> None:
        if self._member in self._state.members:
            self._state.members.remove(self._member)
        self._member.queue.put_nowait(None)


class TestBus:
    """An in-memory bus with `Bus`'s API. `published_events` holds what was published."""

    __test__ = False  # not a pytest test class

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.published_events: list[Event] = []
        self._subscriptions: dict[str, _Subscription] = {}
        self._keys: dict[str, PublishAck] = {}
        self._seq = 0
        self._anonymous = itertools.count(1)
        self._handlers: list[tuple[Callable[[Event], Awaitable[Any]], dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, payload: Any, **fields: Any) -> PublishAck:
        return (await self.publish_batch([to_wire(topic, payload, **fields)]))[0]

    async def publish_batch(self, events: list[bus_pb2.Event]) -> list[PublishAck]:
        for i, e in enumerate(events):
            _check_topic(e.topic, f"events[{i}].topic" if len(events) > 1 else "topic", wildcards=False)
        acks = [self._append(e) for e in events]
        await _settle()
        return acks

    def _append(self, wire: bus_pb2.Event) -> PublishAck:
        key = wire.headers.get("idempotency_key")
        if key and key in self._keys:
            first = self._keys[key]
            return PublishAck(first.seq, first.id, True)
        self._seq += 1
        wire.seq, wire.id = self._seq, wire.id or str(uuid.uuid4())
        wire.timestamp_ms = int(self.clock.now * 1000)
        event = Event.from_wire(wire)
        self.published_events.append(event)
        ack = PublishAck(wire.seq, wire.id, False)
        if key:
            self._keys[key] = ack
        for state in list(self._subscriptions.values()):
            if matches(state.pattern, event.topic):
                self._deliver(state, wire, attempt=1)
        return ack

    def _deliver(self, state: _Subscription, wire: bus_pb2.Event, attempt: int) -> None:
        if not state.members:
            return  # nobody connected: unlike the server, a TestBus keeps nothing for later
        member = state.members[state.turn % len(state.members)]
        state.turn += 1
        delivery_wire = bus_pb2.Delivery(
            events=[bus_pb2.DeliveredEvent(event=wire, attempt=attempt)], seqs=[wire.seq]
        )

        def settle(request: bus_pb2.SubscribeRequest) -> None:
            which = request.WhichOneof("request")
            if which == "nack" and attempt < state.max_deliveries:
                nack = request.nack
                delay = nack.delay_ms / 1000 if nack.HasField("delay_ms") else self._backoff(state.backoff, attempt)
                self.clock.call_at(self.clock.now + delay, lambda: self._deliver(state, wire, attempt + 1))
            elif which in ("nack", "term"):
                error = request.nack.error if which == "nack" else request.term.reason
                self._dead_letter(state, wire, attempt, error)

        member.queue.put_nowait(Delivery(delivery_wire, settle))

    @staticmethod
    def _backoff(backoff: Backoff, attempt: int) -> float:
        return float(min(backoff.initial * backoff.multiplier ** (attempt - 1), backoff.max))

    def _dead_letter(self, state: _Subscription, wire: bus_pb2.Event, attempts: int, error: str) -> None:
        letter = bus_pb2.Event()
        letter.CopyFrom(wire)
        letter.topic, letter.id, letter.seq = state.dead_letter_topic, "", 0
        letter.headers.update(
            {
                "dlq_origin_topic": wire.topic,
                "dlq_origin_seq": str(wire.seq),
                "dlq_subscription": state.name,
                "dlq_attempts": str(attempts),
                "dlq_last_error": error,
            }
        )
        self._append(letter)

    def dead_letters(self, subscription: str) -> list[Event]:
        """The dead letters of `subscription`, oldest first."""
        return [e for e in self.published_events if e.headers.get("dlq_subscription") == subscription]

    def subscription(
        self,
        pattern: str,
        *,
        durable: str | None = None,
        queue: str | None = None,
        max_deliveries: int = 0,
        backoff: Backoff | None = None,
        dead_letter_topic: str | None = None,
        **_: Any,
    ) -> TestSubscription:
        _check_topic(pattern, "open.pattern", wildcards=True)
        name = durable or (f"q:{queue}:{pattern}" if queue else f"sub-{next(self._anonymous)}")
        state = self._subscriptions.get(name)
        if state is None:
            state = _Subscription(
                name=name,
                pattern=pattern,
                max_deliveries=max_deliveries or 5,
                backoff=backoff or Backoff(initial=0.1, multiplier=2.0, max=60.0),
                dead_letter_topic=dead_letter_topic or f"dlq.{durable or queue or name}",
            )
            self._subscriptions[name] = state
        elif state.pattern != pattern:
            raise InvalidArgument(f"durable {name!r} exists with another pattern", field="pattern")
        member = _Member()
        state.members.append(member)
        return TestSubscription(self, state, member)

    def subscribe(self, pattern: str, **options: Any) -> Callable[[Callable[[Event], Awaitable[Any]]], Callable[[Event], Awaitable[Any]]]:
        def register(handler: Callable[[Event], Awaitable[Any]]) -> Callable[[Event], Awaitable[Any]]:
            self._handlers.append((handler, {"pattern": pattern, **options}))
            return handler

        return register

    async def start(self) -> None:
        for handler, options in self._handlers:
            subscription = self.subscription(**options)
            task = asyncio.create_task(Bus._serve(handler, subscription))  # type: ignore[arg-type]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._handlers.clear()
        await _settle()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TestBus:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class TestCoordinator:
    """Leases on counted pools and exact quotas (`limit` per `window` seconds of virtual
    time), with `Coordinator`'s API."""

    __test__ = False

    def __init__(
        self,
        clock: VirtualClock | None = None,
        *,
        pools: dict[str, int] | None = None,
        quotas: dict[str, tuple[int, float]] | None = None,
        queues: dict[str, str] | None = None,
    ) -> None:
        self.clock = clock or VirtualClock()
        self._free = {name: list(range(n)) for name, n in (pools or {}).items()}
        self._quotas = quotas or {}
        self._grants: dict[str, list[float]] = {name: [] for name in self._quotas}
        self._tokens = itertools.count(1)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.held: dict[int, Lease] = {}
        self._queues = {name: TestQueue(self, name, quota) for name, quota in (queues or {}).items()}

    def queue(self, name: str) -> TestQueue:
        """A request queue paced by its quota (`queues={"claude": "claude"}`)."""
        return self._queues[name]

    def lease(self, pool: str, *, holder: str = "", wait: float | None = None, **_: Any) -> _LeaseContext:
        return _LeaseContext(self, pool, holder, wait)

    async def _acquire(self, pool: str, holder: str, wait: float | None) -> Lease:
        if pool not in self._free:
            raise InvalidArgument(f"no pool {pool!r}", field="pool")
        deadline = self.clock.now + (wait or 0)
        while not self._free[pool]:
            if self.clock.now >= deadline:
                raise DeadlineExceeded(f"no 1 unit(s) of pool {pool} free within {int((wait or 0) * 1000)} ms")
            woken = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(pool, []).append(woken)
            self.clock.call_at(deadline, _wake(woken))
            await woken
        unit = self._free[pool].pop(0)
        token = next(self._tokens)
        lease = Lease(token, pool, holder, [str(unit)], token)
        self.held[token] = lease
        return lease

    def _release(self, lease: Lease) -> None:
        if self.held.pop(lease.id, None) is not None:
            self._free[lease.pool].append(int(lease.units[0]))
            for woken in self._waiters.pop(lease.pool, []):
                _wake(woken)()

    async def try_permit(self, quota: str, *, component: str = "") -> bool:
        """Whether a call is granted now: never more than `limit` in any `window`."""
        limit, window = self._quotas[quota]
        grants = [t for t in self._grants[quota] if t > self.clock.now - window]
        self._grants[quota] = grants
        if len(grants) >= limit:
            return False
        grants.append(self.clock.now)
        return True

    async def permit(self, quota: str, *, component: str = "", wait: float = 30.0) -> None:
        deadline = self.clock.now + wait
        while not await self.try_permit(quota, component=component):
            oldest = self._grants[quota][0]
            free_at = oldest + self._quotas[quota][1]
            if free_at > deadline:
                # As the server does: wait out the caller's wait, then refuse.
                if deadline > self.clock.now:
                    await self.clock.sleep(deadline - self.clock.now)
                raise ResourceExhausted(f"quota {quota} is used up", retry_after=free_at - self.clock.now)
            await self.clock.sleep(free_at - self.clock.now)


class _LeaseContext:
    def __init__(self, coordinator: TestCoordinator, pool: str, holder: str, wait: float | None) -> None:
        self._c, self._pool, self._holder, self._wait = coordinator, pool, holder, wait
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = await self._c._acquire(self._pool, self._holder, self._wait)
        return self._lease

    async def __aexit__(self, *_: object) -> None:
        if self._lease is not None:
            self._c._release(self._lease)




class TestQueue:
    """The request queue with `Queue`'s API: a take draws a call from the queue's quota
    (waiting on virtual time); identical requests are answered from a cache."""

    __test__ = False

    def __init__(self, coordinator: TestCoordinator, name: str, quota: str) -> None:
        self._c, self.name, self._quota = coordinator, name, quota
        self._ids = itertools.count(1)
        self._waiting: list[tuple[int, bytes, str]] = []
        self._taken: dict[int, tuple[bytes, str]] = {}
        self._answers: dict[int, Response] = {}
        self._cache: dict[bytes, bytes] = {}
        self._arrived = asyncio.Event()

    async def submit(self, request: Any, *, component: str = "", priority: int = 0, **_: Any) -> int:
        body = encode_payload(request)[0]
        request_id = next(self._ids)
        if body in self._cache:
            self._answers[request_id] = Response(ready=True, body=self._cache[body], cached=True)
        else:
            self._waiting.append((request_id, body, component or "anonymous"))
            self._arrived.set()
        return request_id

    async def result(self, request_id: int, *, wait: float | None = None) -> Response:
        return self._answers.get(request_id, Response(ready=False))

    async def take_one(self, *, worker: str = "", wait: float | None = None) -> TestTakenRequest | None:
        while not self._waiting:
            if not wait:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        try:
            await self._c.permit(self._quota, wait=wait or 0)
        except ResourceExhausted:
            return None  # nothing could be taken within the wait
        request_id, body, component = self._waiting.pop(0)
        self._taken[request_id] = (body, component)
        return TestTakenRequest(self, request_id, body, component)

    async def take(self, *, worker: str = "", poll: float = 30.0) -> AsyncIterator[TestTakenRequest]:
        while True:
            taken = await self.take_one(worker=worker, wait=poll)
            if taken is not None:
                yield taken

    def _answer(self, request_id: int, response: Response) -> None:
        body, _ = self._taken.pop(request_id)
        self._answers[request_id] = response
        if response.body is not None:
            self._cache[body] = response.body


@dataclass
class TestTakenRequest:
    """A request a worker took from a `TestQueue`."""

    __test__ = False

    queue: TestQueue
    id: int
    body: bytes
    component: str

    def json(self) -> Any:
        return json.loads(self.body)

    async def complete(self, response: Any) -> None:
        self.queue._answer(self.id, Response(ready=True, body=encode_payload(response)[0]))

    async def fail(self, error: str) -> None:
        self.queue._answer(self.id, Response(ready=True, error=error))
