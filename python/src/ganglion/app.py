"""An application of named modules, the seeds' module pattern: each module has its
subscriptions, `on_start` / `on_stop` hooks and a health check; every handler is
measured (count, errors, latency).

```python
app = App(await Bus.connect())
analytics = app.module("analytics")

@analytics.subscribe("game.>", durable="analytics")
async def record(event: Event) -> None: ...

@analytics.on_start
async def open_db() -> None: ...

@analytics.health
async def db_ok() -> bool: return True

await app.run()          # starts modules in order, stops them in reverse on SIGINT/SIGTERM
```
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Hook = Callable[[], Awaitable[Any]]


class _Bus(Protocol):
    def subscribe(self, pattern: str, **options: Any) -> Callable[[Any], Any]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def refused(self) -> Mapping[Any, Exception]: ...


@dataclass
class HandlerStats:
    """What one handler did: calls, failures, and time spent (seconds)."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    slowest: float = 0.0

    @property
    def mean(self) -> float:
        return self.seconds / self.calls if self.calls else 0.0


@dataclass
class Module:
    """A named part of an `App`."""

    name: str
    _subscriptions: list[tuple[str, dict[str, Any], Callable[..., Awaitable[Any]]]] = field(default_factory=list)
    _on_start: list[Hook] = field(default_factory=list)
    _on_stop: list[Hook] = field(default_factory=list)
    _health: list[Callable[[], Awaitable[bool]]] = field(default_factory=list)
    #: The measured handlers registered on the bus.
    _registered: list[Callable[..., Awaitable[Any]]] = field(default_factory=list)
    stats: dict[str, HandlerStats] = field(default_factory=dict)

    def subscribe(self, pattern: str, **options: Any) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """As `Bus.subscribe`; registered on the bus when the app starts."""

        def register(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self._subscriptions.append((pattern, options, handler))
            return handler

        return register

    def on_start(self, hook: Hook) -> Hook:
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        self._on_stop.append(hook)
        return hook

    def health(self, check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
        self._health.append(check)
        return check

    def _measured(self, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        stats = self.stats.setdefault(handler.__name__, HandlerStats())

        @functools.wraps(handler)
        async def measured(argument: Any) -> Any:
            started = time.perf_counter()
            try:
                return await handler(argument)
            except BaseException:
                stats.errors += 1
                raise
            finally:
                spent = time.perf_counter() - started
                stats.calls += 1
                stats.seconds += spent
                stats.slowest = max(stats.slowest, spent)

        return measured


class App:
    """Modules over one bus: started in the order they were added, stopped in reverse."""

    def __init__(self, bus: _Bus) -> None:
        self.bus = bus
        self.modules: dict[str, Module] = {}
        self.started: list[Module] = []

    def module(self, name: str) -> Module:
        if name in self.modules:
            raise ValueError(f"a module named {name!r} exists already")
        self.modules[name] = Module(name)
        return self.modules[name]

    async def start(self) -> None:
        """Runs each module's `on_start` hooks, then opens every subscription. A hook
        that fails stops the modules started so far and raises."""
        for module in self.modules.values():
            try:
                for hook in module._on_start:
                    await hook()
            except BaseException:
                await self.stop()
                raise
            self.started.append(module)
            for pattern, options, handler in module._subscriptions:
                measured = module._measured(handler)
                module._registered.append(measured)
                self.bus.subscribe(pattern, **options)(measured)
        await self.bus.start()

    async def stop(self) -> None:
        """Closes the subscriptions (deliveries in progress finish or are redelivered),
        then runs `on_stop` hooks, last module first."""
        await self.bus.close()
        while self.started:
            module = self.started.pop()
            for hook in reversed(module._on_stop):
                await hook()

    async def health(self) -> dict[str, bool]:
        """Each module's health: all its checks pass (a check that raises fails) and
        the server has not refused any of its subscriptions."""
        report = {}
        for name, module in self.modules.items():
            ok = not any(handler in self.bus.refused for handler in module._registered)
            for check in module._health:
                try:
                    ok = ok and bool(await check())
                except Exception:
                    ok = False
            report[name] = ok
        return report

    def metrics(self) -> dict[str, dict[str, HandlerStats]]:
        """Per module, per handler: calls, errors, time spent."""
        return {name: dict(module.stats) for name, module in self.modules.items()}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Starts, waits for SIGINT or SIGTERM (or `stop`), then stops gracefully."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
