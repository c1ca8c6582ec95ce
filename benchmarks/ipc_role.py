"""ipcactors roles: ``python -m benchmarks.ipc_role ROLE CONFIG_JSON``.

Each role is written the way a user would write it: the public API only, one ``emit`` per
event (coalescing is the library's job), ``request`` for a round trip.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import anyio

import ipcactors

from ._wire import (
    MAX_EVENTS,
    SMALL_EVENT,
    backend_options,
    connection_names,
    exit_now,
    merge_rounds,
    now,
    parse_args,
    payload,
    rss_bytes,
    say,
    wait_for_start,
)


def _actor(name: str, config: dict[str, Any], **extra: Any) -> ipcactors.Actor:
    # stop_retrying: a benchmark client that cannot connect should fail fast, not retry.
    # acked: the acknowledged rows (W2, W4) run both sides with Config.acked="on"; passed
    # only when on, so that --compare can run a ref from before Config.acked.
    # shared_bytes: likewise, Config.max_shared_bytes (w1-shm).
    if config.get("acked", "off") != "off":
        extra["acked"] = config["acked"]
    if config.get("shared_bytes"):  # w1-shm: shared memory on, small messages only
        extra["max_shared_bytes"] = config["shared_bytes"]
    return ipcactors.Actor(name, socket_root=config["dir"], silent=True, stop_retrying=2, **extra)


async def _listen(actor: ipcactors.Actor, config: dict[str, Any]) -> ipcactors.Server:
    if config["transport"] == "tcp":
        return await actor.serve_net(host="127.0.0.1", port=0)
    return await actor.serve()


# connect_to(wait=False) (frames right behind the hello) where the library has it: W5 uses it,
# as a user who cares about the first reply would; older trees (--compare) connect as they can.
PIPELINED = "wait" in inspect.signature(ipcactors.Actor.connect_to).parameters


async def _connect(
    actor: ipcactors.Actor, config: dict[str, Any], *, wait: bool = True
) -> ipcactors.Connection:
    options = {} if wait or not PIPELINED else {"wait": False}
    if config["transport"] == "tcp":
        return await actor.connect_to_net("world", "127.0.0.1", config["port"], **options)
    return await actor.connect_to("world", **options)


def _ready(server: ipcactors.Server) -> None:
    address = server.address
    if isinstance(address, tuple):
        say("ready", port=address[1])
    else:
        say("ready", path=address)


# --- servers ----------------------------------------------------------------------------------


async def server(config: dict[str, Any]) -> None:
    """W1/W2/W3/W5 and memory (idle): answers ``ping``, counts ``ev``, answers ``fin``."""
    async with _actor("world", config, max_connections=config.get("max_connections", 100)) as a:
        srv = await _listen(a, config)
        counts: dict[int, int] = {}  # per client: the fan-in curve's clients emit at once

        srv.on("ping", lambda data, client: data)

        @srv.on("ev")
        def on_ev(data: Any, client: ipcactors.Client) -> None:
            key = id(client)
            counts[key] = counts.get(key, 0) + 1

        @srv.on("fin")
        async def on_fin(data: Any, client: ipcactors.Client) -> None:
            await client.emit("done", counts.pop(id(client), 0))

        _ready(srv)
        await anyio.sleep(config["deadline"])


async def server_w4(config: dict[str, Any]) -> None:
    """W4: broadcast small events to ``clients`` processes for a while, then ``fin``; each
    client answers ``done`` with what it received."""
    clients = config["clients"]
    async with _actor("world", config, max_connections=config.get("max_connections", 100)) as a:
        srv = await _listen(a, config)
        dones: list[int] = []
        all_done = anyio.Event()

        @srv.on("done")
        def on_done(data: Any, client: ipcactors.Client) -> None:
            dones.append(data)
            if len(dones) == clients:
                all_done.set()

        _ready(srv)
        with anyio.fail_after(config["deadline"] / 2):
            while len(srv.clients) < clients:
                await anyio.sleep(0.005)
        rounds = []
        for index in range(config["rounds"] + 1):
            seconds = config["warmup"] if index == 0 else config["seconds"]
            dones.clear()
            all_done = anyio.Event()
            sent = 0
            start = now()
            end = start + seconds
            while sent < MAX_EVENTS:
                for _ in range(100):
                    await srv.broadcast("ev", SMALL_EVENT)
                sent += 100
                if now() >= end:
                    break
            await srv.broadcast("fin")
            await all_done.wait()
            elapsed = now() - start
            if index:
                rounds.append({"count": sum(dones), "sent": sent * clients, "seconds": elapsed})
        say("result", rounds=rounds)
        await srv.broadcast("bye")
        await anyio.sleep(0.2)


async def server_slow(config: dict[str, Any]) -> None:
    """Memory under a slow consumer: emit 16 KiB events to the one client as fast as ``emit``
    lets us, for ``seconds`` or up to ``cap_bytes``, then report."""
    async with _actor("world", config) as a, anyio.create_task_group() as tg:
        srv = await _listen(a, config)

        async def flood(client: ipcactors.Client) -> None:
            await anyio.sleep(config["settle"])
            chunk = bytes(config["chunk_bytes"])
            attempted = 0
            with anyio.move_on_after(config["seconds"]):
                while attempted < config["cap_bytes"]:
                    await client.emit("ev", chunk)
                    attempted += len(chunk)
            say("done", attempted=attempted, bound=a.config.max_outbox_bytes)

        srv.on("connect", lambda client: tg.start_soon(flood, client))
        _ready(srv)
        await anyio.sleep(config["deadline"])
        tg.cancel_scope.cancel()


# --- clients ----------------------------------------------------------------------------------


async def client_w1(config: dict[str, Any]) -> None:
    """W1: ``request("ping")`` round trips, one at a time."""
    async with _actor("hello", config) as a:
        conn = await _connect(a, config)
        request = conn.request
        for i in range(config["warmup_iterations"]):
            await request("ping", i)
        rounds = []
        for _ in range(config["rounds"]):
            samples = []
            end = now() + config["seconds"]
            for i in range(config["max_iterations"]):
                start = now()
                await request("ping", i)
                stop = now()
                samples.append(round((stop - start) * 1e6, 2))
                if stop >= end:
                    break
            rounds.append({"samples_us": samples})
        say("result", rounds=rounds)


async def client_stream(config: dict[str, Any]) -> None:
    """W2/W3: ``emit`` events one at a time for a while, then ``fin``; the server's ``done``
    (handled after every event before it) ends the round. The fan-in curve runs ``connections``
    of these in one process (one actor each: a server holds one connection per id)."""
    first, connections = config.get("index", ""), config.get("connections", 1)
    names = [f"hello{first}"] if connections == 1 else connection_names("hello", config)
    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for name in names:
            actor = await stack.enter_async_context(_actor(name, config))
            conns.append(await _connect(actor, config))
        await wait_for_start(config)
        per_connection: list[list[dict[str, Any]]] = [[] for _ in conns]
        async with anyio.create_task_group() as tg:
            for conn, rounds in zip(conns, per_connection, strict=True):
                tg.start_soon(_stream, conn, config, rounds)
    say("result", rounds=merge_rounds(per_connection))


async def _stream(
    conn: ipcactors.Connection, config: dict[str, Any], rounds: list[dict[str, Any]]
) -> None:
    data = payload(config)
    limit = config.get("max_events", MAX_EVENTS)  # fan-in: a share of one budget
    check = 1 if config.get("payload_bytes") else 100
    done: list[Any] = [None, anyio.Event()]

    @conn.on("done")
    def on_done(count: int) -> None:
        done[0] = count
        done[1].set()

    emit = conn.emit
    for index in range(config["rounds"] + 1):
        seconds = config["warmup"] if index == 0 else config["seconds"]
        done[1] = anyio.Event()
        sent = 0
        start = now()
        end = start + seconds
        while sent < limit:
            for _ in range(check):
                await emit("ev", data)
            sent += check
            if now() >= end:
                break
        await emit("fin")
        await done[1].wait()
        elapsed = now() - start
        if done[0] != sent:
            raise RuntimeError(f"server counted {done[0]} events, {sent} were sent")
        if index:
            rounds.append({"count": sent, "seconds": elapsed})


async def client_w4(config: dict[str, Any]) -> None:
    """W4: the broadcast receivers of one process (``connections`` of them, one actor each):
    count ``ev``, answer ``fin`` with the count."""
    bye = anyio.Event()

    async def receiver(name: str, stack: contextlib.AsyncExitStack) -> None:
        actor = await stack.enter_async_context(_actor(name, config))
        conn = await _connect(actor, config)
        count = 0

        @conn.on("ev")
        def on_ev(data: Any) -> None:
            nonlocal count
            count += 1

        @conn.on("fin")
        async def on_fin(data: Any) -> None:
            nonlocal count
            got, count = count, 0
            await conn.emit("done", got)

        conn.on("bye", lambda data: bye.set())

    async with contextlib.AsyncExitStack() as stack:
        for name in connection_names("c", config):
            await receiver(name, stack)
        say("ready")
        await bye.wait()


async def client_w5(config: dict[str, Any]) -> None:
    """W5: a fresh actor connects (handshake included) and gets its first reply; timed from
    ``connect_to`` until the reply is in. ``connect_to(wait=False)``: the request goes right
    behind the hello."""
    rounds = []
    for index in range(config["rounds"] + 1):
        iterations = config["warmup_iterations"] if index == 0 else config["max_iterations"]
        samples = []
        end = now() + config["seconds"]
        for i in range(iterations):
            async with _actor(f"hello{i}", config) as a:
                start = now()
                conn = await _connect(a, config, wait=False)
                await conn.request("ping", 1)
                stop = now()
            samples.append(round((stop - start) * 1e6, 2))
            if stop >= end:
                break
        if index:
            rounds.append({"samples_us": samples})
    say("result", rounds=rounds)


async def client_idle(config: dict[str, Any]) -> None:
    """Memory per idle connection: open a few connections, read the server's RSS, open
    ``connections`` more (each answers one request, so the server has really taken it), read
    again, report; then hold them all until the runner stops this process (the idle curve's
    active client, in a process of its own, pings meanwhile)."""
    server_pid = config["server_pid"]
    async with contextlib.AsyncExitStack() as stack:

        async def open_many(first: int, count: int) -> None:
            for i in range(first, first + count):
                a = await stack.enter_async_context(_actor(f"idle{i}", config))
                conn = await _connect(a, config)
                await conn.request("ping", i)

        await open_many(0, config["warm_connections"])
        await anyio.sleep(config["settle"])
        before = rss_bytes(server_pid)
        await open_many(config["warm_connections"], config["connections"])
        await anyio.sleep(config["settle"])
        after = rss_bytes(server_pid)
        say("result", before=before, after=after, connections=config["connections"])
        await anyio.sleep(config["deadline"])
        exit_now()


async def client_active(config: dict[str, Any]) -> None:
    """The idle curve's active client: round trips beside the idle connections another
    process holds, after a short warm-up."""
    async with _actor("active", config) as a:
        conn = await _connect(a, config)
        for i in range(config["warmup_iterations"]):
            await conn.request("ping", i)
        samples = []
        for i in range(config["active_pings"]):
            start = now()
            await conn.request("ping", i)
            samples.append(round((now() - start) * 1e6, 2))
        say("result", samples_us=samples)


async def client_slow(config: dict[str, Any]) -> None:
    """Memory under a slow consumer: each event takes this client 50 ms to handle."""
    async with _actor("hello", config) as a:
        conn = await _connect(a, config)

        @conn.on("ev")
        async def on_ev(data: Any) -> None:
            await anyio.sleep(0.05)

        say("ready")
        await anyio.sleep(config["deadline"])


ROLES = {
    "server": server,
    "server-w4": server_w4,
    "server-slow": server_slow,
    "client-w1": client_w1,
    "client-stream": client_stream,
    "client-w4": client_w4,
    "client-w5": client_w5,
    "client-active": client_active,
    "client-idle": client_idle,
    "client-slow": client_slow,
}


def main() -> None:
    role, config = parse_args()
    backend, options = backend_options(config)

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"] + 2):
            await ROLES[role](config)

    ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")


if __name__ == "__main__":
    main()
