"""The asyncio fast path on uvloop (its transports are not asyncio.Transport subclasses)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from test_batches import (
    test_a_loop_of_emits_arrives_whole_and_in_order_both_ways as test_batches_on_uvloop,
)
from test_batches import (
    test_events_queued_in_batches_go_out_plain_to_a_server_that_takes_none as test_split_on_uvloop,
)
from test_flow import (
    test_a_handler_blocked_on_a_full_outbox_ends_when_the_peer_vanishes as test_vanish_on_uvloop,
)

# The flow-control scenarios, on uvloop's transports too (their write path is the fast one).
from test_flow import (
    test_a_handler_gets_its_reply_from_the_peer_flooding_it_with_events as test_flood_on_uvloop,
)
from test_flow import (
    test_a_peer_that_never_reads_its_replies_costs_a_bounded_amount as test_unread_on_uvloop,
)
from test_pipelined import (
    test_a_refusal_fails_what_was_sent_ahead_and_nothing_is_handled as test_refusal_on_uvloop,
)
from test_pipelined import (
    test_first_request_goes_behind_the_hello as test_pipelined_on_uvloop,
)
from test_pool import (
    test_cancelling_a_submit_cancels_the_task_in_the_worker as test_pool_cancel_on_uvloop,
)
from test_pool import (
    test_worker_sigkilled_mid_map_every_result_is_present as test_pool_map_retry_on_uvloop,
)
from test_pool import (
    test_worker_sigkilled_mid_task_is_retried as test_pool_retry_on_uvloop,
)

import ipcactors
from ipcactors import Actor

pytest.importorskip("uvloop")  # an extra; `make test` installs it
pytestmark = pytest.mark.anyio
__all__ = [
    "test_batches_on_uvloop",
    "test_flood_on_uvloop",
    "test_pipelined_on_uvloop",
    "test_pool_cancel_on_uvloop",
    "test_pool_map_retry_on_uvloop",
    "test_pool_retry_on_uvloop",
    "test_refusal_on_uvloop",
    "test_split_on_uvloop",
    "test_unread_on_uvloop",
    "test_vanish_on_uvloop",
]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module", autouse=True)
def _uvloop_global_state() -> None:
    """uvloop opens a process-wide pipe with its first loop; open it before the leak checks
    take their snapshot, so it is not mistaken for ours."""
    import asyncio

    import uvloop

    uvloop.run(asyncio.sleep(0))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_events_requests_and_bulk_on_uvloop(transport: str, socket_dir: str) -> None:
    import asyncio

    assert "uvloop" in type(asyncio.get_running_loop()).__module__
    async with Actor("world", socket_root=socket_dir, silent=True) as world_actor:
        server = await (
            world_actor.serve() if transport == "unix" else world_actor.serve_net(port=0)
        )
        seen: list[int] = []
        server.on("n", lambda data, client: seen.append(data))
        server.on("echo", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            if transport == "unix":
                world = await hello.connect_to("world")
            else:
                world = await hello.connect_to_net("world", port=server.address[1])  # type: ignore[index]
            for i in range(2000):
                await world.emit("n", i)
            blob = bytes(range(256)) * 8192  # 2 MiB
            with anyio.fail_after(10):
                assert await world.request("echo", blob) == blob
                while len(seen) < 2000:
                    await anyio.sleep(0.01)
            assert seen == list(range(2000))
            with pytest.raises(ipcactors.NoHandlerError):
                await world.request("nobody")
