"""A supervised child is reachable by its siblings only once it is ready: a sibling that
reconnects after the child's restart is welcomed once the new incarnation's function has
registered its handlers, so the events it queued meanwhile are handled and its requests
answered (none lost to a missing handler, none refused). Then the mechanism beneath, a held
server: what it does with the clients it holds, and how long it holds them.

Every test runs on asyncio and trio; children run on the same backend as their supervisor.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import _ready_workers
import anyio
import pytest

from ipcactors import Actor, Client, ServerBusyError, Supervisor
from ipcactors._core._server import Server

pytestmark = pytest.mark.anyio

RESTARTS = 20


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


# --- siblings across restarts ---------------------------------------------------------------


async def test_sibling_stream_reaches_every_new_incarnation(socket_dir: str) -> None:
    got: defaultdict[int, list[int]] = defaultdict(list)  # by the sink's pid
    downs: list[int] = []  # per lost connection: the first event queued for the next one

    def on_got(data: list[int], client: Client) -> None:
        got[data[0]].append(data[1])

    def on_down(first_queued: int, client: Client) -> None:
        downs.append(first_queued)

    with anyio.fail_after(60):
        async with Supervisor(
            socket_root=socket_dir,
            retry=0.002,  # a fast retry: the source is back before the new sink's function runs
            retry_cap=0.01,
            max_restarts=RESTARTS + 2,
            max_seconds=120.0,
            shutdown_timeout=2.0,
            terminate_timeout=0.5,
        ) as sup:
            sup.on("got", on_got)
            sup.on("down", on_down)
            await sup.spawn(_ready_workers.sink, id="sink")
            await sup.spawn(_ready_workers.source, "sink", 0.002, id="source")
            for restart in range(RESTARTS):
                pid = sup.children["sink"].pid
                assert pid is not None
                await wait_until(lambda: len(got[pid]) >= 10)  # noqa: B023
                os.kill(pid, signal.SIGKILL)
                await wait_until(lambda: len(downs) > restart)  # noqa: B023
                await wait_until(lambda: _restarted(sup, pid))  # noqa: B023
                new_pid = sup.children["sink"].pid
                assert new_pid is not None
                first = downs[restart]
                # Every event queued while the sink was down, and every one after, is handled
                # by the new incarnation, in order: none dropped for want of a handler.
                await wait_until(lambda: max(got[new_pid], default=-1) >= first + 10)  # noqa: B023
                handled = got[new_pid]
                missing = sorted(set(range(first, max(handled) + 1)) - set(handled))
                assert not missing, f"restart {restart + 1}: events {missing} never handled"
            counts: dict[str, Any] = await sup.request("source", "counts", timeout=10)
    assert counts["refused"] == 0, counts
    assert counts["answered"] > 0
    assert counts["reconnects"] >= RESTARTS


def _restarted(sup: Supervisor, old_pid: int) -> bool:
    info = sup.children.get("sink")
    return info is not None and info.running and info.pid not in (None, old_pid)


# --- a held server ----------------------------------------------------------------------------


async def held_server(actor: Actor, seen: list[int] | None = None) -> Server:
    """Serve as a supervised child does until it is ready: held. Events ``n`` go to ``seen``."""
    server = await actor._serve(actor._unix_transport(None), held=True)
    server.on("n", lambda n, client: (seen if seen is not None else []).append(n))
    server.on("echo", lambda data, client: data)
    return server


async def test_held_clients_are_welcomed_on_release_with_what_they_queued(
    socket_dir: str,
) -> None:
    seen: list[int] = []
    common: dict[str, Any] = {"socket_root": socket_dir, "silent": True}
    with anyio.fail_after(10):
        # One handshake at a time: held clients are out of that budget, none is dropped.
        async with Actor("srv", max_handshakes=1, **common) as actor:
            server = await held_server(actor, seen)
            async with Actor("a", **common) as a, Actor("b", **common) as b:
                connected: list[str] = []
                async with anyio.create_task_group() as task_group:

                    async def connect(client: Actor) -> None:
                        connection = await client.connect_to("srv")
                        connected.append(client.id)
                        if client is a:
                            await connection.emit("n", 1)
                            assert await connection.request("echo", 2) == 2

                    task_group.start_soon(connect, a)
                    await wait_until(lambda: server.statistics().held == 1)
                    task_group.start_soon(connect, b)  # a held client leaves room for it
                    await wait_until(lambda: server.statistics().held == 2)
                    stats = server.statistics()
                    assert (stats.handshaking, stats.clients, stats.handshakes_dropped) == (0, 0, 0)
                    await anyio.sleep(0.1)
                    assert connected == []
                    assert seen == []
                    server.start()
                assert sorted(connected) == ["a", "b"]
                assert seen == [1]
                assert sorted(server.clients) == ["a", "b"]
                assert server.statistics().held == 0


async def test_a_held_client_is_refused_busy_before_its_handshake_deadline(
    socket_dir: str,
) -> None:
    common: dict[str, Any] = {"socket_root": socket_dir, "silent": True}
    with anyio.fail_after(10):
        async with Actor("srv", handshake_timeout=0.3, **common) as actor:
            server = await held_server(actor)
            async with Actor("a", stop_retrying=0, **common) as a:
                with pytest.raises(ServerBusyError, match="not ready yet"):
                    await a.connect_to("srv")
            assert server.statistics().refused_busy == 1
            assert server.statistics().held == 0
            server.start()
            async with Actor("a", stop_retrying=0, **common) as a:  # served once released
                connection = await a.connect_to("srv")
                assert await connection.request("echo", 3) == 3


async def test_held_clients_are_refused_when_the_server_closes_first(socket_dir: str) -> None:
    common: dict[str, Any] = {"socket_root": socket_dir, "silent": True}
    with anyio.fail_after(10):
        async with Actor("a", stop_retrying=0, **common) as a:
            async with Actor("srv", **common) as actor:
                server = await held_server(actor)
                async with anyio.create_task_group() as task_group:

                    async def connect() -> None:
                        with pytest.raises(ServerBusyError, match="closed before it was ready"):
                            await a.connect_to("srv")

                    task_group.start_soon(connect)
                    await wait_until(lambda: server.statistics().held == 1)
                    await server.aclose()


async def test_a_newer_attempt_with_the_same_id_takes_the_held_place(socket_dir: str) -> None:
    common: dict[str, Any] = {"socket_root": socket_dir, "silent": True}
    with anyio.fail_after(10):
        async with Actor("srv", **common) as actor:
            server = await held_server(actor)
            async with (
                Actor("twin", stop_retrying=0, **common) as older,
                Actor("twin", stop_retrying=0, **common) as newer,
            ):
                results: dict[str, Any] = {}
                async with anyio.create_task_group() as task_group:

                    async def connect(name: str, client: Actor) -> None:
                        try:
                            connection = await client.connect_to("srv")
                        except Exception as exc:
                            results[name] = exc
                        else:
                            results[name] = await connection.request("echo", name)

                    task_group.start_soon(connect, "older", older)
                    await wait_until(lambda: server.statistics().held == 1)
                    task_group.start_soon(connect, "newer", newer)
                    await wait_until(lambda: "older" in results)  # dropped for the newer
                    assert server.statistics().held == 1
                    server.start()
                assert results["newer"] == "newer"
                assert isinstance(results["older"], Exception)
                assert list(server.clients) == ["twin"]
