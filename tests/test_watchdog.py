"""The actor's watchdog keeps time for many channels: each is looked at when due, once, never
early, and not after it left, whatever the others do (the heap behind it, see ``_watchdog``)."""

from __future__ import annotations

import gc
import math
import weakref
from time import monotonic

import anyio
import pytest

from ipcactors import Actor
from ipcactors._core._watchdog import COALESCE, Watchdog

pytestmark = pytest.mark.anyio

PERIOD = 0.1


class Channel:
    """A watched channel that asks to be looked at again every ``PERIOD`` seconds."""

    def __init__(self, watchdog: Watchdog | None = None, stop_after: int = 1_000) -> None:
        self.beats: list[float] = []
        self.due = math.inf
        self.watchdog = watchdog
        self.stop_after = stop_after

    def beat(self, now: float) -> float:
        assert now >= self.due, "looked at before it was due"
        self.beats.append(now)
        if len(self.beats) >= self.stop_after and self.watchdog is not None:
            self.watchdog.leave(self)  # as a channel dropping its peer does, while beating
            return math.inf
        self.due = now + PERIOD
        return self.due


async def test_many_channels_each_beaten_when_due_and_not_after_leaving() -> None:
    async with anyio.create_task_group() as task_group:
        watchdog = Watchdog(task_group)
        start = monotonic()
        channels = [Channel() for _ in range(300)]
        for index, channel in enumerate(channels):  # due at scattered moments
            channel.due = start + PERIOD * index / len(channels)
            watchdog.join(channel, channel.due)
        leaving = channels[::3]
        dropping = [Channel(watchdog, stop_after=2) for _ in range(20)]
        for channel in dropping:
            channel.due = start
            watchdog.join(channel, start)
        await anyio.sleep(PERIOD * 2.5)
        for channel in leaving:
            watchdog.leave(channel)
        left_at = monotonic()
        rejoined = channels[1]
        rejoined.due = monotonic() + PERIOD / 2
        watchdog.join(rejoined, rejoined.due)  # a second join: one live entry, not two
        await anyio.sleep(PERIOD * 2.5)
        task_group.cancel_scope.cancel()
    for channel in channels:
        assert len(channel.beats) >= 2
        gaps = [b - a for a, b in zip(channel.beats, channel.beats[1:], strict=False)]
        assert min(gaps) >= PERIOD / 2 - COALESCE, "looked at twice for one due time"
    for channel in leaving:
        assert all(beat <= left_at for beat in channel.beats)
    for channel in dropping:
        assert len(channel.beats) == 2


async def test_a_channel_that_left_is_not_kept_alive() -> None:
    """A channel holds its peer (and a peer its shared memory): once it left, the watchdog's
    stale entry for it must not keep it alive until its time would have come."""
    async with anyio.create_task_group() as task_group:
        watchdog = Watchdog(task_group)
        channel = Channel()
        watchdog.join(channel, monotonic() + 60)
        await anyio.sleep(0)
        watchdog.leave(channel)
        gone = weakref.ref(channel)
        del channel
        gc.collect()
        assert gone() is None
        task_group.cancel_scope.cancel()


def watchdog_tasks() -> list[str]:
    return [task.name for task in anyio.get_running_tasks() if "Watchdog._run" in task.name]


async def test_the_watchdog_task_starts_when_something_falls_due(
    socket_dir: str, anyio_backend_name: str
) -> None:
    """On asyncio the actor's watchdog is a loop timer until the first heartbeat falls due: a
    connect and a request start no task for it. Heartbeats then go out on time (the peer's
    ``heartbeat_timeout`` would drop a silent client). On Trio the task starts with the first
    channel."""
    config = {"heartbeat_interval": 0.2, "heartbeat_timeout": 0.3, "silent": True}
    async with Actor("world", socket_root=socket_dir, **config) as world:
        server = await world.serve()
        server.on("ping", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, **config) as hello:
            connection = await hello.connect_to("world")
            assert await connection.request("ping", 1, timeout=5) == 1
            started = len(watchdog_tasks())
            await anyio.sleep(0.3)  # past the first heartbeat
            assert len(watchdog_tasks()) == 2  # the server's and the client's
            await anyio.sleep(0.8)  # well past interval + timeout: still connected
            assert connection.connected
            assert await connection.request("ping", 2, timeout=5) == 2
    assert started == (0 if anyio_backend_name == "asyncio" else 2)


async def test_an_actor_closed_before_its_first_heartbeat_leaves_no_timer_behind(
    socket_dir: str, anyio_backend_name: str
) -> None:
    """Its timer is cancelled with it: nothing fires into a task group that is gone."""
    errors: list[dict[str, object]] = []
    if anyio_backend_name == "asyncio":
        import asyncio

        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: errors.append(context)
        )
    async with Actor("world", socket_root=socket_dir, heartbeat_interval=0.1, silent=True) as world:
        await world.serve()
        for index in range(3):
            async with Actor(
                f"hello{index}", socket_root=socket_dir, heartbeat_interval=0.1, silent=True
            ) as hello:
                await hello.connect_to("world")
        await anyio.sleep(0.3)
    assert errors == []
