"""Raw anyio roles, the floor: ``python -m benchmarks.raw_role ROLE CONFIG_JSON``.

Plain anyio socket streams and msgpack with a u32 big-endian length prefix, written the naive
way: ``receive(65536)`` into a bytearray, cut frames, ``msgpack.unpackb`` each; one ``send`` per
frame (W2 also with 100 frames joined per ``send``). Messages are ``[kind, data]`` arrays.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio
import msgpack
from anyio.abc import ByteStream, SocketAttribute

from ._wire import (
    MAX_EVENTS,
    MAX_READS,
    SMALL_EVENT,
    FrameBuffer,
    backend_options,
    exit_now,
    frame,
    merge_rounds,
    now,
    parse_args,
    payload,
    rss_bytes,
    say,
    wait_for_start,
)

RECEIVE = 65536


async def _listen(config: dict[str, Any]) -> Any:
    if config["transport"] == "tcp":
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        say("ready", port=listener.extra(SocketAttribute.local_port))
    else:
        path = f"{config['dir']}/raw.world"
        listener = await anyio.create_unix_listener(path)
        say("ready", path=path)
    return listener


async def _connect(config: dict[str, Any]) -> ByteStream:
    if config["transport"] == "tcp":
        return await anyio.connect_tcp("127.0.0.1", config["port"])
    return await anyio.connect_unix(config["path"])


async def _next_message(stream: ByteStream, buffer: FrameBuffer) -> Any:
    for _ in range(MAX_READS):
        messages = buffer.feed(await stream.receive(RECEIVE))
        if messages:
            return messages[0]
    raise RuntimeError(f"no message in {MAX_READS} reads")


# --- servers ----------------------------------------------------------------------------------


async def server(config: dict[str, Any]) -> None:
    """W1/W2/W3/W5 and memory (idle): answers ``ping``, counts ``ev``, answers ``fin``."""

    async def handle(stream: ByteStream) -> None:
        packer = msgpack.Packer()
        buffer = FrameBuffer()
        count = 0
        async with stream:
            for _ in range(MAX_READS):
                try:
                    data = await stream.receive(RECEIVE)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for kind, value in buffer.feed(data):
                    if kind == "ev":
                        count += 1
                    elif kind == "ping":
                        await stream.send(frame(packer, ["pong", value]))
                    elif kind == "fin":
                        await stream.send(frame(packer, ["done", count]))
                        count = 0

    listener = await _listen(config)
    with anyio.move_on_after(config["deadline"]):
        await listener.serve(handle)


async def server_w4(config: dict[str, Any]) -> None:
    """W4: encode each event once and ``send`` it to every client in turn."""
    clients = config["clients"]
    streams: list[ByteStream] = []
    finished = anyio.Event()

    async def keep(stream: ByteStream) -> None:
        streams.append(stream)
        await finished.wait()

    listener = await _listen(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, keep)
        with anyio.fail_after(config["deadline"] / 2):
            while len(streams) < clients:
                await anyio.sleep(0.005)
        packer = msgpack.Packer()
        buffers = [FrameBuffer() for _ in streams]
        rounds = []
        for index in range(config["rounds"] + 1):
            seconds = config["warmup"] if index == 0 else config["seconds"]
            sent = 0
            start = now()
            end = start + seconds
            while sent < MAX_EVENTS:
                for _ in range(100):
                    data = frame(packer, ["ev", SMALL_EVENT])
                    for stream in streams:
                        await stream.send(data)
                sent += 100
                if now() >= end:
                    break
            fin = frame(packer, ["fin", None])
            for stream in streams:
                await stream.send(fin)
            total = 0
            for stream, buffer in zip(streams, buffers, strict=True):
                _, count = await _next_message(stream, buffer)
                total += count
            elapsed = now() - start
            if index:
                rounds.append({"count": total, "sent": sent * clients, "seconds": elapsed})
        say("result", rounds=rounds)
        bye = frame(packer, ["bye", None])
        for stream in streams:
            await stream.send(bye)
        finished.set()
        tg.cancel_scope.cancel()


async def server_slow(config: dict[str, Any]) -> None:
    """Memory under a slow consumer: ``send`` 16 KiB frames to the client that never reads."""

    async def flood(stream: ByteStream) -> None:
        await anyio.sleep(config["settle"])
        packer = msgpack.Packer()
        chunk = bytes(config["chunk_bytes"])
        attempted = 0
        with anyio.move_on_after(config["seconds"]):
            while attempted < config["cap_bytes"]:
                await stream.send(frame(packer, ["ev", chunk]))
                attempted += len(chunk)
        say("done", attempted=attempted)
        await anyio.sleep(config["deadline"])

    listener = await _listen(config)
    with anyio.move_on_after(config["deadline"]):
        await listener.serve(flood)


# --- clients ----------------------------------------------------------------------------------


async def client_w1(config: dict[str, Any]) -> None:
    stream = await _connect(config)
    packer = msgpack.Packer()
    buffer = FrameBuffer()
    send = stream.send
    for i in range(config["warmup_iterations"]):
        await send(frame(packer, ["ping", i]))
        await _next_message(stream, buffer)
    rounds = []
    for _ in range(config["rounds"]):
        samples = []
        end = now() + config["seconds"]
        for i in range(config["max_iterations"]):
            start = now()
            await send(frame(packer, ["ping", i]))
            await _next_message(stream, buffer)
            stop = now()
            samples.append(round((stop - start) * 1e6, 2))
            if stop >= end:
                break
        rounds.append({"samples_us": samples})
    say("result", rounds=rounds)
    await stream.aclose()


async def client_stream(config: dict[str, Any]) -> None:
    """W2/W3: one ``send`` per frame, or ``batch`` frames joined per ``send``. The fan-in curve
    runs ``connections`` of these in one process."""
    streams = [await _connect(config) for _ in range(config.get("connections", 1))]
    await wait_for_start(config)
    per_connection: list[list[dict[str, Any]]] = [[] for _ in streams]
    async with anyio.create_task_group() as tg:
        for stream, rounds in zip(streams, per_connection, strict=True):
            tg.start_soon(_stream, stream, config, rounds)
    say("result", rounds=merge_rounds(per_connection))


async def _stream(stream: ByteStream, config: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    data = payload(config)
    limit = config.get("max_events", MAX_EVENTS)  # fan-in: a share of one budget
    batch = config.get("batch", 1)
    check = 1 if config.get("payload_bytes") else 100
    packer = msgpack.Packer()
    buffer = FrameBuffer()
    send = stream.send
    for index in range(config["rounds"] + 1):
        seconds = config["warmup"] if index == 0 else config["seconds"]
        sent = 0
        start = now()
        end = start + seconds
        while sent < limit:
            if batch == 1:
                for _ in range(check):
                    await send(frame(packer, ["ev", data]))
                sent += check
            else:
                await send(b"".join([frame(packer, ["ev", data]) for _ in range(batch)]))
                sent += batch
            if now() >= end:
                break
        await send(frame(packer, ["fin", None]))
        _, count = await _next_message(stream, buffer)
        elapsed = now() - start
        if count != sent:
            raise RuntimeError(f"server counted {count} events, {sent} were sent")
        if index:
            rounds.append({"count": sent, "seconds": elapsed})
    await stream.aclose()


async def client_w4(config: dict[str, Any]) -> None:
    """The broadcast receivers of one process (``connections`` of them)."""
    streams = [await _connect(config) for _ in range(config.get("connections", 1))]
    say("ready")
    async with anyio.create_task_group() as tg:
        for stream in streams:
            tg.start_soon(_receive_broadcast, stream)


async def _receive_broadcast(stream: ByteStream) -> None:
    packer = msgpack.Packer()
    buffer = FrameBuffer()
    count = 0
    async with stream:
        for _ in range(MAX_READS):
            for kind, _ in buffer.feed(await stream.receive(RECEIVE)):
                if kind == "ev":
                    count += 1
                elif kind == "fin":
                    await stream.send(frame(packer, ["done", count]))
                    count = 0
                elif kind == "bye":
                    return


async def client_w5(config: dict[str, Any]) -> None:
    packer = msgpack.Packer()
    rounds = []
    for index in range(config["rounds"] + 1):
        iterations = config["warmup_iterations"] if index == 0 else config["max_iterations"]
        samples = []
        end = now() + config["seconds"]
        for _ in range(iterations):
            start = now()
            stream = await _connect(config)
            await stream.send(frame(packer, ["ping", 1]))
            await _next_message(stream, FrameBuffer())
            stop = now()
            await stream.aclose()
            samples.append(round((stop - start) * 1e6, 2))
            if stop >= end:
                break
        if index:
            rounds.append({"samples_us": samples})
    say("result", rounds=rounds)


def _plain_ping(config: dict[str, Any]) -> bytes:
    if config["protocol"] == "raw":
        return frame(msgpack.Packer(), ["ping", 1])
    return b'{"type":"ping","data":1}\f'  # node-ipc's JSON


def _plain_connect(config: dict[str, Any]) -> socket.socket:
    if config["transport"] == "tcp":
        return socket.create_connection(("127.0.0.1", config["port"]), timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(config["path"])
    return sock


def _plain_round_trip(sock: socket.socket, ping: bytes) -> None:
    sock.sendall(ping)
    if not sock.recv(65536):
        raise RuntimeError("the server closed a connection")


def client_idle_plain(config: dict[str, Any]) -> None:
    """Memory per idle connection, for raw and node-ipc servers: plain blocking sockets, each
    answering one ping (so the server has really accepted it); reported, then held until the
    runner stops this process (as ipcactors' ``client-idle``)."""
    ping = _plain_ping(config)
    sockets: list[socket.socket] = []

    def open_many(count: int) -> None:
        for _ in range(count):
            sock = _plain_connect(config)
            sockets.append(sock)
            _plain_round_trip(sock, ping)

    server_pid = config["server_pid"]
    open_many(config["warm_connections"])
    time.sleep(config["settle"])
    before = rss_bytes(server_pid)
    open_many(config["connections"])
    time.sleep(config["settle"])
    after = rss_bytes(server_pid)
    say("result", before=before, after=after, connections=config["connections"])
    time.sleep(config["deadline"])
    exit_now()


def client_active_plain(config: dict[str, Any]) -> None:
    """The idle curve's active client, for raw and node-ipc servers: one blocking socket's
    round trips beside the idle connections another process holds."""
    ping = _plain_ping(config)
    sock = _plain_connect(config)
    for _ in range(config["warmup_iterations"]):
        _plain_round_trip(sock, ping)
    samples = []
    for _ in range(config["active_pings"]):
        start = now()
        _plain_round_trip(sock, ping)
        samples.append(round((now() - start) * 1e6, 2))
    say("result", samples_us=samples)
    exit_now()


def client_slow_plain(config: dict[str, Any]) -> None:
    """Memory under a slow consumer, for raw and node-ipc servers: connect, never read."""
    if config["transport"] == "tcp":
        sock = socket.create_connection(("127.0.0.1", config["port"]), timeout=10)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(config["path"])
    say("ready")
    time.sleep(config["deadline"])
    sock.close()


ROLES = {
    "server": server,
    "server-w4": server_w4,
    "server-slow": server_slow,
    "client-w1": client_w1,
    "client-stream": client_stream,
    "client-w4": client_w4,
    "client-w5": client_w5,
}
PLAIN_ROLES = {
    "client-idle-plain": client_idle_plain,
    "client-active-plain": client_active_plain,
    "client-slow-plain": client_slow_plain,
}


def main() -> None:
    role, config = parse_args()
    if role in PLAIN_ROLES:
        PLAIN_ROLES[role](config)
        return
    backend, options = backend_options(config)

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"] + 2):
            await ROLES[role](config)

    anyio.run(bounded, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
