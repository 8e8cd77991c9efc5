"""The SDK with credentials: a token from the argument or `GANGLION_TOKEN`, and the
server's refusals as exceptions."""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

import pytest

from ganglion import Bus, Coordinator, PermissionDenied, Unauthenticated
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
