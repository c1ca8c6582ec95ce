"""Shared memory between actors on one host (Config.max_shared_bytes): arrays through sealed
memfd segments, released when the receiver drops them; the socket path past the bound and with
peers that lack it; a hostile peer's descriptors; processes killed while arrays are held."""

from __future__ import annotations

import array
import fcntl
import gc
import os
import signal
import socket
import struct
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import numpy as np
import pytest
from _backends import _uvloop_global_state, anyio_backend  # noqa: F401

from ipcactors import (
    Actor,
    ConfigError,
    Connection,
    ConnectionLostError,
    RequestTimeoutError,
    Server,
)

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SHM = {"max_shared_bytes": 64 * MiB}
HEADER = struct.Struct(">I")


async def _poll(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(10):
        while not condition():
            gc.collect()
            await anyio.sleep(0.01)


@asynccontextmanager
async def _summing(socket_dir: str) -> AsyncIterator[tuple[Server, Connection]]:
    """A server answering ``sum`` of an array, and a connection to it; shared memory on."""
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        server.on("sum", lambda data, client: float(data.sum()))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            yield server, await hello.connect_to("world")


def _memfd_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum("memfd:ipcactors" in line for line in maps)


async def test_arrays_travel_read_only_through_shared_memory_and_are_released(
    socket_dir: str,
) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        kept: list[Any] = []

        def total(data: Any, client: Any) -> float:
            if isinstance(data, dict):
                data = data["nested"][0]
            assert not data.flags.writeable
            kept.append(data)
            return float(data.sum())

        server.on("sum", total)
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            values = np.arange(MiB // 4, dtype=np.float32).reshape(512, 512)
            with anyio.fail_after(10):
                assert await conn.request("sum", values) == float(values.sum())
                await conn.emit("sum", {"nested": [values[::2]]})  # any layout: copied once
                await _poll(lambda: len(kept) == 2, "the event")
            stats = conn.statistics()
            assert stats.shared_memory
            assert stats.shared_sent == 2
            assert stats.shared_in_use > 0
            client = server.clients["hello"]
            assert client.statistics().shared_received == 2
            assert np.array_equal(kept[0], values)
            assert np.array_equal(kept[1], values[::2])
            # Views outlive the array they came from; the slot is held until the last goes.
            view = kept[0][100:]
            kept.clear()
            gc.collect()
            await anyio.sleep(0.05)
            assert conn.statistics().shared_in_use > 0
            del view
            await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")
            assert conn.statistics().shared_fallbacks == 0


@pytest.mark.parametrize("handler", ["plain", "async", "two handlers"])
async def test_a_request_loop_reuses_one_slot(socket_dir: str, handler: str) -> None:
    """A handler that drops its array releases the slot before its reply goes: when the
    request returns, the sender has its slot back, so a request loop reuses one slot per size
    (the release used to follow the reply, and each loop kept two slots)."""
    one_slot = {"max_shared_bytes": MiB}  # room for one 1 MiB array: a second slot falls back
    async with Actor("world", socket_root=socket_dir, silent=True, **one_slot) as world:
        server = await world.serve()

        def total(data: Any, client: Any) -> float:
            return float(data.sum())

        async def total_later(data: Any, client: Any) -> float:
            await anyio.sleep(0)
            return float(data.sum())

        if handler == "plain":
            server.on("sum", total)
        elif handler == "async":
            server.on("sum", total_later)
        else:
            server.on("sum", total)
            server.on("sum", lambda data, client: None)
        async with Actor("hello", socket_root=socket_dir, silent=True, **one_slot) as hello:
            conn = await hello.connect_to("world")
            values = np.ones(MiB // 4, dtype=np.float32)
            with anyio.fail_after(10):
                for _ in range(20):
                    assert await conn.request("sum", values) == float(values.sum())
                    assert conn.statistics().shared_in_use == 0
            stats = conn.statistics()
            assert stats.shared_sent == 20
            assert stats.shared_fallbacks == 0


async def test_small_arrays_tcp_and_peers_without_it_take_the_socket_path(
    socket_dir: str,
) -> None:
    async with (
        Actor("world", socket_root=socket_dir, silent=True) as world,  # no shm here
        Actor("net", socket_root=socket_dir, silent=True, **SHM) as net_actor,
    ):
        server = await world.serve()
        tcp = await net_actor.serve_net(port=0)
        for endpoint in (server, tcp):
            endpoint.on("sum", lambda data, client: float(data.sum()))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            plain = await hello.connect_to("world")
            net = await hello.connect_to_net("net", port=tcp.address[1])  # type: ignore[index]
            big = np.ones(MiB, dtype=np.uint8)
            with anyio.fail_after(10):
                for conn in (plain, net):
                    assert await conn.request("sum", big) == MiB
                    assert not conn.statistics().shared_memory
                    assert conn.statistics().shared_fallbacks == 0
                    assert isinstance(conn.empty(10, np.int8), np.ndarray)  # an ordinary one
    async with _summing(socket_dir) as (_, conn):
        with anyio.fail_after(10):
            assert await conn.request("sum", np.ones(1000)) == 1000  # below the threshold
        assert conn.statistics().shared_memory
        assert conn.statistics().shared_sent == 0


async def test_copy_on_write_arrays_are_private_and_a_reused_slot_reads_fresh(
    socket_dir: str,
) -> None:
    config = {**SHM, "shared_copy_on_write": True}
    async with Actor("world", socket_root=socket_dir, silent=True, **config) as world:
        server = await world.serve()

        def scribble(data: Any, client: Any) -> list[float]:
            before = [float(data[0]), float(data[-1])]
            data[:] = -1  # private pages: the sender never sees it
            return before

        server.on("scribble", scribble)
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            with anyio.fail_after(10):
                for round in range(3):
                    values = np.full(MiB // 8, float(round))
                    assert await conn.request("scribble", values) == [round, round]
                    assert values[0] == round
                    await _poll(lambda: conn.statistics().shared_in_use == 0, "release")
            assert conn.statistics().shared_sent == 3


async def test_empty_gives_an_array_sent_without_a_copy(socket_dir: str) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        kept: list[Any] = []

        def keep(data: Any, client: Any) -> float:
            kept.append(data)
            return float(data[0, 0])

        server.on("keep", keep)
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn: Connection = await hello.connect_to("world")
            out = conn.empty((256, 1024), np.float32)
            out[...] = 7
            in_use = conn.statistics().shared_in_use
            assert in_use >= out.nbytes
            with anyio.fail_after(10):
                assert await conn.request("keep", out) == 7
                # The receiver sees the very memory the producer wrote.
                out[0, 0] = 8
                assert kept[0][0, 0] == 8
                assert await conn.request("keep", out[128:]) == 7  # a part of it, too
            assert conn.statistics().shared_in_use == in_use  # no new slot
            kept.clear()
            gc.collect()
            await anyio.sleep(0.05)
            assert conn.statistics().shared_in_use == in_use  # the producer still holds it
            del out
            await _poll(lambda: conn.statistics().shared_in_use == 0, "both released")


@pytest.mark.parametrize("shm", [True, False])
async def test_empty_with_a_shape_or_dtype_numpy_refuses_is_a_config_error(
    socket_dir: str, shm: bool
) -> None:
    """``empty()``'s arguments are checked as every other: ConfigError (numpy's own ValueError
    or TypeError came out, with shared memory on or off), and the connection goes on."""
    options = SHM if shm else {}
    async with Actor("world", socket_root=socket_dir, silent=True, **options) as world:
        server = await world.serve()
        server.on("sum", lambda data, client: float(data.sum()))
        async with Actor("hello", socket_root=socket_dir, silent=True, **options) as hello:
            conn: Connection = await hello.connect_to("world")
            refused: list[tuple[Any, Any]] = [
                *[(-1, np.float64), (4, "nope"), ((2, -3), np.int8), ("4", float)],
                # what could never be sent (a ValueError that kept its place in the pool),
                # and a size numpy refuses (a ValueError)
                *[(MiB, object), (4, [("a", "i4"), ("b", "f8")]), (4, "V8")],
                *[((2**40, 2**40), np.float64), ((2**62, 4), np.uint8)],
                # one numpy would try to make (a MemoryError), more than could ever be sent
                ((2**40,), np.uint8),
                # sizes numpy refuses though the array would hold nothing (a zero beside them)
                *[((2**62, 2**62, 0), "f8"), ((2**64,), "S0"), ((2**63, 0), "u1")],
            ]
            for shape, dtype in refused:
                with pytest.raises(ConfigError, match="empty"):
                    conn.empty(shape, dtype)
            assert conn.statistics().shared_in_use == 0  # nothing kept by what was refused
            assert conn.empty([2, np.int64(3)], "f4").shape == (2, 3)  # as numpy takes them
            out = conn.empty(4, np.float64)
            out[...] = 1
            with anyio.fail_after(10):
                assert await conn.request("sum", out) == 4


async def test_a_pool_exhausted_by_a_receiver_that_keeps_everything_falls_back(
    socket_dir: str,
) -> None:
    small = {"max_shared_bytes": 4 * MiB}
    async with Actor("world", socket_root=socket_dir, silent=True, **small) as world:
        server = await world.serve()
        kept: list[Any] = []
        server.on("keep", lambda data, client: kept.append(data))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            with anyio.fail_after(10):
                for number in range(10):
                    await conn.emit("keep", np.full(MiB // 8, float(number)))
                await _poll(lambda: len(kept) == 10, "all of them")
            assert [float(a[0]) for a in kept] == list(range(10))
            stats = conn.statistics()
            assert stats.shared_sent == 4  # the peer accepts 4 MiB of segments: 4 arrays
            assert stats.shared_fallbacks == 6
            assert all(not a.flags.writeable for a in kept[:4])
            kept.clear()
            await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")


async def test_segments_announced_in_a_burst_reach_a_slow_receiver_with_their_frames(
    socket_dir: str,
) -> None:
    """A receiver reads ahead of its handlers, and on asyncio the loop reads ahead of the
    channel while it waits for them (its inbox is full: ``max_inbox_bytes``): each new
    segment's descriptor must still reach the frame that announces it."""
    async with Actor(
        "world", socket_root=socket_dir, silent=True, max_inbox_bytes=256 * 1024, **SHM
    ) as world:
        server = await world.serve()
        kept: list[Any] = []

        async def keep(data: Any, client: Any) -> None:
            await anyio.sleep(0.005)
            kept.append(data)

        server.on("keep", keep)
        server.on("ping", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            with anyio.fail_after(20):
                # The connection's writer idles: the first segment's descriptor goes with the
                # frame the sender writes itself, the next ones' mostly through the writer.
                assert await conn.request("ping", 1) == 1
                for number in range(24):
                    await conn.emit("keep", np.full(MiB // 8 * (1 + number % 3), float(number)))
                    if number % 4 == 0:  # frames through the socket between: the inbox fills
                        await conn.emit("keep", bytes(200 * 1024))
                await _poll(lambda: len(kept) == 30, "all of them")
            arrays = [a for a in kept if isinstance(a, np.ndarray)]
            assert [float(a[0]) for a in arrays] == list(range(24))
            assert all(float(a[-1]) == float(a[0]) for a in arrays)
            assert conn.statistics().shared_sent == 24
            assert conn.connected
            kept.clear()
            arrays.clear()
            await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")


# --- a hostile peer ---------------------------------------------------------------------------


def _frame(body: Any) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(len(packed)) + packed


def _read_frame(sock: socket.socket) -> Any:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    (size,) = HEADER.unpack(exactly(4))
    return msgpack.unpackb(exactly(size), raw=False)


def _sealed(size: int) -> int:
    fd = os.memfd_create("evil", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _unsealed(size: int) -> int:
    fd = os.memfd_create("evil", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _tmp_file(size: int) -> int:
    fd, path = tempfile.mkstemp(dir="/tmp")
    os.unlink(path)
    os.ftruncate(fd, size)
    return fd


def _write_only(size: int) -> int:
    """A sealed memfd of the size announced, opened for writing only: it passes every check
    but cannot be mapped for reading."""
    sealed = _sealed(size)
    try:
        return os.open(f"/proc/self/fd/{sealed}", os.O_WRONLY)
    finally:
        os.close(sealed)


def _pipe(size: int) -> int:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


PAGE = 4096
# (what the peer passes, its size, how many, the frame they go with)
HOSTILE: dict[str, tuple[Callable[[int], int], int, int, Any]] = {
    "a pipe": (_pipe, PAGE, 1, [12, 0, PAGE]),
    "a /tmp file": (_tmp_file, PAGE, 1, [12, 0, PAGE]),
    "an unsealed memfd": (_unsealed, PAGE, 1, [12, 0, PAGE]),
    "a size other than announced": (_sealed, PAGE, 1, [12, 0, 2 * PAGE]),
    "a memfd that cannot be mapped": (_write_only, PAGE, 1, [12, 0, PAGE]),
    "a segment over the limit": (_sealed, PAGE, 1, [12, 0, 128 * MiB]),
    "a descriptor no frame claims": (_sealed, PAGE, 1, [0, "event", None]),
    "more descriptors than a message may carry": (_sealed, PAGE, 5, [12, 0, PAGE]),
    "a share without its descriptor": (_sealed, PAGE, 0, [12, 0, PAGE]),
    # protocol.md 5.4: segments are numbered 0, 1, 2, ... (these were taken: a probe's finding)
    "a segment numbered out of order": (_sealed, PAGE, 1, [12, 5, PAGE]),
    "a segment no array can name (past u32)": (_sealed, PAGE, 1, [12, 2**32, PAGE]),
    "an array in a segment never shared": (
        _sealed,
        PAGE,
        0,
        [0, "event", msgpack.ExtType(79, struct.pack(">BIQ", 1, 3, 0) + b"\x03<f4\x01" + bytes(8))],
    ),
    "an array beyond its segment": (
        _sealed,
        PAGE,
        1,
        [
            0,
            "event",
            msgpack.ExtType(
                79, struct.pack(">BIQ", 1, 0, 0) + b"\x03<f4\x01" + struct.pack(">Q", 2048)
            ),
        ],
    ),
}


def _evil(path: str, make: Callable[[int], int], size: int, count: int, body: Any) -> bool:
    """Speak the protocol up to the welcome, send ``body`` with ``count`` descriptors; whether
    the server then closed the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)  # (a server that does not drop us fails the test)
        sock.connect(path)
        sock.sendall(_frame([4, {"v": 1, "id": "evil", "shm": 64 * MiB}]))
        kind, welcome = _read_frame(sock)
        assert kind == 5
        assert welcome["shm"] == 64 * MiB
        fds = [make(size) for _ in range(count)]
        try:
            if body[0] == 0 and count:  # the segment the array names: shared first
                sock.sendmsg(
                    [_frame([12, 0, size])],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                )
                if body[2] is None:  # and then one more that nothing claims
                    sock.sendmsg(
                        [_frame(body)],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    )
                else:
                    sock.sendall(_frame(body))
            elif count:
                sock.sendmsg(
                    [_frame(body)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                )
            else:
                sock.sendall(_frame(body))
        finally:
            for fd in fds:
                os.close(fd)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        return True


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_peer_passing_descriptors_is_dropped(socket_dir: str, case: str) -> None:
    make, size, count, body = HOSTILE[case]
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        with anyio.fail_after(10):
            assert await anyio.to_thread.run_sync(_evil, server.address, make, size, count, body)
            await _poll(lambda: not server.clients, "the drop")
        # A good client is still served.
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            server.on("sum", lambda data, client: float(data.sum()))
            conn = await hello.connect_to("world")
            with anyio.fail_after(10):
                assert await conn.request("sum", np.ones(MiB)) == MiB


def _evil_server(listener: socket.socket) -> None:
    """Welcome each client (up to three: it reconnects) with shared memory, pass it a segment
    it cannot map, and an event naming it."""
    listener.settimeout(5)
    for _ in range(3):
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            return
        with sock:
            sock.settimeout(5)
            kind, hello = _read_frame(sock)
            assert kind == 4
            sock.sendall(_frame([5, {"v": 1, "id": "evil", "shm": hello["shm"]}]))
            fd = _write_only(PAGE)
            try:
                sock.sendmsg(
                    [_frame([12, 0, PAGE])],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                )
            finally:
                os.close(fd)
            array_in_it = struct.pack(">BIQ", 1, 0, 0) + b"\x03<f4\x01" + struct.pack(">Q", 4)
            try:
                sock.sendall(_frame([0, "event", msgpack.ExtType(79, array_in_it)]))
            except OSError:  # (the client may have closed at the segment already)
                continue
            try:
                while sock.recv(4096):
                    pass
            except OSError:  # (a reset, or our timeout: the test's assertions say which)
                pass


async def test_a_segment_the_client_cannot_map_costs_it_that_connection_only(
    socket_dir: str,
) -> None:
    """A server passes a descriptor that passes every check but cannot be mapped (opened write
    only; or the receiver is short of address space: ENOMEM). mmap's OSError escaped the
    connection's task: the rest of the client's `async with Actor` was cancelled, and it raised
    an ExceptionGroup. It is a violation like any other: the connection is closed (and its
    error reported), the actor goes on."""
    errors: list[Exception] = []
    path = os.path.join(socket_dir, "evil.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(anyio.to_thread.run_sync, _evil_server, listener)
                async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
                    conn = await hello.connect_to("evil", path)
                    conn.on("error", errors.append)
                    with anyio.fail_after(10):
                        await _poll(lambda: bool(errors), "the error")
                        await conn.aclose()
                    still = await hello.serve()  # the actor goes on
                    assert not still.clients
        finally:
            os.unlink(path)
    assert "cannot map" in str(errors[0]), errors


# --- processes killed -------------------------------------------------------------------------

PEER = textwrap.dedent(
    """
    import os, sys, anyio, numpy as np
    from ipcactors import Actor

    async def main():
        root, role = sys.argv[1], sys.argv[2]
        async with Actor(role, socket_root=root, silent=True, max_shared_bytes=64 << 20) as me:
            if role == "sender":
                conn = await me.connect_to("world")
                for number in range(4):
                    await conn.request("keep", np.full(1 << 18, float(number), np.float32))
            else:
                kept = []
                server = await me.serve()
                server.on("keep", lambda data, client: kept.append(data) or len(kept))
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def _peer(socket_dir: str, role: str) -> Any:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return await anyio.open_process(
        [sys.executable, "-c", PEER, socket_dir, role], env=env, stderr=None
    )


async def _wait_ready(process: Any) -> None:
    with anyio.fail_after(30):
        assert process.stdout is not None
        line = b""
        while b"ready" not in line:
            line += await process.stdout.receive()


@pytest.mark.parametrize(
    ("arrays", "sender_limit"),
    [(400, 1024), (70_000, None)],
    ids=["over-the-senders-frame", "over-the-object-budget"],
)
async def test_arrays_dropped_all_at_once_are_all_released(
    socket_dir: str, arrays: int, sender_limit: int | None
) -> None:
    """The receiver tells the sender which places it may reuse in release frames, as many as
    it takes to keep within the sender's limits: it made one, which a release of many arrays
    at once (400 against a max_frame_size of 1024, 70,000 against the 131,072 objects of a
    frame) overflowed. It was dropped without a word, and those places stayed in use for the
    rest of the connection."""
    config = {"max_shared_bytes": 512 * MiB, "shared_threshold": 4096}
    limit = {} if sender_limit is None else {"max_frame_size": sender_limit}
    async with (
        Actor("world", socket_root=socket_dir, silent=True, **config) as world,
        Actor("hello", socket_root=socket_dir, silent=True, **config, **limit) as hello,
    ):
        server = await world.serve()
        held: list[Any] = []
        all_in = anyio.Event()

        @server.on("a")
        def keep(array: Any, client: Any) -> None:
            held.append(array)
            if len(held) == arrays:
                held.clear()  # every one dropped at once
                all_in.set()

        conn = await hello.connect_to("world")
        array = np.ones(1024, np.float32)  # 4 KiB
        with anyio.fail_after(60):
            for _ in range(arrays):
                await conn.emit("a", array)
            await all_in.wait()
        assert conn.statistics().shared_sent == arrays
        await _poll(lambda: conn.statistics().shared_in_use == 0, "every place released")
        assert conn.connected


def _named_shm() -> set[str]:
    """What is named in /dev/shm, but the POSIX semaphores (``sem.*``) other processes of the
    run make (multiprocessing's, under pytest-xdist another worker's): ipcactors names
    nothing there (its memory is memfd's)."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


async def test_a_killed_sender_leaves_the_arrays_it_sent_valid_and_nothing_behind(
    socket_dir: str,
) -> None:
    dev_shm = _named_shm()
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        kept: list[Any] = []
        server.on("keep", lambda data, client: kept.append(data) or len(kept))
        process = await _peer(socket_dir, "sender")
        try:
            await _wait_ready(process)
            process.send_signal(signal.SIGKILL)
            with anyio.fail_after(10):
                await process.wait()
            await _poll(lambda: not server.clients, "the disconnect")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
        assert [float(a.sum()) for a in kept] == [n * (1 << 18) for n in range(4)]
        assert _memfd_maps() > 0
        kept.clear()
        gc.collect()
        assert _memfd_maps() == 0  # its last mapping went with the last array
    assert _named_shm() <= dev_shm  # nothing named, nothing left


async def test_a_killed_receiver_holding_arrays_costs_the_sender_nothing(
    socket_dir: str,
) -> None:
    dev_shm = _named_shm()
    process = await _peer(socket_dir, "world")
    try:
        await _wait_ready(process)
        async with Actor(
            "hello", socket_root=socket_dir, silent=True, stop_retrying=0, **SHM
        ) as hello:
            conn = await hello.connect_to("world")
            gone = anyio.Event()
            conn.on("disconnect", gone.set)  # (once the connection's end is done with)
            with anyio.fail_after(10):
                for number in range(4):
                    assert (
                        await conn.request("keep", np.full(1 << 18, 1.0, np.float32)) == number + 1
                    )
            assert conn.statistics().shared_in_use == 4 * MiB
            process.send_signal(signal.SIGKILL)
            with anyio.fail_after(10):
                await process.wait()
                await gone.wait()
            assert conn.statistics().shared_in_use == 0
        gc.collect()
        assert _memfd_maps() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()
    os.unlink(os.path.join(socket_dir, "app.world"))  # what a SIGKILLed server leaves
    assert _named_shm() <= dev_shm


async def test_a_closed_connections_segments_go_without_waiting_for_the_collector(
    socket_dir: str,
) -> None:
    """guide.md: segments "stay for the connection's life". Ended, its sender's stayed mapped
    until Python's cyclic garbage collector happened to run (the sender's state referred to
    itself): each reconnect pinned the segments of the connection before (a helper's probe:
    +64 MiB a reconnect, 101 to 389 MiB in 7). Here the collector does not run at all."""
    gc.collect()
    gc.disable()
    try:
        async with _summing(socket_dir) as (server, conn):
            with anyio.fail_after(10):
                for _ in range(3):
                    assert await conn.request("sum", np.ones(1 << 20, np.float32)) == 1 << 20
            assert conn.statistics().shared_sent == 3
            assert _memfd_maps() > 0
            await conn.aclose()
            with anyio.fail_after(10):
                while server.clients:
                    await anyio.sleep(0.01)
            assert _memfd_maps() == 0
    finally:
        gc.enable()


async def test_copy_on_write_arrays_of_one_place_keep_their_pages_while_one_lives(
    socket_dir: str,
) -> None:
    config = {**SHM, "shared_copy_on_write": True}
    async with Actor("world", socket_root=socket_dir, silent=True, **config) as world:
        server = await world.serve()
        kept: list[Any] = []
        server.on("keep", lambda data, client: kept.append(data) or len(kept))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            out = conn.empty(MiB // 8, np.float64)
            out[...] = 1.0
            with anyio.fail_after(10):
                assert await conn.request("keep", out) == 1
                assert await conn.request("keep", out) == 2
            kept[0][0] = 5.0  # private to the receiver, and the same memory as kept[1]
            assert kept[1][0] == 5.0
            assert out[0] == 1.0
            del kept[0]
            gc.collect()
            await anyio.sleep(0.05)
            assert kept[0][0] == 5.0  # its private page was not dropped under it
            kept.clear()
            del out
            await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")


async def test_copy_on_write_parts_that_share_a_page_leave_no_old_writes_behind(
    socket_dir: str,
) -> None:
    """Two parts of one `empty()` array meet inside a page; the receiver writes both, keeps
    the small one and drops the big one. Every page of the big one that the small one does
    not cover is the segment's again at once, and the rest once the small one goes: the next
    array in that place reads what was sent (99,840 of 200,000 values read the receiver's old
    -1.0: its private pages were kept because one page was still in use)."""
    config = {**SHM, "shared_copy_on_write": True}
    async with Actor("world", socket_root=socket_dir, silent=True, **config) as world:
        server = await world.serve()
        kept: list[Any] = []

        def write_both(parts: list[Any], client: Any) -> None:
            for part in parts:
                part[...] = -1.0  # private to the receiver
            kept.append(parts[1])

        server.on("write_both", write_both)
        server.on("drop", lambda data, client: kept.clear())
        server.on("wrong", lambda data, client: int((data != 7.0).sum()))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            out = conn.empty(200_000, np.float64)
            out[...] = 1.0
            with anyio.fail_after(10):
                await conn.request("write_both", [out[:100_000], out[100_000:140_000]])
                await conn.request("drop")
                del out
                await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")
                assert await conn.request("wrong", np.full(200_000, 7.0)) == 0


async def test_frames_naming_shared_memory_are_not_sent_on_the_next_connection(
    socket_dir: str,
) -> None:
    async with Actor("world", socket_root=socket_dir, silent=True, **SHM) as world:
        server = await world.serve()
        started = anyio.Event()

        async def stall(data: Any, client: Any) -> None:
            started.set()
            await anyio.sleep_forever()  # reads nothing more: the client's outbox fills

        server.on("stall", stall)
        async with Actor(
            "hello", socket_root=socket_dir, silent=True, max_outbox_bytes=1 << 30, **SHM
        ) as hello:
            conn = await hello.connect_to("world")
            big = np.ones(MiB // 4, np.float32)
            with anyio.fail_after(10):
                await conn.emit("stall", None)
                await started.wait()
                # Many frames queued behind a peer that does not read (small frames: the
                # arrays are in shared memory, past the bound on the socket): emitted until
                # its inbox and the kernel are full and the outbox holds the rest.
                for _ in range(1000):
                    await conn.emit("x", bytes(64 * 1024))
                    if conn.statistics().outbox_bytes > 2 * MiB:
                        break
                assert conn.statistics().outbox_bytes > 2 * MiB
                for _ in range(3):
                    await conn.emit("stall", big)
                failures: list[BaseException] = []

                async def ask() -> None:
                    try:
                        await conn.request("stall", big)
                    except ConnectionLostError as exc:
                        failures.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask)
                    await _poll(lambda: conn.statistics().shared_sent == 4, "the request")
                    await server.clients["hello"].aclose()  # queued frames are still queued
                assert failures
            stats = conn.statistics()
            assert stats.shared_dropped == 4
            assert stats.events_unhandled == 0


async def test_numpy_scalars_stay_plain_numbers_with_shared_memory_on(socket_dir: str) -> None:
    """numpy scalars travel as plain msgpack numbers, shared memory on or not (docs/protocol.md
    §2.1): with a small shared_threshold they went into shared memory and arrived as read-only
    0-d arrays."""
    options: dict[str, Any] = {**SHM, "shared_threshold": 1, "silent": True}
    async with Actor("world", socket_root=socket_dir, **options) as world:
        server = await world.serve()
        server.on("echo", lambda data, client: data)
        async with Actor("hello", socket_root=socket_dir, **options) as hello:
            connection = await hello.connect_to("world")
            with anyio.fail_after(10):
                back = await connection.request(
                    "echo", [np.float64(1.5), np.int64(3), np.bool_(True), np.ones(4)]
                )
    assert back[:3] == [1.5, 3, True]
    assert [type(value) for value in back[:3]] == [float, int, bool]
    assert isinstance(back[3], np.ndarray)  # (an array still goes through shared memory)


async def test_a_request_with_an_array_that_times_out_queued_still_gives_its_slot_back(
    socket_dir: str,
) -> None:
    """A request that times out before it is written is withdrawn (reliability.md), but one
    whose array is in a slot of shared memory goes out all the same: withdrawn, its frame
    was never sent and its slot never released, so each such timeout took a slot for as long
    as the connection lived (5 MiB after five 1 MiB requests)."""
    gate = anyio.Event()
    got: list[Any] = []

    async def held(data: Any, client: Any) -> None:
        await gate.wait()

    async with Actor(
        "world", socket_root=socket_dir, silent=True, max_inbox_bytes=64 * 1024, **SHM
    ) as world:
        server = await world.serve()
        server.on("ev", held)
        server.on("work", lambda data, client: got.append(data.shape))
        async with Actor("hello", socket_root=socket_dir, silent=True, **SHM) as hello:
            conn = await hello.connect_to("world")
            for _ in range(100):  # ~6 MB: most of it queued behind the held handler
                await conn.emit("ev", b"x" * 60_000)
            for _ in range(3):
                with pytest.raises(RequestTimeoutError):
                    await conn.request("work", np.ones(MiB, dtype=np.uint8), timeout=0.2)
            gate.set()
            with anyio.fail_after(10):
                assert await conn.request("work", np.ones(10, dtype=np.uint8)) is None
            await _poll(lambda: conn.statistics().shared_in_use == 0, "the releases")
    assert got == [(MiB,)] * 3 + [(10,)]
