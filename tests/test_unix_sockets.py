"""Unix socket files: private directory, modes, stale files, live conflicts, odd files, limits."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import anyio
import pytest
from _backends import _uvloop_global_state  # noqa: F401 (uvloop's pipe, before leak checks)

import ipcactors
from ipcactors import Actor

pytestmark = pytest.mark.anyio


async def test_default_socket_root_is_private(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path_factory.mktemp("rt")
    os.chmod(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    async with Actor("world", silent=True) as world:
        server = await world.serve()
        path = str(server.address)
        assert os.path.dirname(path) == str(runtime / "ipcactors")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.path.basename(path) == "app.world"
    assert not os.path.exists(path), "the socket file is removed on close"


async def test_socket_file_mode_is_0600_whatever_the_umask(socket_dir: str) -> None:
    old = os.umask(0)
    try:
        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            server = await world.serve()
            assert stat.S_IMODE(os.stat(str(server.address)).st_mode) == 0o600
    finally:
        os.umask(old)


async def test_stale_socket_file_is_replaced(socket_dir: str, log_lines: list[str]) -> None:
    path = os.path.join(socket_dir, "app.world")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()  # a dead server's file: connecting to it is refused
    async with Actor("world", socket_root=socket_dir) as world:
        server = await world.serve()
        server.on("ping", lambda data, client: "pong")
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(5):
                assert await connection.request("ping") == "pong"


async def test_checking_that_a_server_is_live_is_not_a_failed_handshake_for_it(
    socket_dir: str, log_lines: list[str]
) -> None:
    """A second actor with the same id finds the first serving (it connects, then closes
    without a word): the first logs no warning of a failed handshake and counts none (it
    warned "handshake with '' failed: the peer closed the connection during the handshake")."""
    async with Actor("world", socket_root=socket_dir) as first:
        server = await first.serve()
        async with Actor("world", socket_root=socket_dir) as second:
            with pytest.raises(ipcactors.AddressInUseError, match="live server"):
                await second.serve()
        with anyio.fail_after(5):
            while server.statistics().handshaking:
                await anyio.sleep(0.01)  # the first has seen the check's connection end
        await anyio.sleep(0.1)
        assert server.statistics().handshakes_failed == 0
    assert not [line for line in log_lines if "WARNING" in line], log_lines


async def test_live_server_path_is_never_taken(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True) as first:
        server = await first.serve()
        server.on("who", lambda data, client: "first")
        async with Actor("world", socket_root=socket_dir, silent=True) as second:
            with pytest.raises(ipcactors.AddressInUseError, match="live server"):
                await second.serve()
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(5):
                assert await connection.request("who") == "first"


async def test_live_server_in_another_process_is_not_taken(socket_dir: str) -> None:
    serve = os.path.join(os.path.dirname(__file__), "_serve.py")
    process = subprocess.Popen(
        [sys.executable, serve, socket_dir, "world"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "READY"
        async with Actor("world", socket_root=socket_dir, silent=True) as second:
            with pytest.raises(ipcactors.AddressInUseError):
                await second.serve()
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(5):
                assert await connection.request("echo", "still there") == "still there"
    finally:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


async def test_two_servers_starting_at_once_one_wins(socket_dir: str) -> None:
    outcomes: list[str] = []
    async with (
        Actor("world", socket_root=socket_dir, silent=True) as one,
        Actor("world", socket_root=socket_dir, silent=True) as two,
    ):

        async def start(actor: Actor) -> None:
            try:
                await actor.serve()
                outcomes.append("serving")
            except ipcactors.AddressInUseError:
                outcomes.append("in use")

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(start, one)
            task_group.start_soon(start, two)
    assert sorted(outcomes) == ["in use", "serving"]


async def test_regular_file_is_never_removed(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "app.world")
    with open(path, "w") as file:
        file.write("precious")
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        with pytest.raises(ipcactors.AddressInUseError, match="not a socket"):
            await world.serve()
    with open(path) as file:
        assert file.read() == "precious"
    os.unlink(path)


async def test_symlink_is_never_followed(socket_dir: str, tmp_path: os.PathLike[str]) -> None:
    victim = os.path.join(str(tmp_path), "victim")
    with open(victim, "w") as file:
        file.write("keep")
    os.chmod(victim, 0o644)
    path = os.path.join(socket_dir, "app.world")
    os.symlink(victim, path)
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        with pytest.raises(ipcactors.AddressInUseError, match="symlink"):
            await world.serve()
    with open(victim) as file:
        assert file.read() == "keep"
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    os.unlink(path)


async def test_path_too_long_fails_before_binding(socket_dir: str) -> None:
    long_id = "x" * 120
    async with Actor(long_id, socket_root=socket_dir, silent=True) as world:
        with pytest.raises(ipcactors.SocketPathTooLongError, match="limit"):
            await world.serve()
        with pytest.raises(ipcactors.SocketPathTooLongError):
            await world.serve(os.path.join(socket_dir, "y" * 200))


async def test_insecure_socket_root_is_refused(tmp_path: os.PathLike[str]) -> None:
    shared = os.path.join(str(tmp_path), "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)  # anyone may write, no sticky bit: anyone could swap our socket
    async with Actor("world", socket_root=shared, silent=True) as world:
        with pytest.raises(ipcactors.InsecureSocketDirError):
            await world.serve()
    os.chmod(shared, 0o1777)  # like /tmp: accepted
    async with Actor("world", socket_root=shared, silent=True) as world:
        server = await world.serve()
        assert os.path.exists(str(server.address))


async def test_a_socket_root_that_does_not_exist_is_a_socket_path_error(
    tmp_path: os.PathLike[str],
) -> None:
    missing = os.path.join(str(tmp_path), "missing", "deeper")
    async with Actor("world", socket_root=missing, silent=True) as world:
        with pytest.raises(ipcactors.SocketPathError, match="does not exist"):
            await world.serve()
    with pytest.raises(ipcactors.SocketPathError, match="does not exist"):
        async with ipcactors.Supervisor(socket_root=missing, silent=True):
            pass
    assert not os.path.exists(missing)  # nothing was created in its place


async def test_a_path_whose_directory_does_not_exist_is_a_socket_path_error(
    socket_dir: str,
) -> None:
    """serve(path) in a missing directory raises SocketPathError naming the directory (it was
    a bare FileNotFoundError), and the actor still serves on a good path afterwards."""
    missing = os.path.join(socket_dir, "missing", "world.sock")
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        with pytest.raises(ipcactors.SocketPathError, match="does not exist") as caught:
            await world.serve(missing)
        assert os.path.dirname(missing) in str(caught.value)
        server = await world.serve(os.path.join(socket_dir, "world.sock"))
        assert os.path.exists(str(server.address))
    assert os.listdir(socket_dir) == []


async def test_names_that_cannot_make_a_socket_path_or_go_on_the_wire_are_refused(
    socket_dir: str,
) -> None:
    """An actor id, socket path or event name that cannot be what it is used as is refused at
    once with a typed error. An id with '/' put the socket outside socket_root ('..'); a NUL
    made serve() raise a bare ValueError and connect_to() retry for ever; a lone surrogate
    (not UTF-8) made an actor that served but no client could finish a handshake with, and
    an event name with one raised a bare UnicodeEncodeError."""
    for bad in ("nul\0id", "lone\udcff"):
        with pytest.raises(ipcactors.ConfigError, match="actor id"):
            Actor(bad, socket_root=socket_dir)
    async with Actor("../escaped", socket_root=socket_dir, appspace="", silent=True) as a:
        with pytest.raises(ipcactors.ConfigError, match="'/'"):
            await a.serve()
        await a.serve(os.path.join(socket_dir, "fine"))  # an explicit path is the caller's
        with anyio.fail_after(5), pytest.raises(ipcactors.ConfigError, match="'/'"):
            await a.connect_to("../fine")
        with pytest.raises(ipcactors.ConfigError, match="NUL"):
            await a.connect_to("fine", path=os.path.join(socket_dir, "fi\0ne"))
        with anyio.fail_after(5):
            connection = await a.connect_to("fine", path=os.path.join(socket_dir, "fine"))
        with pytest.raises(ipcactors.EventNameError):
            await connection.emit("lone\udcff")
        with pytest.raises(ipcactors.EventNameError):
            await a.server.broadcast("lone\udcff")  # type: ignore[union-attr]
    async with Actor("other", socket_root=socket_dir, silent=True) as b:
        with pytest.raises(ipcactors.ConfigError, match="NUL"):
            await b.serve(os.path.join(socket_dir, "a\0b"))
    assert sorted(os.listdir(socket_dir)) == []
    assert not os.path.exists(os.path.join(os.path.dirname(socket_dir), "escaped"))


async def test_explicit_path(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "custom.sock")
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        server = await world.serve(path)
        server.on("ping", lambda data, client: "pong")
        assert server.address == path
        async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
            connection = await hello.connect_to("world", path)
            with anyio.fail_after(5):
                assert await connection.request("ping") == "pong"
    assert not os.path.exists(path)


async def test_socket_file_of_a_replacement_is_left_alone(socket_dir: str) -> None:
    """A server only removes the socket file it bound, not a successor's."""
    async with Actor("world", socket_root=socket_dir, silent=True) as first:
        server = await first.serve()
        path = str(server.address)
        os.unlink(path)  # somebody removed our file, and another server took the path
        async with Actor("world", socket_root=socket_dir, silent=True) as second:
            await second.serve()
            await first.aclose()
            assert os.path.exists(path)
    assert not os.path.exists(path)


EVERY_BACKEND = pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"), "trio"],
)


@EVERY_BACKEND
@pytest.mark.parametrize("udp", [None, "udp4"])
async def test_a_port_in_use_is_an_address_in_use_error(udp: str | None, socket_dir: str) -> None:
    """TCP and UDP alike (a UDP port in use raised a bare OSError, and on uvloop still did:
    uvloop's error names EADDRINUSE only in its cause); the actor that was refused still
    serves on a free port afterwards."""
    async with Actor("one", silent=True) as one, Actor("two", silent=True) as two:
        server = await one.serve_net("127.0.0.1", 0, udp=udp)  # type: ignore[call-overload]
        _, port = server.address
        with pytest.raises(ipcactors.AddressInUseError, match=f"{port} on 127.0.0.1 is in use"):
            await two.serve_net("127.0.0.1", port, udp=udp)  # type: ignore[call-overload]
        await two.serve_net("127.0.0.1", 0, udp=udp)  # type: ignore[call-overload]


@EVERY_BACKEND
@pytest.mark.parametrize(
    ("host", "udp"),
    [("192.0.2.1", None), ("192.0.2.1", "udp4"), ("::1", "udp4"), ("127.0.0.1", "udp6")],
)
async def test_an_address_this_host_cannot_serve_on_is_a_config_error(
    host: str, udp: str | None
) -> None:
    """An address that is not this host's (192.0.2.1, for documentation only), or one of the
    other IP version: ConfigError naming it, and the actor serves on afterwards. They were a
    bare OSError ('Cannot assign requested address') or socket.gaierror."""
    async with Actor("one", silent=True) as one:
        with pytest.raises(ipcactors.ConfigError, match=f"cannot serve on {host}"):
            await one.serve_net(host, 0, udp=udp)  # type: ignore[call-overload]
        await one.serve_net("127.0.0.1", 0, udp=udp and "udp4")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("appspace", "x\0y."),
        ("appspace", "../up."),
        ("socket_root", "/tmp/a\0b"),
    ],
)
def test_an_appspace_or_socket_root_that_cannot_make_a_socket_path_is_a_config_error(
    option: str, value: str
) -> None:
    """Refused when the actor is made, as a bad id is: a NUL made serve() raise a bare
    ValueError (and connect_to use a path cut at the NUL), and a '/' in the appspace put the
    default path outside socket_root."""
    with pytest.raises(ipcactors.ConfigError, match=option):
        Actor("world", **{option: value})


@pytest.mark.parametrize("id", ["", 123, b"world", None], ids=["empty", "int", "bytes", "none"])
def test_default_path_of_an_id_that_names_no_file_is_a_config_error(id: object) -> None:
    """default_path's docstring: ConfigError for an id that names no socket file. An empty id
    gave the actor's own path (``id or self.id``), an int or bytes a bare TypeError; no id
    at all is the actor's own, as before."""
    actor = Actor("me", socket_root="/tmp/root")
    if id is None:
        assert actor.default_path() == "/tmp/root/app.me"
        return
    with pytest.raises(ipcactors.ConfigError, match="actor id"):
        actor.default_path(id)  # type: ignore[arg-type]


async def test_serving_twice_is_an_error(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True) as world:
        await world.serve()
        with pytest.raises(ipcactors.IPCError, match="already serves"):
            await world.serve_net("127.0.0.1", 0)


@pytest.mark.parametrize("transport", ["unix", "tcp", "udp"])
async def test_an_actor_whose_server_closed_may_serve_again(
    socket_dir: str, transport: str
) -> None:
    """One server at a time: once it is closed, serve() opens another (it raised 'already
    serves on' the closed server's address, its socket file gone). Its clients come back."""
    options = {"socket_root": socket_dir, "silent": True, "retry": 0.02, "retry_cap": 0.1}

    async def serve(world: Actor) -> ipcactors.Server | ipcactors.DatagramServer:
        if transport == "unix":
            return await world.serve()
        if transport == "tcp":
            return await world.serve_net("127.0.0.1", 0)
        return await world.serve_net("127.0.0.1", 0, udp="udp4")

    with anyio.fail_after(10):
        async with Actor("world", **options) as world, Actor("hello", **options) as hello:
            first = await serve(world)
            await first.aclose()
            second = await serve(world)
            assert world.server is second
            second.on("add", lambda numbers, client: sum(numbers))
            if isinstance(second, ipcactors.DatagramServer):
                mine = await hello.serve_net("127.0.0.1", 0, udp="udp4")
                assert await mine.request(second.address, "add", [1, 2], timeout=5) == 3
            else:
                connection = (
                    await hello.connect_to("world")
                    if transport == "unix"
                    else await hello.connect_to_net("world", "127.0.0.1", second.port)
                )
                assert await connection.request("add", [1, 2]) == 3
            with pytest.raises(ipcactors.IPCError, match="already serves"):
                await serve(world)


def test_mode_is_set_before_bind_not_after(
    socket_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No window: the mode comes from fchmod on the descriptor, never a chmod after bind."""
    from ipcactors._transports import _unix

    def no_chmod(*args: object) -> None:
        raise AssertionError("chmod after bind would leave a window with a wider mode")

    monkeypatch.setattr(_unix.os, "chmod", no_chmod)
    old = os.umask(0)
    try:
        bound = _unix.bind_unix_socket(os.path.join(socket_dir, "s"))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(bound.path).st_mode) == 0o600
    finally:
        bound.sock.close()
        _unix.remove_if_ours(bound.path, bound.identity)


async def test_serve_waits_for_another_process_binding_in_the_same_folder(
    socket_dir: str,
) -> None:
    """Binding takes the folder's lock; while another process holds it, serve() waits for it
    without blocking the event loop (other tasks run), then serves."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('LOCKED', flush=True)\n"
            "time.sleep(0.5)\n",
            socket_dir,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "LOCKED"
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        async with Actor("world", socket_root=socket_dir, silent=True) as world:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(tick)
                with anyio.fail_after(10):
                    start = anyio.current_time()
                    server = await world.serve()
                    waited = anyio.current_time() - start
                task_group.cancel_scope.cancel()
            assert waited > 0.2, "serve() waited for the lock"
            assert ticks >= 5, "the event loop ran other tasks while serve() waited"
            server.on("ping", lambda data, client: "pong")
            async with Actor("hello", socket_root=socket_dir, silent=True) as hello:
                connection = await hello.connect_to("world")
                with anyio.fail_after(5):
                    assert await connection.request("ping") == "pong"
    finally:
        holder.kill()
        holder.wait()


_SERVE_SHORT_OF_DESCRIPTORS = """
import json, os, resource, socket, sys
import anyio, ipcactors
from _descriptors import take_all_but

async def main(root):
    stale = os.path.join(root, "stale")  # serving there probes it first
    probe = socket.socket(socket.AF_UNIX)
    probe.bind(stale)
    probe.close()
    outcomes = {}
    with anyio.fail_after(30):
        for free in (0, 1, 2):
            for kind in ("unix", "unix-stale", "tcp", "udp"):
                async with ipcactors.Actor("world", socket_root=root, silent=True) as world:
                    fillers = take_all_but(free)
                    try:
                        if kind == "unix":
                            server = await world.serve()
                        elif kind == "unix-stale":
                            server = await world.serve(stale)
                        else:
                            udp = "udp4" if kind == "udp" else None
                            server = await world.serve_net("127.0.0.1", 0, udp=udp)
                    except Exception as exc:
                        outcome = type(exc).__name__
                        if isinstance(exc, ipcactors.ResourceError):
                            assert exc.errno == 24 and "Too many open files" in str(exc), exc
                    else:
                        outcome = "served"
                        await server.aclose()
                    finally:
                        for fd in fillers:
                            os.close(fd)
                    outcomes.setdefault(kind, []).append(outcome)
    print(json.dumps(outcomes))

resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
anyio.run(main, sys.argv[2], backend=sys.argv[1])
"""


async def test_serving_short_of_descriptors_is_a_resource_error(
    socket_dir: str, anyio_backend: str, tmp_path: object
) -> None:
    """reference.md: what happens at run time is one of the library's errors. A process out of
    file descriptors got a bare OSError from serve() and serve_net(), or a SocketPathError,
    which blames a path that is fine."""
    root = os.path.join(socket_dir, "short")
    os.mkdir(root, 0o700)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    try:
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [sys.executable, "-c", _SERVE_SHORT_OF_DESCRIPTORS, anyio_backend, root],
                env=env,
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        outcomes = json.loads(result.stdout.decode().splitlines()[-1])
        for seen in outcomes.values():
            assert set(seen) <= {"ResourceError", "served"}, outcomes
            assert seen[0] == "ResourceError", outcomes  # not a descriptor free: never served
        assert set(os.listdir(root)) <= {"stale"}  # (a served stale path is taken over)
    finally:
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        os.rmdir(root)


async def test_an_empty_socket_root_is_the_default_private_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socket_root "" named the default directory, as None does, but without its making and
    its check that it is ours alone: serve() failed with SocketPathError while that directory
    did not exist yet, and took it as it was, whoever could write into it."""
    runtime = tmp_path_factory.mktemp("rt")
    os.chmod(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    async with Actor("world", socket_root="", silent=True) as world:
        server = await world.serve()
        assert str(server.address) == str(runtime / "ipcactors" / "app.world")
        assert stat.S_IMODE(os.stat(runtime / "ipcactors").st_mode) == 0o700
