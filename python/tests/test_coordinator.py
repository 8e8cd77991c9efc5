"""The coordinator against a real server: leases released on exit, on an exception and
on cancellation; permits; the request queue end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ganglion import Coordinator, DeadlineExceeded, LeaseRevoked

from test_bus import run


def test_a_lease_is_released_on_exit_on_an_exception_and_on_cancellation(server: Any) -> None:
    async def main() -> None:
        async with await Coordinator.connect(server.grpc) as coord:
            async with coord.lease("gpu", holder="trainer") as lease:
                assert lease.env == {"CUDA_VISIBLE_DEVICES": "0"}
                assert await coord.check_fence("gpu", lease.fencing_token)
                # Held: nobody else gets it within the wait.
                with pytest.raises(DeadlineExceeded):
                    async with coord.lease("gpu", holder="other"):
                        pass
            assert not await coord.check_fence("gpu", lease.fencing_token)

            with pytest.raises(RuntimeError):
                async with coord.lease("gpu", holder="trainer"):
                    raise RuntimeError("training failed")
            async with coord.lease("gpu", holder="trainer"):
                pass  # free again

            held = asyncio.Event()

            async def hold() -> None:
                async with coord.lease("gpu", holder="trainer"):
                    held.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(hold())
            await held.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with coord.lease("gpu", holder="trainer", wait=5):
                pass  # released by the cancellation

    run(main)


def test_permits_and_the_request_queue(server: Any) -> None:
    async def main() -> None:
        async with await Coordinator.connect(server.grpc) as coord:
            permit = await coord.permit("claude", component="advisor")
            assert permit.used == 1 and permit.remaining == 99
            assert await coord.try_permit("claude", component="advisor") is not None

            queue = coord.queue("claude")
            request_id = await queue.submit({"prompt": "next move?"}, component="advisor")

            async def worker() -> None:
                async for taken in queue.take(worker="w1", poll=5):
                    assert taken.json() == {"prompt": "next move?"}
                    await taken.complete({"move": "fold"})
                    return

            await asyncio.wait_for(worker(), 10)
            response = await queue.result(request_id, wait=5)
            assert response.ready and response.json() == {"move": "fold"}
            # The same request again is answered from the cache.
            again = await queue.submit({"prompt": "next move?"}, component="advisor")
            cached = await queue.result(again, wait=1)
            assert cached.cached and cached.json() == {"move": "fold"}

    run(main)


def test_a_revocation_interrupts_the_block_and_the_warning_comes_first(server: Any) -> None:
    async def main() -> None:
        async with await Coordinator.connect(server.grpc) as coord:
            warned: list[float] = []
            with pytest.raises(LeaseRevoked):
                async with coord.lease("gpu", holder="trainer", max_hold=0.5, on_warning=lambda _, left: warned.append(left)):
                    await asyncio.sleep(30)  # the work a revocation must stop
            assert warned and 0 < warned[0] <= 0.5
            async with coord.lease("gpu", holder="trainer", wait=5):
                pass  # free again

    run(main)
