"""Python publish throughput and publish→handler latency: Ganglion's SDK beside nats-py
(JetStream async publish, and core NATS) on this machine, in one run.

    cargo run --release -p ganglion -- serve --data-dir "$(mktemp -d)" &
    .venv/bin/pip install nats-py
    .venv/bin/python python/bench/bench.py [--events 20000] [--rate 1000] [--seconds 5]

Throughput: `--events` events of 128 B, each its own publish call, at most 1,000
awaiting their ack at once (Ganglion: a durable topic, fsynced before the ack; JetStream:
a file stream, acked when stored). Latency: a steady `--rate` per second for `--seconds`,
each event carrying its send time; the handler records now − then (Ganglion: an
ephemeral topic; NATS: core). The `grpcio floor` row is the same latency with no SDK at
all: the generated stub, each event written without awaiting its ack, the subscription
acking automatically; it is what grpcio and the server cost together.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import struct
import sys
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import grpc  # noqa: E402

from ganglion import Bus  # noqa: E402
from ganglion.v1 import bus_pb2, bus_pb2_grpc  # noqa: E402

PAYLOAD = b"x" * 120


async def throughput(publish, events: int, window: int = 1000) -> float:
    slots = asyncio.Semaphore(window)

    async def one(n: int) -> None:
        try:
            await publish(n)
        finally:
            slots.release()

    started = time.perf_counter()
    tasks = []
    for n in range(events):
        await slots.acquire()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return events / (time.perf_counter() - started)


async def steady(send, rate: int, seconds: float) -> None:
    interval = 1 / rate
    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = start + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send()


def summary(latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return f"p50 {statistics.median(latencies) * 1e6:.0f} µs, p99 {q[98] * 1e6:.0f} µs ({len(latencies)} events)"


async def ganglion(server: str, events: int, rate: int, seconds: float) -> None:
    run = uuid.uuid4().hex[:8]
    async with await Bus.connect(server) as bus:
        rate_durable = await throughput(lambda n: bus.publish(f"bench.py.r{run}", PAYLOAD), events)
        print(f"ganglion   publish, durable (fsync before ack): {rate_durable:,.0f} events/s")
        latencies: list[float] = []
        sub = await bus.subscription("bench.events.pylat").opened()

        async def receive() -> None:
            async for delivery in sub:
                (sent,) = struct.unpack("d", delivery.event.payload[:8])
                latencies.append(time.perf_counter() - sent)
                delivery.ack()

        receiver = asyncio.create_task(receive())
        await steady(lambda: bus.publish("bench.events.pylat", struct.pack("d", time.perf_counter()) + PAYLOAD[8:]), rate, seconds)
        await asyncio.sleep(0.5)
        receiver.cancel()
        print(f"ganglion   latency at {rate}/s, ephemeral: {summary(latencies)}")
    print(f"grpcio     latency at {rate}/s, ephemeral, no SDK (the floor): {summary(await grpcio_floor(server, rate, seconds))}")


async def grpcio_floor(server: str, rate: int, seconds: float) -> list[float]:
    """Publish→receive latency through the generated stub alone."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(server) as channel:
        stub = bus_pb2_grpc.EventBusStub(channel)  # type: ignore[no-untyped-call]
        auto = bus_pb2.SubscribeOptions(ack_mode=bus_pb2.ACK_MODE_AUTO)
        subscription = stub.Subscribe()
        await subscription.write(bus_pb2.SubscribeRequest(open=bus_pb2.OpenSubscription(pattern="bench.events.pyfloor", options=auto)))
        await subscription.read()  # subscribed

        async def receive() -> None:
            while True:
                response = await subscription.read()
                for delivery in response.deliveries.deliveries:
                    (sent,) = struct.unpack("d", delivery.events[0].event.payload[:8])
                    latencies.append(time.perf_counter() - sent)

        publish = stub.PublishStream()

        async def drain_acks() -> None:
            while True:
                await publish.read()

        tasks = [asyncio.create_task(receive()), asyncio.create_task(drain_acks())]
        sent = iter(range(1, 1 << 62))

        async def send() -> None:
            payload = struct.pack("d", time.perf_counter()) + PAYLOAD[8:]
            event = bus_pb2.Event(topic="bench.events.pyfloor", payload=payload)
            await publish.write(bus_pb2.PublishRequest(request_id=next(sent), events=[event]))

        await steady(send, rate, seconds)
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
    return latencies


async def nats(url: str, events: int, rate: int, seconds: float) -> None:
    import nats as nats_py

    nc = await nats_py.connect(url)
    js = nc.jetstream()
    stream = f"BENCHPY{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    try:
        started = time.perf_counter()
        futures = []
        for n in range(events):
            futures.append(await js.publish_async(f"{stream.lower()}.x", PAYLOAD))
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        rate_js = events / (time.perf_counter() - started)
        print(f"nats-py    JetStream publish_async (file stream): {rate_js:,.0f} events/s")
        # The shape Ganglion's row has: each publish its own call, 1,000 awaiting acks.
        rate_js_each = await throughput(lambda n: js.publish(f"{stream.lower()}.y", PAYLOAD), events)
        print(f"nats-py    JetStream publish, each awaited (1,000 concurrent): {rate_js_each:,.0f} events/s")
    finally:
        await js.delete_stream(stream)
    latencies: list[float] = []

    async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
        (sent,) = struct.unpack("d", msg.data[:8])
        latencies.append(time.perf_counter() - sent)

    await nc.subscribe("benchpy.lat", cb=on_message)
    await nc.flush()
    await steady(lambda: nc.publish("benchpy.lat", struct.pack("d", time.perf_counter()) + PAYLOAD[8:]), rate, seconds)
    await nc.flush()
    await asyncio.sleep(0.5)
    print(f"nats-py    latency at {rate}/s, core NATS: {summary(latencies)}")
    await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    await ganglion(args.server, args.events, args.rate, args.seconds)
    await nats(args.nats, args.events, args.rate, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
