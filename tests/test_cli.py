"""The ``ipcactors`` command, run as a subprocess against real actors (docs/cli.md).

Each test runs ``python -m ipcactors ...`` (the console script calls the same ``main``); the
actors it talks to run in the test, on the test's backend, or are other commands (``listen``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pty
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from _node_peers import node_peer
from anyio.abc import Process

from ipcactors import Actor, Client

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FAST: dict[str, Any] = {"retry": 0.05, "retry_cap": 0.2, "silent": True}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ipcactors", *args]


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (bounded); its status, stdout and stderr as text."""
    with anyio.fail_after(30):
        result = await anyio.run_process(
            command(*args), cwd=ROOT, check=False, env={**os.environ, **(env or {})}
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def cli_sync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cli`` for tests that need no actor of their own (no event loop, no backend)."""
    return subprocess.run(
        command(*args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@asynccontextmanager
async def running(args: list[str], stderr: int = subprocess.DEVNULL) -> AsyncIterator[Process]:
    """A command in a subprocess (``listen``, or one a test signals); killed if the test ends
    with it still running (so that a failed assertion shows, instead of a wait for a process
    nobody stops)."""
    process = await anyio.open_process(args, cwd=ROOT, stderr=stderr)
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_listen_prints_what_arrives_and_echoes_requests(
    socket_dir: str, anyio_backend: str
) -> None:
    """listen as an actor id on a Unix socket; request, emit and ping from other commands."""
    base = ("--socket-root", socket_dir)
    listen = command("listen", "world", "--json", "--backend", anyio_backend, *base)
    async with running(listen) as process:
        assert process.stdout is not None
        lines: list[dict[str, Any]] = []
        buffer = b""

        async def until(condition: Any) -> None:
            nonlocal buffer
            with anyio.fail_after(20):
                while not condition():
                    buffer += await process.stdout.receive()  # type: ignore[union-attr]
                    *complete, buffer = buffer.split(b"\n")
                    lines.extend(json.loads(line) for line in complete)

        await until(lambda: any(line["type"] == "listening" for line in lines))
        assert lines[0]["id"] == "world"
        assert lines[0]["address"] == os.path.join(socket_dir, "app.world")

        reply = await cli("request", "world", "add", "[1, 2]", "--id", "asker", *base)
        assert (reply.returncode, reply.stdout, reply.stderr) == (0, "[1, 2]\n", "")
        sent = await cli("emit", "world", "message", '{"text": "héllo"}', "--id", "teller", *base)
        assert (sent.returncode, sent.stdout) == (0, "")
        await until(lambda: any(line.get("event") == "message" for line in lines))
        got = [line for line in lines if line["type"] in ("event", "request")]
        assert got == [
            {"type": "request", "from": "asker", "event": "add", "data": [1, 2]},
            {"type": "event", "from": "teller", "event": "message", "data": {"text": "héllo"}},
        ]
        assert {"type": "connected", "from": "asker"} in lines

        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            assert await process.wait() == 0
    assert not os.path.exists(os.path.join(socket_dir, "app.world"))


async def test_request_and_emit_over_tcp_udp_and_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    got: list[object] = []
    async with Actor("world", **FAST) as ipc, Actor("udp-world", **FAST) as udp_ipc:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        server = await ipc.serve_net("127.0.0.1", 0, tls=context)
        server.on("add", lambda numbers, client: sum(numbers))
        server.on("message", lambda data, client: got.append(data))
        udp = await udp_ipc.serve_net("127.0.0.1", 0, udp="udp4")
        udp.on("add", lambda numbers, peer: sum(numbers))
        port = server.address[1]
        tls = f"tls://127.0.0.1:{port}"

        reply = await cli("request", tls, "add", "[1, 2]", "--cafile", str(tmp_path / "ca.pem"))
        assert (reply.returncode, reply.stdout) == (0, "3\n"), reply.stderr
        sent = await cli("emit", tls, "message", '"hi"', "--cafile", str(tmp_path / "ca.pem"))
        assert sent.returncode == 0, sent.stderr
        assert got == ["hi"]

        udp_port = udp.address[1]
        reply = await cli("request", f"udp://127.0.0.1:{udp_port}", "add", "[2, 3]", "--json")
        assert reply.returncode == 0, reply.stderr
        (record,) = json_lines(reply.stdout)
        assert record["reply"] == 5
        assert record["ms"] >= 0

        # no --cafile: a usage error saying what is missing
        missing = await cli("request", tls, "add", "[1]")
        assert missing.returncode == 2
        assert "--cafile" in missing.stderr


async def test_ping_counts_round_trips_and_summarises(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        await ipc.serve()  # no handler for "ping": "no handler" is a reply all the same
        base = ("--socket-root", socket_dir)
        result = await cli("ping", "-c", "3", "-i", "0.05", "world", "--json", *base)
        assert result.returncode == 0, result.stderr
        *pings, summary = json_lines(result.stdout)
        assert [ping["seq"] for ping in pings] == [1, 2, 3]
        stats = summary["summary"]
        assert (stats["sent"], stats["received"], stats["loss_percent"]) == (3, 3, 0.0)
        assert stats["min"] <= stats["avg"] <= stats["max"]

        human = await cli("ping", "-c", "2", "-i", "0.05", "world", *base)
        assert human.returncode == 0, human.stderr
        assert human.stdout.count("reply from world: seq=") == 2
        assert "2 sent, 2 received, 0% lost" in human.stdout
        assert "rtt min/avg/max/mdev = " in human.stdout
        assert "\x1b[" not in human.stdout  # no colour when stdout is not a terminal


async def test_ping_counts_a_reply_carrying_a_remote_error_as_a_round_trip(
    socket_dir: str, anyio_backend: str
) -> None:
    """A handler that raised still answered: ping goes on and sums up, exit 0 (it stopped
    at that reply with the RemoteError alone, no summary, exit 1)."""
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()
        pings = 0

        @server.on("ping")
        def ping(data: object, client: Client) -> None:
            nonlocal pings
            pings += 1
            if pings == 2:
                raise ValueError("transient")

        base = ("--socket-root", socket_dir, "--backend", anyio_backend)
        result = await cli("ping", "-c", "3", "-i", "0.05", "world", "--json", *base)
    assert result.returncode == 0, result.stderr
    *replies, summary = json_lines(result.stdout)
    assert [reply["seq"] for reply in replies] == [1, 2, 3]
    assert (summary["summary"]["sent"], summary["summary"]["received"]) == (3, 3)


async def test_errors_say_what_happened_with_a_status(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()

        @server.on("fail")
        def fail(data: object, client: Client) -> None:
            raise ValueError("no such thing")

        base = ("--socket-root", socket_dir)
        remote = await cli("request", "world", "fail", *base)
        assert remote.returncode == 1
        assert "ipcactors.RemoteError" in remote.stderr
        assert "no such thing" in remote.stderr
        as_json = await cli("request", "world", "fail", "--json", *base)
        assert json_lines(as_json.stderr)[0]["error"] == "ipcactors.RemoteError"

    absent = await cli("request", "nobody", "x", "--socket-root", socket_dir, "--timeout", "3")
    assert absent.returncode == 1
    assert "ConnectionFailedError" in absent.stderr


def test_usage_errors_exit_2_saying_what_to_do() -> None:
    for args, says in [
        (("request", "world", "x", "{not json"), "DATA must be JSON"),
        (("emit", "ftp://host:1", "x"), "unknown scheme"),
        (("emit", "tcp://127.0.0.1", "x"), "needs a host and a port"),
        (("emit", "a/b", "x"), "unix:a/b"),
        (("request",), "the following arguments are required"),
        (("run", "nocolon"), "module:function"),
        (("run", "no_such_module_here:main"), "no module named"),
        (("ping", "-c", "0", "world"), "at least 1"),
        (("request", "world", "x", "--timeout", "nan"), "--timeout"),
        (("ping", "world", "--timeout", "-1"), "--timeout"),
        (("emit", "world", "x", "--timeout", "0"), "--timeout"),
        (("emit", "tls://127.0.0.1:1", "x", "--cafile", "/no/such/ca.pem"), "/no/such/ca.pem"),
        # An empty --id is refused as the library refuses it (it fell back to the default)
        (("emit", "world", "x", "--id", ""), "actor id must be"),
        (("listen", "tcp://127.0.0.1:0", "--id", ""), "actor id must be"),
        # A bad event name too, before connecting (it was ConnectionFailedError, exit 1)
        (("emit", "nobody-here", ""), "event name must be"),
        (("request", "nobody-here", "\udcff"), "UTF-8"),
        (("emit", "nobody-here", "connect"), "reserved"),
        (("emit", "nobody-here", "error", "--codec", "node-ipc"), "lifecycle event name"),
        (("ping", "nobody-here", "--event", ""), "event name must be"),
        (("ping", "nobody-here", "--event", "connect"), "reserved"),
    ]:
        result = cli_sync(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr, (args, result.stderr)


@asynccontextmanager
async def read_one_chunk_then_close(args: list[str]) -> AsyncIterator[tuple[Process, bytes]]:
    """Run ``args`` with stdout a pipe of our own; read its first chunk, then close our end,
    as ``| head -1`` does (anyio's asyncio process streams do not close the pipe on aclose).
    The process is killed if the test ends with it still running."""
    read_end, write_end = os.pipe()
    # Unbuffered, as under python -u: each line must still leave in one write (the first
    # chunk is a whole line, and the process does not stop before it is told something).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await anyio.open_process(
        args, cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, env=env
    )
    os.close(write_end)
    try:
        try:
            with anyio.fail_after(20):
                await anyio.wait_readable(read_end)
                first = os.read(read_end, 65536)
        finally:
            os.close(read_end)
        yield process, first
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def test_ping_and_listen_stop_when_their_output_closes(socket_dir: str) -> None:
    """``ipcactors ping ... | head -1`` and ``ipcactors listen ... | head -1``: once stdout is
    closed, ping stops and exits 0 (a reply came back) and listen stops, as at a signal,
    removing its socket file; no BrokenPipeError. (ping exited 1 with a BrokenPipeError;
    listen kept serving for ever, dropping events and failing requests.)"""
    base = ["--socket-root", socket_dir]
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        await ipc.serve()
        ping = command("ping", "-c", "50", "-i", "0.05", "world", *base)
        async with read_one_chunk_then_close(ping) as (process, first):
            assert b"reply from world" in first
            with anyio.fail_after(20):
                status = await process.wait()
            assert process.stderr is not None
            errors = b"".join([chunk async for chunk in process.stderr])
        assert status == 0, errors
        assert b"BrokenPipe" not in errors
        assert b"Traceback" not in errors

    # listen stops by itself, with nothing more to write (Output.watch).
    async with read_one_chunk_then_close(command("listen", "hello", *base)) as (process, first):
        assert b"listening as 'hello'" in first
        with anyio.fail_after(20):
            status = await process.wait()
        assert process.stderr is not None
        errors = b"".join([chunk async for chunk in process.stderr])
    assert status == 0, errors
    assert b"Traceback" not in errors
    assert os.listdir(socket_dir) == []


async def test_listen_stops_when_its_output_closes_with_nothing_more_to_say(
    socket_dir: str, anyio_backend_name: str
) -> None:
    """``ipcactors listen ... | head -3``: head took its lines and went, and listen had written
    all it had to say (the client's "disconnected" line too, in the pipe before head went):
    it stops all the same, exit 0. It learnt of the closed pipe only at its next write, and
    with no more traffic served on for ever."""
    base = ["--socket-root", socket_dir, "--backend", anyio_backend_name]
    read_end, write_end = os.pipe()
    process = await anyio.open_process(
        command("listen", "hello", *base), cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    try:
        seen = b""
        try:
            with anyio.fail_after(20):
                while b"listening" not in seen:
                    await anyio.wait_readable(read_end)
                    seen += os.read(read_end, 65536)
                sent = await cli("emit", "hello", "news", "1", *base)
                assert sent.returncode == 0, sent.stderr
                while b"disconnected" not in seen:
                    await anyio.wait_readable(read_end)
                    seen += os.read(read_end, 65536)
        finally:
            os.close(read_end)
        with anyio.fail_after(10):
            status = await process.wait()
        assert process.stderr is not None
        errors = b"".join([chunk async for chunk in process.stderr])
        assert status == 0, errors
        assert os.listdir(socket_dir) == []
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


def test_help_texts_show_examples() -> None:
    top = cli_sync("--help")
    assert top.returncode == 0
    assert "examples:" in top.stdout
    assert "exit status" in top.stdout
    for name in ("listen", "emit", "request", "ping", "run", "bench"):
        result = cli_sync(name, "--help")
        assert result.returncode == 0, name
        assert "examples:" in result.stdout, name


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_starts_an_entry_point_like_run(tmp_path: Path, backend: str) -> None:
    (tmp_path / "cli_entry.py").write_text(
        "import sniffio\n"
        "async def main(name='x'):\n"
        "    print('hello', name, sniffio.current_async_library(), flush=True)\n"
        "async def broken():\n"
        "    raise ValueError('broken on purpose')\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = cli_sync("run", "cli_entry:main", "world", "--backend", backend, env=env)
    assert (result.returncode, result.stdout) == (0, f"hello world {backend}\n"), result.stderr
    broken = cli_sync("run", "cli_entry:broken", "--backend", backend, env=env)
    assert broken.returncode == 1
    assert "broken on purpose" in broken.stderr
    missing = cli_sync("run", "cli_entry:nothing", env=env)
    assert missing.returncode == 2
    assert "has no function 'nothing'" in missing.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_exits_as_run_does_whatever_the_function_raises(tmp_path: Path, backend: str) -> None:
    """cli.md: the exit status is run()'s, 1 with the traceback when it raises. What the
    function raised went through the command's own error handling: an ipcactors error, an
    OSError, a KeyboardInterrupt were printed as the command's one-line error (a ConfigError
    with status 2, a usage error), without the traceback that would show where it came from."""
    (tmp_path / "raising_entry.py").write_text(
        "import ipcactors\n"
        "async def config_error():\n"
        "    ipcactors.Config(retry=-5)\n"
        "async def os_error():\n"
        "    open('/nonexistent/raising_entry')\n"
        "async def ipc_error():\n"
        "    raise ipcactors.ClosedError('closed on purpose')\n"
        "async def interrupted():\n"
        "    raise KeyboardInterrupt\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    for name in ("config_error", "os_error", "ipc_error", "interrupted"):
        via_command = cli_sync("run", f"raising_entry:{name}", "--backend", backend, env=env)
        direct = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import ipcactors, raising_entry\n"
                f"ipcactors.run(raising_entry.{name}, backend={backend!r})",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert via_command.returncode == direct.returncode != 0, (name, via_command.stderr)
        for result in (via_command, direct):
            assert "Traceback (most recent call last)" in result.stderr, (name, result.stderr)
            assert "raising_entry.py" in result.stderr, (name, result.stderr)


def test_bench_lists_the_suite() -> None:
    result = cli_sync("bench", "--", "--list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_bench_stops_quietly_when_its_output_closes() -> None:
    """``ipcactors bench -- --list | head -1``: the reader is gone before the list is written;
    the suite stops with status 0 and no traceback (it ended in a BrokenPipeError)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            command("bench", "--", "--list"),
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


async def test_codec_node_ipc_talks_to_a_node_ipc_server(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "node.sock")
    async with node_peer("server.mjs", "9", "unix", path, "echo,message") as node:
        await node.expect("ready")
        target = f"unix:{path}"
        sent = await cli("emit", target, "message", '{"text": "✓"}', "--codec", "node-ipc")
        assert sent.returncode == 0, sent.stderr
        assert await node.expect_received("message") == [{"text": "✓"}]
        # node-ipc has no requests: said at once, status 1
        asked = await cli("request", target, "echo", "1", "--codec", "node-ipc")
        assert asked.returncode == 1
        assert "UnsupportedError" in asked.stderr
        await node.command(cmd="stop")  # removes its socket file


async def test_listen_with_codec_node_ipc_hears_a_python_node_ipc_client(
    socket_dir: str,
) -> None:
    base = ("--socket-root", socket_dir, "--codec", "node-ipc", "--json")
    listen = command("listen", "world", *base)
    async with running(listen) as process:
        assert process.stdout is not None
        buffer = b""

        async def next_line() -> dict[str, Any]:
            nonlocal buffer
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()  # type: ignore[union-attr]
            line, buffer = buffer.split(b"\n", 1)
            return json.loads(line)  # type: ignore[no-any-return]

        with anyio.fail_after(20):
            assert (await next_line())["type"] == "listening"
            options: dict[str, Any] = {"codec": "node-ipc", "socket_root": socket_dir, **FAST}
            async with Actor("hello", **options) as ipc:
                world = await ipc.connect_to("world")
                await world.emit("message", ["a", 1])
                assert (await next_line())["type"] == "connected"
                assert await next_line() == {
                    "type": "event",
                    "from": "node-ipc-1",
                    "event": "message",
                    "data": ["a", 1],
                }
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


def test_main_is_the_console_script() -> None:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as file:
        scripts = tomllib.load(file)["project"]["scripts"]
    assert scripts == {"ipcactors": "ipcactors._cli:main_exit"}
    from ipcactors import _cli

    assert _cli.main(["emit", "", "x"]) == 2


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    """An error on a terminal starts in red; NO_COLOR (any value) and a pipe keep it plain."""

    base = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    base["TERM"] = "xterm"

    def stderr_of(env: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        try:
            process = subprocess.run(
                command("emit", "a/b", "x"),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=follower,
                timeout=60,
                check=False,
                env={**base, **env},
            )
            assert process.returncode == 2
            os.close(follower)
            follower = -1
            text = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the terminal has no writer left
                    break
                if not chunk:
                    break
                text += chunk
            return text.decode()
        finally:
            os.close(leader)
            if follower != -1:
                os.close(follower)

    coloured = stderr_of({})
    assert "\x1b[1;31mipcactors: error:\x1b[0m" in coloured
    plain = stderr_of({"NO_COLOR": "1"})
    assert "ipcactors: error: 'a/b' is not an actor id" in plain
    assert "\x1b[" not in plain
    piped = cli_sync("emit", "a/b", "x")
    assert "\x1b[" not in piped.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_listen_on_udp_answers_a_udp_request(host: str) -> None:
    """Over IPv4 and IPv6; addresses shown as a target writes them (an IPv6 host in brackets:
    it showed '::1:43997', which no target can say)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    target = f"udp://{shown}:{port}"
    listen = command("listen", target, "--json", "--reply", '{"ok": true}')
    async with running(listen) as process:
        assert process.stdout is not None
        buffer = b""

        async def next_line() -> dict[str, Any]:
            nonlocal buffer
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()  # type: ignore[union-attr]
            line, buffer = buffer.split(b"\n", 1)
            return json.loads(line)  # type: ignore[no-any-return]

        with anyio.fail_after(20):
            listening = await next_line()
            assert (listening["type"], listening["address"]) == ("listening", f"{shown}:{port}")
            reply = await cli("request", target, "status", "[1]")
            assert (reply.returncode, reply.stdout) == (0, '{"ok": true}\n'), reply.stderr
            line = await next_line()
            assert (line["type"], line["event"], line["data"]) == ("request", "status", [1])
            assert line["from"].startswith(f"{shown}:")
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


EARLY_SIGNAL = """
import os, sys
import anyio
from ipcactors import _cli

loop_run = anyio.run

def signalled_run(*args, **kwargs):
    os.kill(os.getpid(), int(sys.argv[1]))  # as the command enters its event loop
    return loop_run(*args, **kwargs)

anyio.run = signalled_run
sys.exit(_cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_listen_stopped_while_it_starts_still_stops_gracefully(
    backend: str, signum: signal.Signals, tmp_path: Path
) -> None:
    # The signal came before listen watched for it: Ctrl-C gave a KeyboardInterrupt traceback
    # and SIGTERM killed it (its socket file left behind).
    args = ["listen", "world", "--socket-root", str(tmp_path), "--backend", backend]
    done = subprocess.run(
        [sys.executable, "-c", EARLY_SIGNAL, str(int(signum)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening as 'world'" in done.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_request_and_emit_stop_at_a_signal(
    backend: str, signum: signal.Signals, socket_dir: str
) -> None:
    """A request waiting for its reply (or an emit for its connection) stops at SIGINT or
    SIGTERM with 128 + N, as a command interrupted does. The signal was kept and never read:
    the command went on to its --timeout (only SIGKILL stopped a long one)."""
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()
        asked = anyio.Event()

        @server.on("slow")
        async def slow(data: object, client: Client) -> None:
            asked.set()
            await anyio.sleep(60)

        base = ["--socket-root", socket_dir, "--backend", backend, "--timeout", "60"]
        async with running(command("request", "world", "slow", *base)) as process:
            with anyio.fail_after(20):
                await asked.wait()
                started = anyio.current_time()
                process.send_signal(signum)
                status = await process.wait()
            assert status == 128 + signum
            assert anyio.current_time() - started < 10


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_ping_stops_at_a_signal_while_it_connects(
    backend: str, signum: signal.Signals, socket_dir: str
) -> None:
    """Ctrl-C while ping connects (to an actor that takes the connection and never answers)
    stops it at once, with its summary: the signal went unread until --timeout, and ping then
    failed to connect as if no one had asked it to stop."""
    path = os.path.join(socket_dir, "app.mute")
    async with await anyio.create_unix_listener(path) as listener:
        base = ["--socket-root", socket_dir, "--backend", backend, "--timeout", "60"]
        async with running(command("ping", "mute", *base), subprocess.PIPE) as process:
            with anyio.fail_after(20):
                async with await listener.accept():  # (says nothing)
                    os.unlink(path)  # (found)
                    started = anyio.current_time()
                    process.send_signal(signum)
                    status = await process.wait()
            assert process.stdout is not None
            assert process.stderr is not None
            with anyio.fail_after(20):
                seen = b"".join([chunk async for chunk in process.stdout])
                said = b"".join([chunk async for chunk in process.stderr])
    assert anyio.current_time() - started < 10
    assert status == 1, said  # no ping answered
    assert b"0 sent, 0 received" in seen, said  # (what it said instead, if it failed)


async def test_ping_sums_up_when_its_actor_goes_away(socket_dir: str) -> None:
    """An actor that goes after some replies ends ping with its summary (it exited 1 with the
    connection's error alone, no statistics), and the status the docs give: 0, replies came."""
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()
        ping = command("ping", "world", "-i", "0.05", "--json", "--socket-root", socket_dir)
        async with running(ping) as process:
            with anyio.fail_after(20):
                assert process.stdout is not None
                seen = b""
                while seen.count(b"\n") < 3:
                    seen += await process.stdout.receive()
                await server.aclose()
                async for chunk in process.stdout:
                    seen += chunk
                status = await process.wait()
    *pings, summary = json_lines(seen.decode())
    assert status == 0
    assert len(pings) >= 3
    assert summary["summary"]["received"] >= 3


def test_data_nested_too_deep_is_a_usage_error() -> None:
    """Valid JSON nested beyond what Python parses is a usage error like any bad DATA (it was
    a RecursionError traceback, exit 1)."""
    for args in (
        ("request", "world", "x", "[" * 100_000),
        ("listen", "w", "--reply", "[" * 100_000),
    ):
        done = cli_sync(*args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "nests too deep" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("emit", "nobody", "e", "18446744073709551616"), "integer msgpack cannot carry"),
        (("request", "nobody", "x", '{"n": [1, -9223372036854775809]}'), "integer msgpack"),
        (("listen", "w", "--reply", "[18446744073709551616]"), "integer msgpack cannot carry"),
        (("request", "nobody", "x", '"\\ud800"'), "surrogates not allowed"),
        (("emit", "nobody", "e", "[" * 70 + "]" * 70), "nests too deep"),
        (("emit", "nobody", "e", "NaN", "--codec", "node-ipc"), "not JSON compliant"),
        (("emit", "nobody", "e", "[1, Infinity]", "--codec", "node-ipc"), "not JSON compliant"),
    ],
    ids=["int", "int in a map", "int reply", "lone surrogate", "deep", "NaN", "Infinity"],
)
def test_data_the_codec_cannot_carry_is_a_usage_error(args: tuple[str, ...], says: str) -> None:
    """cli.md: exit 2 for JSON the codec cannot carry. An integer beyond msgpack's range was
    an EncodeError (exit 1), met only once connected (or a ConnectionFailedError, the bad
    DATA never named, when the peer was absent); so, until later, were a lone surrogate
    (text msgpack cannot encode), nesting deeper than a peer takes, and NaN or Infinity on
    node-ipc's JSON wire. Each is a usage error now, before any connection: the peer named
    here does not exist."""
    done = cli_sync(*args)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_integer_beyond_msgpack_goes_on_node_ipcs_json_wire(socket_dir: str) -> None:
    """node-ipc's wire is JSON, which carries integers of any size: DATA with one is not
    refused there (here: sent to no one, so the failure to connect, exit 1)."""
    done = cli_sync(
        "emit", "nobody", "e", "18446744073709551616", "--codec", "node-ipc",
        "--socket-root", socket_dir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "could not connect" in done.stderr, done.stderr


def test_run_refuses_what_it_cannot_run_before_running_anything(tmp_path: Path) -> None:
    """A plain function is a usage error before it runs (it ran whole, side effects and all,
    and only then was refused), and a relative module name is a usage error (a TypeError
    traceback, exit 1)."""
    marker = tmp_path / "ran"
    (tmp_path / "cli_plain.py").write_text(f"def main():\n    open({str(marker)!r}, 'w').close()\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    plain = cli_sync("run", "cli_plain:main", env=env)
    assert plain.returncode == 2, plain.stderr
    assert "async def" in plain.stderr
    assert not marker.exists()
    relative = cli_sync("run", ".cli_plain:main", env=env)
    assert relative.returncode == 2, relative.stderr
    assert "Traceback" not in relative.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_second_signal_as_listen_stops_does_not_kill_it(
    backend: str, socket_dir: str
) -> None:
    """Two Ctrl-Cs a few milliseconds apart: listen still stops gracefully and exits 0. The
    second came after the command had restored Python's default handlers, and killed it
    (status -2, or -15 for SIGTERM), its summary already printed."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        args = ["listen", "world", "--socket-root", socket_dir, "--backend", backend]
        async with running(command(*args)) as process:
            with anyio.fail_after(20):
                assert process.stdout is not None
                seen = b""
                while b"listening as" not in seen:
                    seen += await process.stdout.receive()
                process.send_signal(signum)
                for _ in range(20):  # more as it stops: none may kill it
                    await anyio.sleep(0.005)
                    if process.returncode is not None:
                        break
                    # (os.kill, not send_signal: Popen.send_signal polls first, and may reap
                    # the process under asyncio's child watcher, which then reports 255)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)
                status = await process.wait()
        assert status == 0
    assert os.listdir(socket_dir) == []


async def signal_until_it_ends(process: Process, signum: int) -> int:
    """Send ``signum`` to ``process`` every millisecond until it exits; its status."""
    with anyio.fail_after(20):
        while process.returncode is None:
            # (os.kill, not send_signal: Popen.send_signal polls first, and may reap the
            # process under asyncio's child watcher, which then reports 255)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
            with anyio.move_on_after(0.001):
                await process.wait()
        return await process.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
async def test_signals_that_keep_coming_as_listen_and_ping_stop_change_nothing(
    anyio_backend: str, signum: signal.Signals, socket_dir: str
) -> None:
    """The docs: listen stopped by SIGINT/SIGTERM exits 0, "more signals as it stops change
    nothing"; ping ends with its summary, 0 when a reply came (``timeout`` sends SIGTERM to
    the command, then to its process group). On asyncio a second one killed them as they
    closed (status -15, or 130 after SIGINT): the handlers that keep it were not put back."""
    base = ["--socket-root", socket_dir, "--backend", anyio_backend]
    async with running(command("listen", "hello", *base)) as process:
        assert process.stdout is not None
        with anyio.fail_after(20):
            seen = b""
            while b"listening as" not in seen:
                seen += await process.stdout.receive()
        assert await signal_until_it_ends(process, signum) == 0

    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        await ipc.serve()
        async with running(command("ping", "world", "-i", "0.05", *base)) as process:
            assert process.stdout is not None
            with anyio.fail_after(20):
                seen = b""
                while b"reply from world" not in seen:
                    seen += await process.stdout.receive()
            status = await signal_until_it_ends(process, signum)
            with anyio.fail_after(20):
                seen += b"".join([chunk async for chunk in process.stdout])
    assert status == 0
    assert b"ping statistics" in seen


async def test_a_command_started_with_stdout_closed_says_nothing_and_succeeds(
    socket_dir: str,
) -> None:
    """Started with stdout closed (>&-), request answers into nothing, as into a reader that
    went: exit 0, no traceback (an AttributeError on sys.stdout, which Python sets to None)."""
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()
        server.on("ping", lambda data, client: data)
        line = " ".join(command("request", "world", "ping", "1", "--socket-root", socket_dir))
        with anyio.fail_after(30):
            done = await anyio.run_process(["bash", "-c", f"{line} >&-"], cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr


async def test_a_peer_that_never_answers_is_a_connection_failure_named_so() -> None:
    """A TCP peer that takes the connection and says nothing: --timeout bounds the command,
    and the error is ConnectionFailedError (exit 1), not the base IPCError the reference
    keeps for misuse."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def hold(stream: anyio.abc.SocketStream) -> None:
            async with stream:  # (closed as the test ends)
                await anyio.sleep(30)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hold)
            target = f"tcp://127.0.0.1:{port}"
            done = await cli("request", target, "x", "--timeout", "1", "--json")
            tg.cancel_scope.cancel()
    assert done.returncode == 1, done.stderr
    assert json_lines(done.stderr)[0]["error"] == "ipcactors.ConnectionFailedError"


def strict_json(text: str) -> list[Any]:
    """Every line of ``text`` as JSON that any parser reads: NaN and Infinity are refused
    (Python's own ``json`` takes them; JSON does not have them)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line]


ODD = {"nan": math.nan, "inf": [math.inf, -math.inf], b"key": b"\x00\xff", "n": 1}
# What ODD prints as: a map key JSON cannot hold is the JSON text of the key as a value.
ODD_AS_JSON = {
    "nan": {"$float": "NaN"},
    "inf": [{"$float": "Infinity"}, {"$float": "-Infinity"}],
    '{"$bytes": "a2V5"}': {"$bytes": "AP8="},
    "n": 1,
}


async def test_data_json_cannot_hold_still_prints_as_json(socket_dir: str) -> None:
    """A reply or an event holding NaN, infinities or bytes map keys prints as JSON all the
    same (docs/cli.md): NaN went out as a bare ``NaN`` that JSON readers refuse, and a bytes
    key was a TypeError traceback that ended ``request`` with status 1 and ``listen`` at once."""
    base = ("--socket-root", socket_dir)
    async with Actor("world", socket_root=socket_dir, **FAST) as ipc:
        server = await ipc.serve()
        server.on("odd", lambda data, client: ODD)
        for extra in ((), ("--json",)):
            reply = await cli("request", "world", "odd", *extra, *base)
            assert reply.returncode == 0, reply.stderr
            (line,) = strict_json(reply.stdout)
            assert (line["reply"] if extra else line) == ODD_AS_JSON

    listen = command("listen", "ear", "--json", *base)
    async with running(listen) as process, Actor("teller", socket_root=socket_dir, **FAST) as ipc:
        assert process.stdout is not None
        ear = await ipc.connect_to("ear")
        await ear.emit("odd", ODD)
        assert await ear.request("still", 1, timeout=20) == 1  # listen answers: it lives on
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            assert await process.wait() == 0
            output = b""
            async for chunk in process.stdout:
                output += chunk
    lines = strict_json(output.decode())
    assert {"type": "event", "from": "teller", "event": "odd", "data": ODD_AS_JSON} in lines


async def test_text_utf_8_cannot_hold_still_prints(socket_dir: str) -> None:
    """A string with a lone surrogate (node-ipc's JSON carries them, from JavaScript) prints
    as an escape: the event was dropped unseen (a UnicodeEncodeError in the handler, shown
    only with -v), and listen went on, status 0."""
    base = ("--socket-root", socket_dir, "--codec", "node-ipc")
    for extra in ((), ("--json",)):
        listen = command("listen", "ear", *extra, *base)
        async with (
            running(listen) as process,
            Actor("teller", socket_root=socket_dir, codec="node-ipc", **FAST) as ipc,
        ):
            assert process.stdout is not None
            ear = await ipc.connect_to("ear")
            for text in ("before", "lone \ud800 surrogate", "after"):
                await ear.emit("say", text)
            output = b""
            with anyio.fail_after(20):
                while b"after" not in output:
                    output += await process.stdout.receive()
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
        if extra:
            records = strict_json(output.decode())
            said = [record["data"] for record in records if record["type"] == "event"]
            assert said == ["before", "lone \ud800 surrogate", "after"]
        else:
            assert 'say "lone \\ud800 surrogate"' in output.decode(), output


def test_bad_json_names_the_argument_it_came_in() -> None:
    """listen's --reply with bad JSON was blamed on DATA, an argument listen does not have."""
    result = cli_sync("listen", "world", "--reply", "nope")
    assert result.returncode == 2, result.stderr
    assert "--reply must be JSON" in result.stderr
    assert "DATA" not in result.stderr
    result = cli_sync("request", "world", "x", "{not json")
    assert result.returncode == 2, result.stderr
    assert "DATA must be JSON" in result.stderr


def test_usage_errors_are_json_with_json() -> None:
    """With --json an error is one JSON object on stderr, usage errors included: those the
    command finds and those argparse finds (they were argparse's text, or labelled "error")."""
    for args in (
        ("request", "world", "x", "{not json", "--json"),
        ("emit", "ftp://host:1", "x", "--json"),
        ("request", "--json"),
        ("ping", "world", "--json", "--timeout", "-1"),
    ):
        result = cli_sync(*args)
        assert result.returncode == 2, (args, result.stderr)
        (record,) = strict_json(result.stderr)
        assert record["error"] == "usage", (args, record)
        assert record["message"], (args, record)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_target_or_tls_option_that_does_not_parse_is_a_usage_error(backend: str) -> None:
    """A malformed bracketed host was a ValueError traceback (exit 1); a user, path, query or
    fragment after the address, and --key without --cert, were silently ignored."""
    for args, says in [
        (("request", "tcp://[::1:9", "x"), "tcp://[::1]:8000"),
        (("emit", "udp://[::1", "x"), "udp://[::1]:8000"),
        (("request", "tls://[x]:1", "x", "--cafile", "/dev/null"), "tls://host:port"),
        (("listen", "tcp://[::1:9"), "tcp://host:port"),
        (("ping", "-c", "1", "tcp://["), "tcp://host:port"),
        (("request", "tcp://u@h:9/path?x#f", "x"), "write tcp://h:9"),
        (("emit", "udp://127.0.0.1:9/", "x"), "write udp://127.0.0.1:9"),
        (("listen", "tcp://127.0.0.1:9?x"), "write tcp://127.0.0.1:9"),
        (("request", "tls://127.0.0.1:9", "x", "--cafile", "ca.pem", "--key", "k.pem"), "--cert"),
    ]:
        result = cli_sync(*args, "--timeout", "1", "--backend", backend)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("ipcactors: error: "), (args, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        as_json = cli_sync(*args, "--timeout", "1", "--backend", backend, "--json")
        assert as_json.returncode == 2, (args, as_json.stderr)
        (record,) = strict_json(as_json.stderr)
        assert record["error"] == "usage", (args, record)


async def test_a_command_started_with_stderr_closed_keeps_its_errors_off_stdout(
    socket_dir: str,
) -> None:
    """cli.md: stdout carries results only; errors go to stderr. Started with stderr closed
    (2>&-), an error went to stdout (print to a stderr Python set to None writes to stdout),
    where a script reads results: with --json, an {"error": ...} line."""
    line = " ".join(command("request", "nobody-here", "x", "--json", "--socket-root", socket_dir))
    with anyio.fail_after(30):
        done = await anyio.run_process(["bash", "-c", f"{line} 2>&-"], cwd=ROOT, check=False)
    assert done.returncode == 1
    assert done.stdout == b""


async def test_listen_writes_one_line_per_arrival_whatever_the_names(socket_dir: str) -> None:
    """cli.md: one line each. A peer's id and event name went into the human lines as they
    were: a newline in them forged a line of its own, a terminal escape reached the terminal.
    They are escaped as Python does (\\n, \\x1b); --json was already strict."""
    listen = command("listen", "world", "--socket-root", socket_dir)
    async with running(listen) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(20):
            while b"listening" not in output:
                output += await process.stdout.receive()
        async with Actor("alice\nmallory connected", socket_root=socket_dir, **FAST) as ipc:
            connection = await ipc.connect_to("world")
            await connection.emit("ev\nmallory disconnected\x1b[2J", 1)
            await connection.request("sync\r", 2)
        with anyio.fail_after(20):
            while output.count(b"\n") < 5:
                output += await process.stdout.receive()
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            assert await process.wait() == 0
            async for chunk in process.stdout:
                output += chunk
    lines = output.decode().splitlines()
    assert len(lines) == 5, lines  # listening, connected, the event, the request, disconnected
    assert "\x1b" not in output.decode()
    assert lines[2] == "alice\\nmallory connected ev\\nmallory disconnected\\x1b[2J 1", lines


@asynccontextmanager
async def listening_into_a_pipe(
    socket_dir: str, *, non_blocking: bool
) -> AsyncIterator[tuple[Process, int]]:
    """``listen world`` whose stdout is a pipe of ours nobody reads yet (its write end set
    non-blocking, as a parent may hand it, if asked); yields the process once it listens,
    and the read end. Flooded with ~100 KiB of lines by a client, and the pipe is full."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, not non_blocking)
    try:
        listen = command("listen", "world", "--socket-root", socket_dir)
        process = await anyio.open_process(
            listen, cwd=ROOT, stdout=write_end, stderr=subprocess.DEVNULL
        )
        os.close(write_end)
        try:
            with anyio.fail_after(20):
                while not os.path.exists(os.path.join(socket_dir, "app.world")):
                    await anyio.sleep(0.05)
            yield process, read_end
        finally:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    finally:
        os.close(read_end)


async def flood(connection: Any) -> None:
    for _ in range(1000):  # ~100 KiB of lines: more than the pipe holds
        await connection.emit("ev", "z" * 90)


async def test_listen_whose_reader_stopped_reading_serves_and_stops_at_a_signal(
    socket_dir: str,
) -> None:
    """cli.md: listen runs until SIGINT or SIGTERM, then closes gracefully and exits 0. Once
    its stdout's reader stopped reading (| less, not scrolled) and the pipe filled, a line
    written from the event loop held the loop: no request answered, SIGTERM and SIGINT
    ignored, only SIGKILL ended it (its socket file left behind)."""
    async with listening_into_a_pipe(socket_dir, non_blocking=False) as (process, _):
        async with Actor("hello", socket_root=socket_dir, **FAST) as ipc:
            connection = await ipc.connect_to("world")
            await flood(connection)
            assert await connection.request("still", "serving", timeout=10) == "serving"
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
    assert not os.path.exists(os.path.join(socket_dir, "app.world"))


async def test_listen_waits_on_a_non_blocking_stdout_that_is_full(socket_dir: str) -> None:
    """A parent may hand listen a stdout set non-blocking: a write to it when full fails with
    EAGAIN. That was taken for a reader that went, and listen stopped on its own, most lines
    lost; it now waits until the pipe takes more."""
    async with listening_into_a_pipe(socket_dir, non_blocking=True) as (process, read_end):
        async with Actor("hello", socket_root=socket_dir, **FAST) as ipc:
            connection = await ipc.connect_to("world")
            await flood(connection)
            await anyio.sleep(0.5)  # the pipe is full meanwhile: nobody reads yet
            output = bytearray()
            os.set_blocking(read_end, False)
            with anyio.fail_after(20):
                while output.count(b"\n") < 1002:  # listening, connected, 1000 events
                    try:
                        output += os.read(read_end, 65536)
                    except BlockingIOError:
                        await anyio.sleep(0.01)
            assert await connection.request("still", "serving", timeout=10) == "serving"
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
