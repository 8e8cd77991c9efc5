"""The same scenarios against `TestBus` and `TestCoordinator`, on virtual time: nothing
sleeps, time moves when the test says."""

from __future__ import annotations

import asyncio

import pytest

from ganglion import Backoff, Event, InvalidArgument, Reject, Window, event
from ganglion.testing import TestBus, TestCoordinator, VirtualClock, matches

from test_bus import run


def test_publish_records_and_delivers_to_matching_subscribers() -> None:
    async def main() -> None:
        bus = TestBus()
        got: list[Event] = []

        @bus.subscribe("game.state.*")
        async def on_state(e: Event) -> None:
            got.append(e)

        await bus.start()
        await bus.publish("test.event", {"n": 1})
        await bus.publish("game.state.update", {"game_id": "abc123"}, type="GameStateUpdate")
        assert len(bus.published_events) == 2
        assert [e.data for e in got] == [{"game_id": "abc123"}]
        assert got[0].type == "GameStateUpdate" and got[0].seq == 2
        await bus.close()

    run(main)


def test_wildcards_follow_the_servers_grammar() -> None:
    assert matches("game.>", "game.state.update")
    assert not matches("game.>", "game")
    assert matches("game.*.update", "game.state.update")
    assert not matches("game.*", "game.state.update")
    assert matches("a", "a") and not matches("a", "a.b")


def test_refusals_name_the_field_and_keys_dedupe() -> None:
    async def main() -> None:
        bus = TestBus()
        with pytest.raises(InvalidArgument) as refused:
            await bus.publish("game..state", {})
        assert refused.value.field == "topic"
        with pytest.raises(InvalidArgument) as refused:
            await bus.publish_batch([event("ok", 1), event("game.*", 2)])
        assert refused.value.field == "events[1].topic"
        first = await bus.publish("orders", {}, idempotency_key="k")
        again = await bus.publish("orders", {}, idempotency_key="k")
        assert again.duplicate and again.seq == first.seq

    run(main)


def test_a_failing_handler_is_redelivered_with_backoff_then_dead_lettered() -> None:
    async def main() -> None:
        bus = TestBus()
        attempts: list[float] = []

        @bus.subscribe("jobs.>", durable="worker", max_deliveries=3, backoff=Backoff(initial=1.0, multiplier=2.0))
        async def handle(e: Event) -> None:
            attempts.append(bus.clock.now)
            raise RuntimeError("always fails")

        await bus.start()
        await bus.publish("jobs.render", {"frame": 1})
        assert attempts == [0.0]
        await bus.clock.advance(0.9)
        assert attempts == [0.0], "not before the backoff"
        await bus.clock.advance(0.2)
        assert attempts == [0.0, 1.0]
        await bus.clock.advance(2.0)
        assert attempts == [0.0, 1.0, 3.0]
        [letter] = await bus.dead_letters("worker")
        assert letter.event.topic == "dlq.worker" and letter.event.data == {"frame": 1}
        assert letter.attempts == 3 and letter.origin_topic == "jobs.render"
        assert letter.last_error == "RuntimeError: always fails"
        await bus.close()

    run(main)


def test_reject_dead_letters_at_once_and_queue_groups_share_the_work() -> None:
    async def main() -> None:
        bus = TestBus()

        @bus.subscribe("mail.>", durable="mail")
        async def refuse(e: Event) -> None:
            raise Reject("malformed")

        seen: dict[str, int] = {"a": 0, "b": 0}
        for member in seen:

            @bus.subscribe("work.>", queue="workers")
            async def work(e: Event, member: str = member) -> None:
                seen[member] += 1

        await bus.start()
        await bus.publish("mail.in", {"to": "nobody"})
        assert (await bus.dead_letters("mail"))[0].attempts == 1
        for n in range(10):
            await bus.publish("work.item", {"n": n})
        assert seen == {"a": 5, "b": 5}
        await bus.close()

    run(main)


def test_leases_and_exact_quotas_on_virtual_time() -> None:
    async def main() -> None:
        clock = VirtualClock()
        coord = TestCoordinator(clock, pools={"gpu": 1}, quotas={"claude": (2, 3600.0)})
        async def other() -> str:
            async with coord.lease("gpu", holder="other", wait=10) as lease:
                return lease.holder

        async with coord.lease("gpu", holder="trainer") as lease:
            assert coord.held
            waiter = asyncio.create_task(other())
            await clock.advance(1)
            assert not waiter.done(), "waits while the GPU is held"
        await clock.advance(0)
        assert await waiter == "other"
        with pytest.raises(RuntimeError):
            async with coord.lease("gpu"):
                raise RuntimeError("training failed")
        async with coord.lease("gpu"):
            pass  # released by the exception
        assert await coord.try_permit("claude") and await coord.try_permit("claude")
        assert not await coord.try_permit("claude"), "never 3 in an hour"
        await clock.advance(3599)
        assert not await coord.try_permit("claude")
        await clock.advance(1)
        assert await coord.try_permit("claude")
        assert lease.fencing_token == 1

    run(main)


def test_handlers_carry_the_correlation_id_into_what_they_publish() -> None:
    async def main() -> None:
        bus = TestBus()

        @bus.subscribe("orders.placed")
        async def bill(e: Event) -> None:
            await bus.publish("billing.charged", {"order": e.data["id"]})

        await bus.start()
        await bus.publish("orders.placed", {"id": 7}, correlation_id="checkout-42")
        await bus.publish("orders.placed", {"id": 8})
        charged = [e for e in bus.published_events if e.topic == "billing.charged"]
        assert charged[0].correlation_id == "checkout-42"
        # Without one, the event that started the chain is the correlation.
        placed = [e for e in bus.published_events if e.topic == "orders.placed"]
        assert charged[1].correlation_id == placed[1].id
        # Outside a handler nothing is inherited.
        assert (await bus.publish("loose", {})).seq and bus.published_events[-1].correlation_id is None
        await bus.close()

    run(main)


def test_the_request_queue_is_paced_by_its_quota_on_virtual_time() -> None:
    async def main() -> None:
        clock = VirtualClock()
        coord = TestCoordinator(clock, quotas={"claude": (1, 60.0)}, queues={"claude": "claude"})
        queue = coord.queue("claude")
        first = await queue.submit({"prompt": "a"}, component="advisor")
        second = await queue.submit({"prompt": "b"}, component="advisor")
        answered: list[str] = []

        async def worker() -> None:
            async for request in queue.take(worker="w1"):
                answered.append(request.json()["prompt"])
                await request.complete({"answer": request.json()["prompt"].upper()})

        task = asyncio.create_task(worker())
        await clock.advance(0)
        assert answered == ["a"], "one call per minute: the second waits"
        assert (await queue.result(first)).json() == {"answer": "A"}
        assert not (await queue.result(second)).ready
        await clock.advance(60)
        assert answered == ["a", "b"]
        again = await queue.submit({"prompt": "a"})
        assert (await queue.result(again)).cached
        task.cancel()

    run(main)


def test_an_unsettled_delivery_is_redelivered_after_its_ack_deadline() -> None:
    async def main() -> None:
        bus = TestBus()
        sub = bus.subscription("jobs.>", durable="slow", ack_deadline=5.0, max_deliveries=2, backoff=Backoff(initial=1.0))
        await bus.publish("jobs.a", {"n": 1})
        first = await sub.__anext__()
        assert first.attempt == 1
        await bus.clock.advance(4.9)
        assert sub._member.queue.empty(), "not before the deadline"
        await bus.clock.advance(0.1 + 1.0)  # the deadline, then the backoff
        second = await sub.__anext__()
        assert second.attempt == 2 and second.event.data == {"n": 1}
        first.ack()  # too late: that attempt is over, and settling it changes nothing
        await bus.clock.advance(5.0)
        [letter] = await bus.dead_letters("slow")
        assert letter.last_error == "ack deadline of 5000 ms exceeded" and letter.attempts == 2

    run(main)


def test_max_in_flight_holds_back_the_rest_until_acks() -> None:
    async def main() -> None:
        bus = TestBus()
        sub = bus.subscription("work", durable="w", max_in_flight=2)
        for n in range(3):
            await bus.publish("work", n)
        a, b = await sub.__anext__(), await sub.__anext__()
        assert sub._member.queue.empty(), "two in flight at most"
        a.ack()
        assert (await sub.__anext__()).event.data == 2
        b.ack()

    run(main)


def test_batch_windows_keep_the_last_per_key_or_count_on_virtual_time() -> None:
    async def main() -> None:
        bus = TestBus()
        kept: list[list[Event]] = []
        counted: list[dict[str, int]] = []

        @bus.subscribe("game.state.*", batch=Window(ms=100, keep_last="game_id"))
        async def latest(events: list[Event]) -> None:
            kept.append(events)

        @bus.subscribe("game.state.*", batch=Window(ms=100, count=""))
        async def per_topic(counts: dict[str, int]) -> None:
            counted.append(counts)

        await bus.start()
        for n, game in enumerate(["a", "b", "a", "a"]):
            await bus.publish("game.state.update", {"n": n}, headers={"game_id": game})
        await bus.publish("game.state.end", {"n": 4}, headers={"game_id": "b"})
        await bus.clock.advance(0.099)
        assert kept == [] and counted == [], "the window is still open"
        await bus.clock.advance(0.001)
        assert [[e.data["n"] for e in window] for window in kept] == [[3, 4]]
        assert counted == [{"game.state.update": 4, "game.state.end": 1}]
        await bus.close()

    run(main)


def test_a_durable_keeps_events_while_nobody_listens_and_replay_reads_the_log() -> None:
    async def main() -> None:
        bus = TestBus()
        sub = bus.subscription("ledger.>", durable="ledger")
        await bus.publish("ledger.entry", {"n": 1})
        unacked = await sub.__anext__()
        await sub.close()  # leaves without acking: counts as an attempt
        await bus.publish("ledger.entry", {"n": 2})
        await bus.clock.advance(0)
        again = bus.subscription("ledger.>", durable="ledger")
        got = [await again.__anext__(), await again.__anext__()]
        assert sorted((d.event.data["n"], d.attempt) for d in got) == [(1, 2), (2, 1)]
        assert unacked.event.seq == 1

        # A subscription that is not durable keeps nothing once it is gone.
        gone = bus.subscription("ledger.>")
        await gone.close()
        assert [s for s in bus._subscriptions] == ["ledger"]

        await bus.publish("other", {})
        assert [e.data["n"] for e in await bus.replay("ledger.>")] == [1, 2]
        assert [e.data["n"] for e in await bus.replay("ledger.>", from_seq=2)] == [2]
        late = bus.subscription("ledger.*", from_seq=1, types=[""])
        assert (await late.__anext__()).event.data == {"n": 1}

    run(main)


def test_filters_by_type_and_header_and_redrive_of_dead_letters() -> None:
    async def main() -> None:
        bus = TestBus()
        seen: list[int] = []
        fail = True

        @bus.subscribe("orders.>", durable="eu-orders", types=["Placed"], headers={"region": "eu"}, max_deliveries=1)
        async def handle(e: Event) -> None:
            if fail:
                raise RuntimeError("database down")
            seen.append(e.data["n"])

        await bus.start()
        await bus.publish("orders.new", {"n": 1}, type="Placed", headers={"region": "eu"})
        await bus.publish("orders.new", {"n": 2}, type="Placed", headers={"region": "us"})
        await bus.publish("orders.new", {"n": 3}, type="Cancelled", headers={"region": "eu"})
        [letter] = await bus.dead_letters("eu-orders")
        assert letter.origin_seq == 1 and letter.last_error == "RuntimeError: database down"
        fail = False
        assert await bus.redrive("eu-orders") == 1
        assert seen == [1] and await bus.dead_letters("eu-orders") == []
        await bus.close()

    run(main)
