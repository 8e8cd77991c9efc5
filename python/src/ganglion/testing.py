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
assert (await bus.dead_letters("worker"))[0].event.data == {}
```

What matches the server: topic and pattern grammar (`*` one token, `>` the rest),
refusals naming the field, idempotency keys, queue groups (one member per event),
at-least-once delivery with ack / nack / term, redelivery after the backoff (100 ms
doubling to 60 s by default, no jitter here), dead letters on `dlq.<name>` after
`max_deliveries` (5) with the same `dlq_*` headers, listed and redriven as the server
does; ack deadlines (30 s by default), `max_in_flight`, filters by type and header, batch
windows with keep-last and count on virtual time, replay and `from_seq`, and a durable's
events kept while nobody is subscribed (a subscription that is not durable ends with its
last member). Every topic behaves as a durable one (storage classes are server config).
Not modelled: retention, byte budgets, priorities and the server's per-connection limits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ganglion._events import Event, encode_payload, to_wire
from ganglion.bus import Backoff, Bus, DeadLetter, Delivery, Handler, PublishAck, Window
from ganglion.coordinator import Lease, Response
from ganglion.errors import DeadlineExceeded, GanglionError, InvalidArgument, ResourceExhausted
from ganglion.v1 import bus_pb2


#: What a dead letter carries besides the event, as the server writes it.
_DLQ_HEADERS = ("dlq_origin_topic", "dlq_origin_seq", "dlq_subscription", "dlq_attempts", "dlq_last_error")


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
class _Flight:
    """An event handed to a member, waiting for its settlement (`token` tells this
    attempt from a later one)."""

    wire: bus_pb2.Event
    attempt: int
    member: _Member
    token: object = field(default_factory=object)


@dataclass
class _Subscription:
    name: str
    pattern: str
    durable: bool
    max_deliveries: int
    max_in_flight: int
    ack_deadline: float
    backoff: Backoff
    dead_letter_topic: str
    types: list[str]
    headers: dict[str, str]
    window: Window | None
    members: list[_Member] = field(default_factory=list)
    turn: int = 0
    #: Events (with their attempt) waiting to be delivered, oldest first.
    ready: deque[tuple[bus_pb2.Event, int]] = field(default_factory=deque)
    in_flight: dict[int, _Flight] = field(default_factory=dict)
    #: The open batch window's events, and the token of its closing timer.
    windowed: list[tuple[bus_pb2.Event, int]] = field(default_factory=list)
    window_token: object | None = None

    def accepts(self, wire: bus_pb2.Event) -> bool:
        return (
            matches(self.pattern, wire.topic)
            and (not self.types or wire.type in self.types)
            and all(wire.headers.get(k) == v for k, v in self.headers.items())
        )


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
        self._bus._leave(self._state, self._member)
        self._member.queue.put_nowait(None)


class TestBus:
    """An in-memory bus with `Bus`'s API. `published_events` holds what was published."""

    __test__ = False  # not a pytest test class

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.published_events: list[Event] = []
        self._log: list[bus_pb2.Event] = []
        self._subscriptions: dict[str, _Subscription] = {}
        self._keys: dict[str, PublishAck] = {}
        self._redriven: set[int] = set()
        self._anonymous = itertools.count(1)
        self._handlers: list[tuple[Handler, dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: As `Bus.refused`; a TestBus refuses nothing once subscribed.
        self.refused: dict[Handler, GanglionError] = {}

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
        wire.seq, wire.id = len(self._log) + 1, wire.id or str(uuid.uuid4())
        wire.timestamp_ms = int(self.clock.now * 1000)
        self._log.append(wire)
        self.published_events.append(Event.from_wire(wire))
        ack = PublishAck(wire.seq, wire.id, False)
        if key:
            self._keys[key] = ack
        for state in list(self._subscriptions.values()):
            if state.accepts(wire):
                state.ready.append((wire, 1))
                self._pump(state)
        return ack

    def _pump(self, state: _Subscription) -> None:
        """Hands ready events to members, round robin, while fewer than `max_in_flight`
        wait for a settlement; under a batch window, into the window."""
        while state.members and state.ready and len(state.in_flight) + len(state.windowed) < state.max_in_flight:
            wire, attempt = state.ready.popleft()
            if state.window is None:
                self._send(state, [(wire, attempt, 1)], [])
                continue
            state.windowed.append((wire, attempt))
            if len(state.windowed) == 1:
                token = state.window_token = object()
                close = lambda: self._close_window(state, token)  # noqa: E731
                self.clock.call_at(self.clock.now + state.window.ms / 1000, close)
            if state.window.max_events and len(state.windowed) >= state.window.max_events:
                self._close_window(state, state.window_token)

    def _close_window(self, state: _Subscription, token: object) -> None:
        """Delivers the open window (if `token` is still its timer's), coalesced as the
        server does: keep-last keeps the newest event per key, count only counts."""
        if token is not state.window_token or not state.windowed or state.window is None:
            return
        items, state.windowed, state.window_token = state.windowed, [], None
        window = state.window

        def key(wire: bus_pb2.Event, header: str) -> str:
            return wire.headers.get(header, "") if header else wire.topic

        if window.keep_last is not None:
            last: dict[str, tuple[int, int]] = {}
            for i, (wire, _) in enumerate(items):
                _, n = last.get(key(wire, window.keep_last), (i, 0))
                last[key(wire, window.keep_last)] = (i, n + 1)
            kept = sorted(last.values())
            self._send(state, [(items[i][0], items[i][1], n) for i, n in kept], [], covers=items)
        elif window.count is not None:
            counts: dict[str, int] = {}
            for wire, _ in items:
                counts[key(wire, window.count)] = counts.get(key(wire, window.count), 0) + 1
            self._send(state, [], list(counts.items()), covers=items)
        else:
            self._send(state, [(wire, attempt, 1) for wire, attempt in items], [])
        self._pump(state)

    def _send(
        self,
        state: _Subscription,
        events: list[tuple[bus_pb2.Event, int, int]],
        counts: list[tuple[str, int]],
        covers: list[tuple[bus_pb2.Event, int]] | None = None,
    ) -> None:
        """Hands one delivery of `events` (covering `covers`, by default the same) to the
        next member, each event in flight until settled or its ack deadline passes."""
        member = state.members[state.turn % len(state.members)]
        state.turn += 1
        covered = covers if covers is not None else [(wire, attempt) for wire, attempt, _ in events]
        flights = {wire.seq: _Flight(wire, attempt, member) for wire, attempt in covered}
        state.in_flight.update(flights)
        for seq, flight in flights.items():
            expire = lambda seq=seq, token=flight.token: self._expire(state, seq, token)  # noqa: E731
            self.clock.call_at(self.clock.now + state.ack_deadline, expire)
        wire = bus_pb2.Delivery(
            events=[bus_pb2.DeliveredEvent(event=e, attempt=a, coalesced=n) for e, a, n in events],
            counts=[bus_pb2.KeyCount(key=k, count=n) for k, n in counts],
            seqs=list(flights),
        )

        def settle(request: bus_pb2.SubscribeRequest) -> None:
            which = request.WhichOneof("request")
            for seq, flight in flights.items():
                if state.in_flight.get(seq) is not flight:
                    continue  # already failed by its deadline, or its member left
                del state.in_flight[seq]
                if which == "nack":
                    nack = request.nack
                    delay = nack.delay_ms / 1000 if nack.HasField("delay_ms") else None
                    self._fail(state, flight, nack.error, delay)
                elif which == "term":
                    self._dead_letter(state, flight.wire, flight.attempt, request.term.reason)
            self._pump(state)

        member.queue.put_nowait(Delivery(wire, settle))

    def _expire(self, state: _Subscription, seq: int, token: object) -> None:
        flight = state.in_flight.get(seq)
        if flight is not None and flight.token is token:
            del state.in_flight[seq]
            self._fail(state, flight, f"ack deadline of {int(state.ack_deadline * 1000)} ms exceeded", None)
            self._pump(state)

    def _fail(self, state: _Subscription, flight: _Flight, error: str, delay: float | None) -> None:
        """A failed attempt: redelivered after `delay` or the backoff, or dead-lettered
        after the last one."""
        if flight.attempt >= state.max_deliveries:
            self._dead_letter(state, flight.wire, flight.attempt, error)
            return
        if delay is None:
            delay = float(min(state.backoff.initial * state.backoff.multiplier ** (flight.attempt - 1), state.backoff.max))

        def again() -> None:
            state.ready.append((flight.wire, flight.attempt + 1))
            self._pump(state)

        self.clock.call_at(self.clock.now + delay, again)

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

    def _leave(self, state: _Subscription, member: _Member) -> None:
        """A member leaves: what it had in flight counts as a failed attempt and goes to
        the others (or waits for the durable's next member); a subscription that is not
        durable ends with its last member."""
        if member not in state.members:
            return
        state.members.remove(member)
        for seq, flight in list(state.in_flight.items()):
            if flight.member is member:
                del state.in_flight[seq]
                self._fail(state, flight, "subscriber left before acking", 0.0)
        if not state.members and not state.durable:
            self._subscriptions.pop(state.name, None)

    async def replay(self, pattern: str, *, from_seq: int | None = None, since: float | None = None, limit: int = 0) -> list[Event]:
        """The events matching `pattern`, oldest first, as `Bus.replay`."""
        _check_topic(pattern, "pattern", wildcards=True)
        if from_seq is not None and since is not None:
            raise ValueError("give from_seq or since, not both")
        first_ms = int(since * 1000) if since is not None else 0
        found = [
            Event.from_wire(w)
            for w in self._log[max((from_seq or 1) - 1, 0) :]
            if matches(pattern, w.topic) and w.timestamp_ms >= first_ms
        ]
        return found[: limit or 1000]

    async def dead_letters(self, subscription: str, *, limit: int = 0) -> list[DeadLetter]:
        """The dead letters of `subscription` not yet redriven, oldest first."""
        letters = [
            DeadLetter(
                Event.from_wire(w),
                w.headers["dlq_origin_topic"],
                int(w.headers["dlq_origin_seq"]),
                subscription,
                int(w.headers["dlq_attempts"]),
                w.headers["dlq_last_error"],
            )
            for w in self._log
            if w.headers.get("dlq_subscription") == subscription and w.seq not in self._redriven
        ]
        return letters[: limit or 100]

    async def redrive(self, subscription: str, seqs: list[int] | None = None) -> int:
        """Publishes the dead letters again on their original topics, as `Bus.redrive`."""
        chosen = [d for d in await self.dead_letters(subscription, limit=2**31) if not seqs or d.event.seq in seqs]
        for letter in chosen:
            self._redriven.add(letter.event.seq)
            again = bus_pb2.Event()
            again.CopyFrom(self._log[letter.event.seq - 1])
            again.topic, again.id = letter.origin_topic, ""
            for header in _DLQ_HEADERS:
                del again.headers[header]
            self._append(again)
        await _settle()
        return len(chosen)

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
        **_: Any,
    ) -> TestSubscription:
        _check_topic(pattern, "open.pattern", wildcards=True)
        name = durable or (f"q:{queue}:{pattern}" if queue else f"sub-{next(self._anonymous)}")
        state = self._subscriptions.get(name)
        if state is None:
            state = _Subscription(
                name=name,
                pattern=pattern,
                durable=durable is not None,
                max_deliveries=max_deliveries or 5,
                max_in_flight=max_in_flight or 1000,
                ack_deadline=ack_deadline or 30.0,
                backoff=backoff or Backoff(initial=0.1, multiplier=2.0, max=60.0),
                dead_letter_topic=dead_letter_topic or f"dlq.{durable or queue or name}",
                types=list(types or []),
                headers=dict(headers or {}),
                window=batch,
            )
            self._subscriptions[name] = state
            if from_seq is not None:
                state.ready.extend((w, 1) for w in self._log[max(from_seq - 1, 0) :] if state.accepts(w))
        elif state.pattern != pattern:
            raise InvalidArgument(f"durable {name!r} exists with another pattern", field="pattern")
        member = _Member()
        state.members.append(member)
        self._pump(state)
        return TestSubscription(self, state, member)

    def subscribe(self, pattern: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._handlers.append((handler, {"pattern": pattern, **options}))
            return handler

        return register

    async def start(self) -> None:
        for handler, options in self._handlers:
            subscription = self.subscription(**options)
            serving = Bus._serve(handler, subscription, options.get("batch"))  # type: ignore[arg-type]
            task = asyncio.create_task(serving)
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
