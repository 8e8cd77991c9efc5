"""The seeds' game in Python: a game server publishing state updates, a strategy that
sees only the latest state of each game per 100 ms window and asks the (rate-limited)
advisor queue for a move, an advisor worker answering from the queue, and analytics on
a durable subscription. One process here; in the seeds' system each is a component.

    cargo run --release -p ganglion -- serve --env development      # gpu, claude quota and queue
    .venv/bin/pip install ./python
    .venv/bin/python examples/python/game.py [--games 4] [--updates 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import uuid

from ganglion import App, Bus, Coordinator, Event, Window


async def main(server: str, games: int, updates: int) -> None:
    run = uuid.uuid4().hex[:6]
    bus = await Bus.connect(server)
    coord = await Coordinator.connect(server)
    app = App(bus)
    advisor_queue = coord.queue("claude")
    seen: collections.Counter[str] = collections.Counter()
    moves: list[str] = []
    done = asyncio.Event()

    strategy = app.module("strategy")

    @strategy.subscribe(f"game{run}.state.*", batch=Window(ms=100, keep_last="game_id"))
    async def decide(states: list[Event]) -> None:
        for state in states:  # the newest state of each game in the window
            if state.data["round"] == updates - 1:
                request = await advisor_queue.submit({"game": state.data["game_id"], "round": state.data["round"]}, component="advisor")
                answer = await advisor_queue.result(request, wait=10)
                moves.append(f"{state.data['game_id']}: {answer.json()['move']}")
                await bus.publish(f"game{run}.move", {"game_id": state.data["game_id"], "move": answer.json()["move"]})

    analytics = app.module("analytics")

    @analytics.subscribe(f"game{run}.>", durable=f"analytics-{run}")
    async def record(event: Event) -> None:
        seen[event.topic] += 1
        if seen[f"game{run}.move"] == games:
            done.set()

    advisor = app.module("advisor")

    @advisor.on_start
    async def start_worker() -> None:
        async def work() -> None:
            async for request in advisor_queue.take(worker="advisor-1", poll=5):
                await request.complete({"move": "raise" if request.json()["round"] % 2 else "fold"})

        advisor.worker = asyncio.create_task(work())  # type: ignore[attr-defined]

    @advisor.on_stop
    async def stop_worker() -> None:
        advisor.worker.cancel()  # type: ignore[attr-defined]

    await app.start()
    for round_ in range(updates):
        await asyncio.gather(
            *(
                bus.publish(f"game{run}.state.update", {"game_id": f"g{g}", "round": round_}, headers={"game_id": f"g{g}"})
                for g in range(games)
            )
        )
    await asyncio.wait_for(done.wait(), 30)
    await app.stop()
    await coord.close()
    print(f"published {games * updates} state updates over {games} games")
    print(f"analytics saw {dict(seen)}")
    print("moves:", ", ".join(sorted(moves)))
    for module, handlers in app.metrics().items():
        for name, stats in handlers.items():
            print(f"{module}.{name}: {stats.calls} calls, {stats.errors} errors, mean {stats.mean * 1e3:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--games", type=int, default=4)
    parser.add_argument("--updates", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.server, args.games, args.updates))
