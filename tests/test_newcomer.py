"""What a newcomer hits first: errors that say what to do, node-ipc habits, public names."""

from __future__ import annotations

import dataclasses
import inspect
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import ipcactors
from ipcactors import Actor

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", ipcactors.__all__)
def test_public_names_print_as_ipcactors(name: str) -> None:
    public = getattr(ipcactors, name)
    assert public.__module__ == "ipcactors"
    if isinstance(public, type):
        assert repr(public) == f"<class 'ipcactors.{name}'>"


def test_an_error_in_a_traceback_reads_ipcactors_dot_name() -> None:
    import traceback

    text = "".join(traceback.format_exception(ipcactors.ConfigError("full")))
    assert "ipcactors.ConfigError: full" in text
    assert "_errors" not in text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_refuses_a_coroutine_and_says_what_to_pass(backend: str) -> None:
    async def main() -> None:
        pass

    coroutine = main()
    with pytest.raises(ipcactors.ConfigError, match=r"run\(main\), not ipcactors.run\(main\(\)\)"):
        ipcactors.run(coroutine, backend=backend, log_level=None)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == "CORO_CLOSED"  # no "never awaited" warning


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_refuses_a_sync_function_and_says_async_def(backend: str) -> None:
    def main() -> int:
        return 1

    with pytest.raises(ipcactors.ConfigError, match=r"returned int, not an awaitable.*async def"):
        ipcactors.run(main, backend=backend, log_level=None)  # type: ignore[arg-type]
    with pytest.raises(ipcactors.ConfigError, match="takes an async function"):
        ipcactors.run(42, log_level=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_refuses_an_unknown_log_level_and_a_loop_already_running(backend: str) -> None:
    """Both were plain Python errors (loguru's ValueError, after run() had removed every
    sink; anyio's RuntimeError 'Already running asyncio in this thread')."""

    async def main() -> int:
        return 1

    with pytest.raises(ipcactors.ConfigError, match=r"log_level.*LOUD"):
        ipcactors.run(main, backend=backend, log_level="LOUD")
    coroutine = main()
    with pytest.raises(ipcactors.ConfigError, match=r"run\(main\), not"):
        ipcactors.run(coroutine, backend=backend, log_level="LOUD")  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == "CORO_CLOSED"  # no "never awaited" warning
    with pytest.raises(ipcactors.ConfigError, match="log_level"):
        ipcactors.run(main, backend=backend, log_level=-1)  # type: ignore[arg-type]

    async def nested() -> None:
        with pytest.raises(ipcactors.IPCError, match=r"inside a running event loop.*await"):
            ipcactors.run(main, backend=backend, log_level=None)

    assert ipcactors.run(nested, backend=backend, log_level=None) is None


def test_retry_in_node_ipc_milliseconds_says_seconds() -> None:
    with pytest.raises(ipcactors.ConfigError, match=r"in seconds.*milliseconds.*retry=1\.5"):
        ipcactors.Config(retry=1500)
    assert ipcactors.Config(retry=2, retry_cap=10).retry == 2


def test_assigning_to_a_config_says_what_to_do_instead() -> None:
    config = ipcactors.Config()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"replace\(retry=\.\.\.\)"):
        config.retry = 2  # type: ignore[misc]
    assert config.replace(retry=2).retry == 2


async def test_of_by_attribute_as_in_node_ipc(socket_dir: str) -> None:
    async with (
        Actor("world", socket_root=socket_dir, silent=True) as world,
        Actor("hello", socket_root=socket_dir, silent=True) as hello,
    ):
        server = await world.serve()
        server.on("add", lambda numbers, client: sum(numbers))
        with anyio.fail_after(10):
            connection = await hello.connect_to("world")
            assert hello.of.world is connection is hello.of["world"]
            assert await hello.of.world.request("add", [1, 2]) == 3
        assert "world" in hello.of
        assert hello.of.get("nobody") is None
        assert list(hello.of) == ["world"]
        assert len(hello.of) == 1
        with pytest.raises(ipcactors.UnknownPeerError, match=r"no connection to 'nobody'.*'world'"):
            hello.of["nobody"]
        with pytest.raises(KeyError):  # still a KeyError, as with a dict
            hello.of["nobody"]
        with pytest.raises(AttributeError, match=r"connect_to\('nobody'\)"):
            hello.of.nobody  # noqa: B018
        assert not hasattr(hello.of, "nobody")
        assert str(ipcactors.UnknownPeerError("plain")) == "plain"


async def test_positional_port_with_udp_is_a_clear_error(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        with pytest.raises(ipcactors.ConfigError, match=r"serve_net\(port=8001\)"):
            await world.serve_net(8001, udp="udp4")  # type: ignore[call-overload]


async def test_a_handshake_that_ends_early_is_logged_with_its_reason(
    socket_dir: str, log_lines: list[str]
) -> None:
    async with Actor("world", socket_root=socket_dir) as world:
        server = await world.serve_net(port=0)
        host, port = server.address
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp(host, port)
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.send(b"\x00")  # half a frame, then a reset
            await stream.aclose()
            while not any("handshake with" in line for line in log_lines):
                await anyio.sleep(0.01)
    line = next(line for line in log_lines if "handshake with" in line)
    assert "failed: the connection broke (ConnectionResetError" in line


async def test_a_worker_lifecycle_logs_one_info_line_per_step(
    socket_dir: str, log_lines: list[str]
) -> None:
    import _workers

    with anyio.fail_after(20):
        async with ipcactors.Supervisor(socket_root=socket_dir) as sup:
            await sup.spawn(_workers.echo, id="w1")
            await sup.stop("w1")
    about_w1 = [line for line in log_lines if "INFO" in line and "'w1'" in line]
    assert len(about_w1) == 2, about_w1  # ready, then stopped: not connected/disconnected too
    assert "ready" in about_w1[0]
    assert "stopped" in about_w1[1]


UNGUARDED = """
import anyio, ipcactors, sys

async def worker(actor):
    await anyio.sleep_forever()

async def main():
    async with ipcactors.Supervisor(socket_root=sys.argv[1]) as sup:
        await sup.spawn(worker, id="w1")
        print("spawned")

{start}
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "start",
    [
        "ipcactors.run(main, backend={backend!r})",
        "anyio.run(main, backend={backend!r})",
    ],
)
def test_a_script_without_a_main_guard_is_told_so(
    backend: str, start: str, socket_dir: str, tmp_path: Path
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(start=start.format(backend=backend)))
    done = subprocess.run(
        [sys.executable, str(script), socket_dir],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode != 0
    assert "spawned" not in done.stdout  # no nested supervisor in the child
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ipcactors.SpawnError: child 'w1' could not load its target"), last
    assert "the script starts it at import time" in last
    assert """under 'if __name__ == "__main__":'""" in last
    assert "define the function at its top level" not in last


async def test_a_missing_handler_says_where_to_register_one(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        await world.serve()
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(5), pytest.raises(ipcactors.NoHandlerError) as caught:
                await connection.request("divide", [1, 0])
    assert str(caught.value).startswith("no handler for 'divide' on the peer: register one")
    assert "actor.server" in str(caught.value)
    assert "ipcactors.NoHandler" not in str(caught.value)  # no class of that name to look up


async def test_server_port_is_the_port_picked_typed(socket_dir: str) -> None:
    """``host, port = server.address`` does not type-check (a Unix server's is a str):
    ``server.port`` is the int, and a Unix server says it has none."""
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve_net("127.0.0.1", 0)
        assert server.port == server.address[1] > 0
    async with Actor("unix", socket_root=socket_dir, silent=True) as unix:
        server = await unix.serve()
        with pytest.raises(ipcactors.IPCError, match="no port"):
            server.port  # noqa: B018
