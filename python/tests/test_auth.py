"""The SDK with credentials: a token from the argument or `GANGLION_TOKEN`, and the
server's refusals as exceptions."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import os
import secrets
from typing import Any

import pytest

from ganglion import App, Bus, Coordinator, Event, PermissionDenied, Unauthenticated
from ganglion.server import GanglionServer

from test_bus import run

TOKEN = "gng_" + secrets.token_urlsafe(32)
CONFIG = f"""
coordinator:
  pools:
    gpu: {{ gpus: ["0"] }}
auth:
  identities:
    trainer:
      tokens: ["sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"]
      permissions:
        publish: {{ allow: ["training.>"] }}
        subscribe: {{ allow: ["training.>"] }}
        resources: {{ pools: {{ allow: [gpu] }} }}
"""


@pytest.fixture
def ganglion_config() -> str:
    return CONFIG


def test_a_token_opens_what_the_identity_may_do(ganglion_server: GanglionServer, monkeypatch: Any) -> None:
    async def main() -> None:
        async with await Bus.connect(ganglion_server.grpc, token=TOKEN) as bus:
            assert (await bus.publish("training.epoch", {"loss": 0.1})).seq == 1
            with pytest.raises(PermissionDenied):
                await bus.publish("game.state", {})
        async with await Coordinator.connect(ganglion_server.grpc, token=TOKEN) as coord:
            async with coord.lease("gpu") as lease:
                assert lease.holder == "trainer", "the holder defaults to the identity"
        async with await Bus.connect(ganglion_server.grpc, token="") as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.publish("training.epoch", {})
        monkeypatch.setenv("GANGLION_TOKEN", TOKEN)
        async with await Bus.connect(ganglion_server.grpc) as from_env:
            await from_env.publish("training.epoch", {"loss": 0.05})

    run(main)


def test_a_subscription_refused_when_it_subscribes_again_marks_its_module_unhealthy(
    ganglion_server: GanglionServer, caplog: Any
) -> None:
    """After a restart under a config that no longer lets the identity subscribe, the
    handler stops (it is not retried forever), says why, and its module reports it."""

    async def main() -> None:
        async with await Bus.connect(ganglion_server.grpc, token=TOKEN) as bus:
            app = App(bus)
            trainer = app.module("trainer")

            @trainer.subscribe("training.>")
            async def on_epoch(e: Event) -> None:
                pass

            await app.start()
            assert await app.health() == {"trainer": True}
            ganglion_server.config.write_text(CONFIG.replace('subscribe: { allow: ["training.>"] }', ""))
            restart = threading.Thread(target=ganglion_server.restart)
            restart.start()
            await asyncio.to_thread(restart.join)
            for _ in range(200):
                if bus.refused:
                    break
                await asyncio.sleep(0.05)
            [(handler, error)] = bus.refused.items()
            assert isinstance(error, PermissionDenied)
            assert await app.health() == {"trainer": False}
            assert not bus._tasks, "the refused handler stopped"
            await app.stop()

    caplog.set_level(logging.ERROR, logger="ganglion.bus")
    run(main)
    assert any("refused" in r.getMessage() and "on_epoch" in r.getMessage() for r in caplog.records)
