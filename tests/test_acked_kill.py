"""Acknowledged events against a real server process SIGKILLed mid-stream and restarted, on
Unix and TCP, asyncio and Trio: every event is delivered at least once, in order per server
process; the duplicates are exactly those the first process delivered and never acknowledged,
and every one of them arrives flagged as redelivered; none is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import Process

import ipcactors
from ipcactors import Actor

pytestmark = pytest.mark.anyio

SERVE = os.path.join(os.path.dirname(__file__), "_serve_acked.py")
FAST_RETRY = {"retry": 0.02, "retry_cap": 0.1}
COUNT = 10_000
KILL_AT = 3_000  # delivered by the first process when it is killed (at least)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def acked_server(
    socket_dir: str, backend: str, transport: str, port: int, ledger: str
) -> AsyncIterator[Process]:
    """The acked server in a child process, started but not serving until :func:`serve`;
    terminated when the block ends (if still alive)."""
    argv = [sys.executable, SERVE, socket_dir, "world", backend, transport, str(port), ledger]
    process = await anyio.open_process(argv, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):  # reaped even when the test is cancelled
            if process.returncode is None:
                process.terminate()
            with anyio.fail_after(10):
                await process.wait()
            await process.aclose()


async def serve(process: Process) -> None:
    """Let the server process serve; return once it does."""
    assert process.stdin is not None
    assert process.stdout is not None
    await process.stdin.send(b"go\n")
    with anyio.fail_after(15):
        output = b""
        while b"READY" not in output:
            try:
                output += await process.stdout.receive()
            except anyio.EndOfStream:
                raise AssertionError(f"the server exited before serving: {output!r}") from None


def read_ledger(path: str) -> list[tuple[int, bool]]:
    with open(path, encoding="ascii") as file:
        return [(int(n), flag == "1") for n, flag in (line.split() for line in file)]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_server_sigkilled_mid_stream_loses_nothing(
    transport: str, anyio_backend: str, socket_dir: str, tmp_path: object
) -> None:
    port = free_port() if transport == "tcp" else 0
    first_ledger = os.path.join(str(tmp_path), "first")
    second_ledger = os.path.join(str(tmp_path), "second")
    emitted = 0
    async with Actor(
        "hello", socket_root=socket_dir, silent=True, acked="require", **FAST_RETRY
    ) as hello:

        async def connect() -> ipcactors.Connection:
            if transport == "tcp":
                return await hello.connect_to_net("world", "127.0.0.1", port)
            return await hello.connect_to("world")

        async with (
            acked_server(socket_dir, anyio_backend, transport, port, first_ledger) as first,
            acked_server(socket_dir, anyio_backend, transport, port, second_ledger) as second,
        ):
            await serve(first)
            with anyio.fail_after(10):
                world = await connect()
            lost = anyio.Event()
            world.on("disconnect", lost.set)

            async def emit_all() -> None:
                nonlocal emitted
                for i in range(COUNT):
                    await world.emit("n", i)
                    emitted = i + 1
                    if i % 32 == 31:
                        await anyio.sleep(0.001)  # a stream, not a burst: the kill lands mid-way

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(emit_all)
                with anyio.fail_after(20):
                    while await world.request("count") < KILL_AT:
                        await anyio.sleep(0.002)
                    first.send_signal(signal.SIGKILL)  # mid-stream: no goodbye, no last acks
                    await first.wait()  # gone, its port with it (a lost connection may be older)
                    await lost.wait()
                    while world.connected:  # and this connection seen to be gone
                        await anyio.sleep(0.002)
                    # No ack can come from a dead process: what it acknowledged is final.
                    acked_at_kill = world.statistics().events_acknowledged
                    await serve(second)  # the restart, at the same address
                    await world.wait_connected()
                    while emitted < COUNT:
                        await anyio.sleep(0.005)
                    await world.wait_acknowledged()

    first_got = read_ledger(first_ledger)
    second_got = read_ledger(second_ledger)
    firsts = [n for n, _ in first_got]
    seconds = [n for n, _ in second_got]
    assert KILL_AT <= len(firsts) < COUNT, "killed mid-stream"
    assert firsts == list(range(len(firsts)))  # in order, once each, per process
    assert seconds == sorted(seconds)
    assert len(set(seconds)) == len(seconds)
    assert set(firsts) | set(seconds) == set(range(COUNT))  # none lost
    duplicates = set(firsts) & set(seconds)
    # seq = n + 1: the duplicates are those delivered by the first process, never acknowledged.
    assert duplicates == set(firsts[acked_at_kill:])
    flagged = {n for n, flag in second_got if flag}
    assert duplicates <= flagged  # every duplicate is flagged (a flagged one may be new)
    assert not any(flag for _, flag in first_got)
    stats = world.statistics()
    assert stats.events_sequenced == stats.events_acknowledged == COUNT
    assert stats.events_reported == 0
    assert stats.events_resent >= len(duplicates)
