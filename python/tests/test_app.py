"""Modules with hooks, health and measured handlers, over the in-memory bus."""

from __future__ import annotations

import asyncio

import pytest

from ganglion import Event
from ganglion.app import App
from ganglion.testing import TestBus

from test_bus import run


def test_modules_start_in_order_stop_in_reverse_and_measure_their_handlers() -> None:
    async def main() -> None:
        bus = TestBus()
        app = App(bus)
        steps: list[str] = []
        analytics, advisor = app.module("analytics"), app.module("advisor")

        @analytics.on_start
        async def open_db() -> None:
            steps.append("analytics up")

        @analytics.on_stop
        async def close_db() -> None:
            steps.append("analytics down")

        @advisor.on_start
        async def warm() -> None:
            steps.append("advisor up")

        @advisor.on_stop
        async def cool() -> None:
            steps.append("advisor down")

        @analytics.subscribe("game.>")
        async def record(e: Event) -> None:
            if e.data.get("bad"):
                raise ValueError("bad event")

        healthy = True

        @advisor.health
        async def llm_ok() -> bool:
            return healthy

        stop = asyncio.Event()
        running = asyncio.create_task(app.run(stop))
        await asyncio.sleep(0)
        await bus.clock.advance(0)
        assert steps == ["analytics up", "advisor up"]
        for n in range(3):
            await bus.publish("game.round", {"n": n})
        await bus.publish("game.round", {"bad": True})
        stats = app.metrics()["analytics"]["record"]
        assert (stats.calls, stats.errors) == (4, 1)
        assert await app.health() == {"analytics": True, "advisor": True}
        healthy = False
        assert (await app.health())["advisor"] is False
        stop.set()
        await running
        assert steps[2:] == ["advisor down", "analytics down"]

    run(main)


def test_a_failing_start_hook_stops_what_started() -> None:
    async def main() -> None:
        app = App(TestBus())
        steps: list[str] = []
        first, second = app.module("first"), app.module("second")

        @first.on_stop
        async def down() -> None:
            steps.append("first down")

        @second.on_start
        async def fail() -> None:
            raise RuntimeError("no database")

        with pytest.raises(RuntimeError):
            await app.start()
        assert steps == ["first down"]
        with pytest.raises(ValueError):
            app.module("first")

    run(main)
