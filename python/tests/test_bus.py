"""The bus against a real server: publish and subscribe with acks, payload types,
field-named errors, dead letters after max deliveries, a durable resuming after a
restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ganglion import Backoff, Bus, Event, InvalidArgument, Reject, Window, event
from ganglion.v1 import bus_pb2

WAIT = 10.0


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 60))


def test_publish_and_a_decorated_subscriber(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            got: asyncio.Queue[Event] = asyncio.Queue()

            @bus.subscribe("game.state.*", durable="py-analytics")
            async def on_state(e: Event) -> None:
                await got.put(e)

            await bus.start()
            ack = await bus.publish("game.state.update", {"game_id": "abc123", "round": 3}, type="GameStateUpdate")
            assert ack.seq >= 1 and ack.id and not ack.duplicate
            e = await asyncio.wait_for(got.get(), WAIT)
            assert e.topic == "game.state.update"
            assert e.data == {"game_id": "abc123", "round": 3}
            assert e.type == "GameStateUpdate" and e.content_type == "application/json"

            # Bytes stay bytes; a protobuf message carries its type name.
            await bus.publish("game.state.raw", b"\x00\x01")
            assert (await asyncio.wait_for(got.get(), WAIT)).data == b"\x00\x01"
            message = bus_pb2.Ack(seqs=[7])
            await bus.publish("game.state.proto", message)
            e = await asyncio.wait_for(got.get(), WAIT)
            assert e.type == "ganglion.v1.Ack" and e.decode(bus_pb2.Ack) == message

    run(main)


def test_idempotency_keys_and_batches(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            first = await bus.publish("orders.placed", {"id": 1}, idempotency_key="order-1")
            again = await bus.publish("orders.placed", {"id": 1}, idempotency_key="order-1")
            assert again.duplicate and again.seq == first.seq
            acks = await bus.publish_batch([event("orders.placed", {"id": n}) for n in range(5)])
            assert [a.seq for a in acks] == list(range(first.seq + 1, first.seq + 6))

    run(main)


def test_refusals_name_the_field(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            with pytest.raises(InvalidArgument) as refused:
                await bus.publish("game..state", {})
            assert refused.value.field == "events[0].topic"
            with pytest.raises(InvalidArgument) as refused:
                await bus.subscription("game.>", max_deliveries=10**6).opened()
            assert refused.value.field and "max_deliveries" in refused.value.field

    run(main)


def test_a_failing_handler_goes_to_the_dead_letters_after_max_deliveries(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            attempts: list[int] = []
            letters = bus.subscription("dlq.py-fails")
            await letters.opened()

            jobs = bus.subscription(
                "jobs.>", durable="py-fails", max_deliveries=3, backoff=Backoff(initial=0.01, max=0.01)
            )
            await jobs.opened()  # new events only: open before publishing

            async def consume() -> None:
                async for delivery in jobs:
                    attempts.append(delivery.attempt)
                    delivery.nack(error="it always fails")

            consumer = asyncio.create_task(consume())
            await bus.publish("jobs.render", {"frame": 1})
            letter = await asyncio.wait_for(letters.__anext__(), WAIT)
            consumer.cancel()
            assert attempts == [1, 2, 3]
            assert letter.event.topic == "dlq.py-fails"
            assert letter.event.data == {"frame": 1}

    run(main)


def test_reject_dead_letters_at_once(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            letters = bus.subscription("dlq.py-rejects")
            await letters.opened()

            @bus.subscribe("mail.>", durable="py-rejects", max_deliveries=5)
            async def refuse(e: Event) -> None:
                raise Reject("malformed")

            await bus.start()
            await bus.publish("mail.in", {"to": "nobody"})
            letter = await asyncio.wait_for(letters.__anext__(), WAIT)
            assert letter.event.data == {"to": "nobody"}
            assert letter.attempt == 1

    run(main)


def test_a_durable_resumes_after_a_server_restart(server: Any) -> None:
    async def first() -> None:
        async with await Bus.connect(server.grpc) as bus:
            sub = await bus.subscription("ledger.>", durable="py-ledger").opened()
            await bus.publish("ledger.entry", {"n": 1})
            d = await asyncio.wait_for(sub.__anext__(), WAIT)
            d.ack()
            await asyncio.sleep(0.2)  # let the ack reach the server before it stops
            await sub.close()

    run(first)
    server.restart()

    async def second() -> None:
        async with await Bus.connect(server.grpc) as bus:
            await bus.publish("ledger.entry", {"n": 2})
            sub = bus.subscription("ledger.>", durable="py-ledger")
            d = await asyncio.wait_for(sub.__anext__(), WAIT)
            assert d.event.data == {"n": 2}, "resumes after the acked event"
            d.ack()
            await sub.close()

    run(second)


def test_publishing_goes_on_across_a_server_restart(server: Any) -> None:
    """One Bus, many concurrent publishes coalesced into frames; the server restarts on
    the same address; the same Bus publishes again (no event lost or renumbered)."""
    import threading

    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            acks = await asyncio.gather(*(bus.publish("metrics.gpu", {"n": n}) for n in range(500)))
            assert sorted(a.seq for a in acks) == list(range(1, 501))
            thread = threading.Thread(target=server.restart)
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.05)
            ack = await bus.publish("metrics.gpu", {"n": 500})
            assert ack.seq == 501

    run(main)


def test_a_batch_window_keeps_the_last_event_per_key(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            windows: asyncio.Queue[list[Event]] = asyncio.Queue()

            @bus.subscribe("game.state.*", batch=Window(ms=100, keep_last="game_id"))
            async def on_window(events: list[Event]) -> None:
                await windows.put(events)

            await bus.start()
            await bus.publish_batch(
                [event("game.state.update", {"game": g, "round": r}, headers={"game_id": g}) for r in range(3) for g in "ab"]
            )
            got = await asyncio.wait_for(windows.get(), WAIT)
            assert sorted((e.data["game"], e.data["round"]) for e in got) == [("a", 2), ("b", 2)]

    run(main)


def test_a_count_window_hands_its_handler_the_counts(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            windows: asyncio.Queue[dict[str, int]] = asyncio.Queue()

            @bus.subscribe("clicks.*", batch=Window(ms=100, count="page"))
            async def on_counts(counts: dict[str, int]) -> None:
                await windows.put(counts)

            await bus.start()
            await bus.publish_batch([event("clicks.ui", {}, headers={"page": p}) for p in "aabab"])
            assert await asyncio.wait_for(windows.get(), WAIT) == {"a": 3, "b": 2}

    run(main)


def test_replay_dead_letters_redrive_and_ack_deadlines(server: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            first = await bus.publish("audit.login", {"user": "ada"})
            await bus.publish("audit.logout", {"user": "ada"})
            replayed = await bus.replay("audit.>")
            assert [e.topic for e in replayed] == ["audit.login", "audit.logout"]
            assert [e.topic for e in await bus.replay("audit.>", from_seq=first.seq + 1)] == ["audit.logout"]
            with pytest.raises(InvalidArgument) as refused:
                await bus.replay("audit..x")
            assert refused.value.field == "pattern"

            # Never settled: redelivered after the deadline, then dead-lettered.
            slow = await bus.subscription(
                "audit.*", durable="py-slow", from_seq=first.seq, ack_deadline=0.2, max_deliveries=2,
                backoff=Backoff(initial=0.01, max=0.01),
            ).opened()
            attempts = [(await asyncio.wait_for(slow.__anext__(), WAIT)) for _ in range(4)]
            assert sorted((d.event.topic, d.attempt) for d in attempts) == [
                ("audit.login", 1), ("audit.login", 2), ("audit.logout", 1), ("audit.logout", 2)
            ]
            for _ in range(100):  # the second deadlines pass, and the letters are listed
                letters = await bus.dead_letters("py-slow")
                if len(letters) == 2:
                    break
                await asyncio.sleep(0.05)
            await slow.close()
            assert [(d.origin_topic, d.attempts) for d in letters] == [("audit.login", 2), ("audit.logout", 2)]
            assert letters[0].last_error == "ack deadline of 200 ms exceeded"
            assert letters[0].event.topic == "dlq.py-slow" and letters[0].event.data == {"user": "ada"}

            again = await bus.subscription("audit.login").opened()
            assert await bus.redrive("py-slow", [letters[0].event.seq]) == 1
            redriven = await asyncio.wait_for(again.__anext__(), WAIT)
            assert redriven.event.data == {"user": "ada"} and "dlq_attempts" not in redriven.event.headers
            assert [d.origin_topic for d in await bus.dead_letters("py-slow")] == ["audit.logout"]

    run(main)


def test_a_decorated_durable_subscribes_again_after_a_server_restart(server: Any) -> None:
    import threading

    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            got: asyncio.Queue[Event] = asyncio.Queue()

            @bus.subscribe("sensor.>", durable="py-sensor")
            async def record(e: Event) -> None:
                await got.put(e)

            await bus.start()
            await bus.publish("sensor.t", {"n": 1})
            assert (await asyncio.wait_for(got.get(), WAIT)).data == {"n": 1}
            thread = threading.Thread(target=server.restart)
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.05)
            await bus.publish("sensor.t", {"n": 2})
            # The durable resumes: the event published after the restart arrives, and
            # the one acked before does not come again.
            assert (await asyncio.wait_for(got.get(), WAIT)).data == {"n": 2}
            await asyncio.sleep(0.3)
            assert got.empty()

    run(main)


def test_closing_lets_a_handler_in_progress_finish_and_ack(server: Any) -> None:
    async def main() -> None:
        bus = await Bus.connect(server.grpc)
        started, finished = asyncio.Event(), asyncio.Event()

        @bus.subscribe("render.>", durable="py-drain")
        async def render(e: Event) -> None:
            started.set()
            await asyncio.sleep(0.3)  # a slow handler, in progress when the app stops
            finished.set()

        await bus.start()
        await bus.publish("render.frame", {"n": 1})
        await asyncio.wait_for(started.wait(), WAIT)
        await bus.close()
        assert finished.is_set(), "the handler ran to its end"
        # Its ack reached the server: the durable has nothing to redeliver.
        async with await Bus.connect(server.grpc) as again:
            sub = await again.subscription("render.>", durable="py-drain").opened()
            await again.publish("render.frame", {"n": 2})
            d = await asyncio.wait_for(sub.__anext__(), WAIT)
            assert d.event.data == {"n": 2} and d.attempt == 1
            d.ack()

    run(main)


def test_closing_a_subscription_whose_reader_was_cancelled(server: Any) -> None:
    """grpcio cancels the whole call when a task waiting in a read is cancelled; closing
    the subscription then must neither raise nor hang, and the bus stays usable."""

    async def main() -> None:
        async with await Bus.connect(server.grpc) as bus:
            sub = await bus.subscription("chat.>").opened()

            async def read() -> None:
                async for delivery in sub:
                    delivery.ack()

            reader = asyncio.create_task(read())
            await asyncio.sleep(0)  # the reader waits in a read
            reader.cancel()
            await asyncio.wait_for(sub.close(), WAIT)
            assert reader.cancelled()
            again = await bus.subscription("chat.>").opened()
            await bus.publish("chat.room", {"text": "hi"})
            assert (await asyncio.wait_for(again.__anext__(), WAIT)).event.data == {"text": "hi"}

    run(main)
