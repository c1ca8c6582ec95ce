"""W8 one large array roles: ``python -m benchmarks.tensor_role ROLE CONFIG_JSON``.

A sample is one float32 array of ``mib`` MiB from send until the sender holds the receiver's
acknowledgement (a small answer), the receiver getting the array in a fresh buffer each time,
as the research note measured it (docs/performance.md, W8). ``samples`` after one warm-up
(three on the shared-memory paths: see ``ipc_client``).

- ``ipc-server`` / ``ipc-client``: ipcactors, ``await connection.request("take", array)``;
  the handler answers the array's size (the public API only, as a user would write it), on
  one of three paths (``w8_path`` in the config):
  - ``socket``: shared memory off; the array's bytes go through the socket;
  - ``shm``: ``Config.max_shared_bytes`` on both sides (Unix only); the array is copied once
    into a slot of the connection's shared pool, and the handler gets a view of that slot;
  - ``zc``: the same, the array made by ``connection.empty()`` and filled once before the
    clock starts, so each request names it where it is (no copy); after the round trips, as
    many ``emit``s of it are timed, the sender's side alone (``emit_ms``).
  The shared paths report the arrays that took the socket instead (``fallbacks``, a pool
  full) and fail if shared memory was not negotiated at all.
- ``sock-server`` / ``sock-client``: the floor on the same transport: a blocking socket,
  ``sendall`` of an 8-byte length and the array's memory; the receiver ``recv_into`` a fresh
  ``np.empty`` until full, then sends one byte back.
- ``memcpy``: ``np.copyto`` into a warm array of the same size, in one process: the memory limit.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import anyio
import numpy as np

from ._wire import backend_options, now, parse_args, say

LENGTH = struct.Struct(">Q")


def _array(config: dict[str, Any]) -> np.ndarray[Any, Any]:
    array = np.ones(int(config["mib"]) * (1 << 20) // 4, dtype=np.float32)
    array[-1] = 2.0  # touched: its pages are resident before the clock starts
    return array


def _report(samples: list[float], warmups: int = 1, **extra: Any) -> None:
    say("result", rounds=[{"samples_ms": samples[warmups:]}], **extra)


def _shared_bytes(config: dict[str, Any]) -> int:
    """``max_shared_bytes`` of both actors: 0 on the socket path, else room for a few arrays
    (a slot is free again only once the receiver's release arrived, maybe after its answer)."""
    if config.get("w8_path", "socket") == "socket":
        return 0
    return max(64 << 20, 4 * int(config["mib"]) << 20)


# --- ipcactors --------------------------------------------------------------------------------


async def ipc_server(config: dict[str, Any]) -> None:
    import ipcactors

    limit = int(config["mib"]) * (1 << 20) + (1 << 20)
    async with ipcactors.Actor(
        "w8",
        socket_root=config["dir"],
        silent=True,
        max_frame_size=limit,
        max_shared_bytes=_shared_bytes(config),
    ) as actor:
        if config["transport"] == "tcp":
            server = await actor.serve_net(host="127.0.0.1", port=0)
            say("ready", port=server.address[1])  # type: ignore[index]
        else:
            server = await actor.serve()
            say("ready", path=server.address)
        server.on("take", lambda data, client: data.nbytes)
        await anyio.sleep(config["deadline"])


async def ipc_client(config: dict[str, Any]) -> None:
    import ipcactors

    array = _array(config)
    limit = array.nbytes + (1 << 20)
    path = config.get("w8_path", "socket")
    samples = []
    emits = []
    async with ipcactors.Actor(
        "w8-client",
        socket_root=config["dir"],
        silent=True,
        stop_retrying=2,
        max_frame_size=limit,
        max_shared_bytes=_shared_bytes(config),
    ) as actor:
        if config["transport"] == "tcp":
            connection = await actor.connect_to_net("w8", "127.0.0.1", config["port"])
        else:
            connection = await actor.connect_to("w8")
        if path != "socket" and not connection.statistics().shared_memory:
            raise RuntimeError(f"W8 {path}: shared memory was not negotiated")
        if path == "zc":
            made = connection.empty(array.shape, array.dtype)
            made[...] = array  # filled once, before the clock: the producer's own work
            array = made
        # Shared memory: the pool's slots warm, as the memcpy's target is. The receiver's
        # release of a slot may arrive just after its answer, so the next request takes a
        # second slot (its first touch faults in every page: several times slower): two
        # warm-ups fill both, a third is a margin.
        warmups = 1 if path == "socket" else 3
        for _ in range(config["samples"] + warmups):
            start = now()
            size = await connection.request("take", array)
            samples.append((now() - start) * 1e3)
            assert size == array.nbytes
        if path == "zc":
            for _ in range(config["samples"] + 1):
                start = now()
                await connection.emit("take", array)
                emits.append((now() - start) * 1e3)
            await connection.request("take", array)  # every emit handled before the report
        statistics = connection.statistics()
    if path == "socket":
        _report(samples)
    else:
        _report(samples, warmups, fallbacks=statistics.shared_fallbacks, emit_ms=emits[1:])


# --- a plain socket (the floor) ------------------------------------------------------------------


def _exactly(sock: socket.socket, buffer: memoryview) -> None:
    filled = 0
    while filled < len(buffer):
        got = sock.recv_into(buffer[filled:])
        if not got:
            raise ConnectionError("closed")
        filled += got


def sock_server(config: dict[str, Any]) -> None:
    if config["transport"] == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        say("ready", port=listener.getsockname()[1])
    else:
        path = os.path.join(config["dir"], "w8.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        say("ready", path=path)
    connection, _ = listener.accept()
    header = bytearray(LENGTH.size)
    with connection:
        while True:
            try:
                _exactly(connection, memoryview(header))
            except ConnectionError:
                return
            (size,) = LENGTH.unpack(header)
            array = np.empty(size // 4, dtype=np.float32)  # fresh, as ipcactors' receiver's
            _exactly(connection, memoryview(array).cast("B"))
            connection.sendall(b"k")


def sock_client(config: dict[str, Any]) -> None:
    array = _array(config)
    if config["transport"] == "tcp":
        sock = socket.create_connection(("127.0.0.1", config["port"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(config["path"])
    samples = []
    with sock:
        data = memoryview(array).cast("B")
        for _ in range(config["samples"] + 1):
            start = now()
            sock.sendall(LENGTH.pack(len(data)))
            sock.sendall(data)
            if sock.recv(1) != b"k":
                raise ConnectionError("no acknowledgement")
            samples.append((now() - start) * 1e3)
    _report(samples)


def memcpy(config: dict[str, Any]) -> None:
    array = _array(config)
    target = np.zeros_like(array)
    samples = []
    for _ in range(config["samples"] + 1):
        start = now()
        np.copyto(target, array)
        samples.append((now() - start) * 1e3)
    _report(samples)


def main() -> None:
    role, config = parse_args()
    plain = {"sock-server": sock_server, "sock-client": sock_client, "memcpy": memcpy}
    if role in plain:
        plain[role](config)
        return
    backend, options = backend_options(config)
    role_fn = ipc_server if role == "ipc-server" else ipc_client

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"]):
            await role_fn(config)

    import ipcactors

    ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")


if __name__ == "__main__":
    main()
