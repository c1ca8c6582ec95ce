"""The supervisor sized for its children (``max_children``), and how shutdown stops them.

Every test runs on asyncio and trio; children run on the same backend as their supervisor.
"""

from __future__ import annotations

import time
from typing import Any

import _workers
import anyio
import pytest
from _supervising import supervisor, wait_until

from ipcactors import ClosedError, ConfigError, SpawnError, Supervisor

pytestmark = pytest.mark.anyio


# --- max_children -----------------------------------------------------------------------------


async def test_a_spawn_beyond_max_children_fails_at_once(socket_dir: str) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir, max_children=3, start_timeout=10.0) as sup:
            for id in ("a", "b", "c"):
                await sup.spawn(_workers.echo, id=id)
            started = time.monotonic()
            with pytest.raises(SpawnError, match=r"max_children=3") as caught:
                await sup.spawn(_workers.echo, id="d")
            assert time.monotonic() - started < 1.0  # not after start_timeout
            assert "Supervisor(max_children=...)" in str(caught.value)
            assert list(sup.children) == ["a", "b", "c"]
            # A stopped child frees its place.
            await sup.stop("b")
            await sup.spawn(_workers.echo, id="d")
            assert await sup.request("d", "echo", 1) == 1


async def test_the_supervisors_server_is_sized_for_its_children(socket_dir: str) -> None:
    # max_connections=2 holds for the children's servers and for other clients of the
    # supervisor's actor, not for its own children: a third child still connects back.
    with anyio.fail_after(20):
        async with supervisor(socket_dir, max_connections=2, start_timeout=5.0) as sup:
            for id in ("a", "b", "c"):
                await sup.spawn(_workers.echo, id=id)
            for id in ("a", "b", "c"):
                assert await sup.request(id, "echo", id) == id


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10", None])
def test_max_children_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_children"):
        Supervisor(max_children=value)


# --- shutdown: every grace period at once, unless the strategy needs order ---------------------

STUBBORN = ("a", "b", "c")


def _killed(log_lines: list[str]) -> list[str]:
    """The children the supervisor SIGKILLed, in the order it did."""
    return [
        next(id for id in STUBBORN if f"child '{id}' " in line)
        for line in log_lines
        if "did not stop; sending SIGKILL" in line
    ]


async def test_one_for_one_stops_every_child_at_once(socket_dir: str, log_lines: list[str]) -> None:
    # Three children that ignore the stop message and SIGTERM: each needs the whole of
    # shutdown_timeout + terminate_timeout. Stopped one after another they would take three
    # times that; their grace periods run together instead.
    grace = 0.4 + 0.4
    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=0.4, terminate_timeout=0.4) as sup:
            for id in STUBBORN:
                await sup.spawn(_workers.stubborn, True, id=id)
            for id in STUBBORN:
                await sup.request(id, "pid")  # its SIGTERM disposition is set by now
            started = time.monotonic()
        elapsed = time.monotonic() - started
    assert sorted(_killed(log_lines)) == sorted(STUBBORN)
    assert grace <= elapsed < 2 * grace, elapsed


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_dependent_strategies_stop_children_one_by_one_in_reverse_start_order(
    socket_dir: str, log_lines: list[str], strategy: str
) -> None:
    # Later children usually depend on earlier ones: each gets its whole grace period only
    # after the ones started after it are gone, as OTP does.
    grace = 0.2 + 0.2
    with anyio.fail_after(20):
        async with supervisor(
            socket_dir, strategy=strategy, shutdown_timeout=0.2, terminate_timeout=0.2
        ) as sup:
            for id in STUBBORN:
                await sup.spawn(_workers.stubborn, True, id=id)
            for id in STUBBORN:
                await sup.request(id, "pid")
            started = time.monotonic()
        elapsed = time.monotonic() - started
    assert _killed(log_lines) == ["c", "b", "a"]
    assert elapsed >= 3 * grace, elapsed


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_a_child_still_starting_does_not_hold_back_the_others(
    socket_dir: str, strategy: str
) -> None:
    """supervisor.md, Shutdown: children still starting are stopped at the same time as the
    first, whatever the strategy. The last child, deaf while it starts, was stopped first and
    alone: a whole grace period passed before the running children got their stop messages."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as spawns:
            async with supervisor(
                socket_dir, strategy=strategy, shutdown_timeout=2.0, start_timeout=20
            ) as sup:
                await sup.spawn(_workers.echo, id="a")
                await sup.spawn(_workers.stubborn, True, id="b")  # 2 s + SIGTERM's 0.5 s
                await sup.spawn(_workers.echo, id="c")
                await sup.request("b", "pid")  # its SIGTERM disposition is set by now

                async def starts_slowly() -> None:
                    with pytest.raises(ClosedError):
                        await sup.spawn(_workers.blocks_before_ready, 10.0, id="slow")

                spawns.start_soon(starts_slowly)
                await wait_until(lambda: "slow" in sup.children and bool(sup.children["slow"].pid))
                await anyio.sleep(0.3)
                started = time.monotonic()
            elapsed = time.monotonic() - started
    # b's grace period (2.5 s), the slow one's running beside it (it took 2 s more first)
    assert elapsed < 2.5 + 1.3, elapsed


async def test_closing_a_supervisor_from_its_block_while_a_task_group_there_fails(
    socket_dir: str,
) -> None:
    """``aclose()`` from the block ends the rest of it; a task group there that fails as it is
    cancelled gives its error, and the code after the block runs. On Trio the block's
    exception group kept the close's own Cancelled (the supervisor showed no group to the
    scopes that owned it): ``except* ValueError`` caught the ValueError, and the Cancelled
    left by itself, ending the caller's whole run."""

    async def fails_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise ValueError("boom")  # (a cleanup that fails, on purpose)

    reached: list[str] = []
    with anyio.fail_after(20):
        try:
            async with supervisor(socket_dir) as sup:
                await sup.spawn(_workers.echo, id="w")
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(fails_when_cancelled)
                    await anyio.sleep(0.05)
                    await sup.aclose()
                    await anyio.sleep(5)
                    reached.append("after the close")
        except* ValueError:
            reached.append("ValueError")
        reached.append("after the block")
    assert reached == ["ValueError", "after the block"]
