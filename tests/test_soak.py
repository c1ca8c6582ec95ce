"""Soak: actors, a fault proxy and a supervisor under random operations, then the invariants.

A hub actor serves (Unix or TCP); client actors reach it through a fault proxy; a supervisor
runs worker processes. Concurrent drivers, each with its own seeded random, run for
``SOAK_SECONDS`` (default 1.5 s per run here; ``make soak`` runs minutes) and a bounded count:

- clients: emit numbered events, request, disconnect, close their actor, connect again;
- the hub: emit numbered events to one client, broadcast numbered events (some large, with a
  small outbox and a random ``slow_consumer`` policy), request a client; a hub handler asks
  back the client that called it;
- the supervisor: request a child, emit numbered pings (a child answers each with a pong);
- chaos: latency, slicing, blackhole, cut and reset on the proxy (then heal), kill a child
  process (SIGKILL), freeze one (SIGSTOP, then SIGCONT), restart the hub; short heartbeats
  find what stays silent.

In the acknowledged mode (``test_soak_acked``: ``Config.acked="on"`` on the hub and the
clients, both ways) an event may arrive twice only when flagged as redelivered (after a hub
restart, or to a client actor that was closed and opened again), and the accounting balances:
per connection and per hub, every event sequenced was acknowledged or reported (acknowledged +
reported == sent), and the clients' connections together sequenced every event they emitted.

Then, with the faults healed: every client and child answers again, and these held throughout:
- every operation ended within its bound (nothing hangs) and every failure was an
  ``ipcactors.IPCError`` (never an untyped exception) of a kind that operation can meet
  (``EXPECTED``); a reply is always the right one;
- per connection, numbered events arrived in order, and no event ever arrived twice (unless
  flagged as redelivered, in the acknowledged mode);
- nothing leaked: tasks (asyncio or Trio, counted), and (conftest.py) processes, sockets, file
  descriptors and socket files; the memory of this process grew by less than ``RSS_GROWTH``.

Every loop is bounded in time and count and stops by itself; only loopback addresses are
used. A failure shows its seed (``FAULT_SEED=<n>`` replays the drivers' random choices; the
interleaving of concurrent drivers is not replayed exactly).
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import _workers
import anyio
import psutil
import pytest
from _faultproxy import Direction, FaultProxy
from _leaks import live_tasks, wait_tasks_back_to

import ipcactors
from ipcactors import Actor, Client, Connection, Server, Supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "1.5"))
MAX_OPERATIONS = int(200 * SOAK_SECONDS) + 100  # per driver: a bound besides time
OPERATION_BOUND = 10.0  # seconds any one operation may take before it counts as hung
REQUEST_TIMEOUT = 1.0
RSS_GROWTH = 100 * 1024 * 1024
DIRECTIONS: list[Direction] = ["up", "down", "both"]
CLIENTS = 3
CHILDREN = 2
FAST = {
    **{"retry": 0.02, "retry_cap": 0.1, "close_timeout": 1.0, "handshake_timeout": 2.0},
    # Short heartbeats: a blackhole or a frozen child that lasts is found and dropped.
    **{"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0},
}


# The ipcactors errors each operation may meet here, and why; any other is a violation.
_LOST = (ipcactors.ConnectionLostError, ipcactors.RequestTimeoutError)
_HUB_GONE = ipcactors.ClosedError  # the hub closed (restarted) meanwhile
EXPECTED: dict[str, tuple[type[ipcactors.IPCError], ...]] = {
    "client emit": (),  # queued while disconnected; waits while the outbox is full
    "client request": _LOST,
    "client slow": _LOST,
    "client ask back": (*_LOST, ipcactors.RemoteError),  # the hub's own request failed
    "connect": (),  # retried for ever (stop_retrying=None)
    "disconnect": (),
    "hub emit": (ipcactors.UnknownPeerError, ipcactors.ClosedError),  # the client left
    "hub broadcast": (_HUB_GONE,),
    "hub request": (*_LOST, ipcactors.UnknownPeerError, _HUB_GONE),
    "flood": (_HUB_GONE,),
    "sup request": _LOST,  # ChildExitedError is a ConnectionLostError
    "sup emit": (ipcactors.RequestTimeoutError,),  # the child was not back in time
}


@dataclass
class Ledger:
    """What happened, and every broken promise (``violations``)."""

    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    # Per stream of numbered events (e.g. "c0->hub"): seqs seen, and the last per connection.
    seen: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    last: dict[tuple[str, object], int] = field(default_factory=dict)
    keep: list[object] = field(default_factory=list)  # connection keys stay alive: ids unique
    redelivered: int = 0  # acked mode: events that arrived again, flagged

    def numbered(
        self, stream: str, connection: object, seq: int, redelivered: bool = False
    ) -> None:
        if seq in self.seen[stream]:
            if redelivered:
                self.redelivered += 1  # at least once, and said so
            else:
                self.violations.append(f"{stream}: event {seq} arrived twice")
        self.seen[stream].add(seq)
        key = (stream, connection)
        if key not in self.last:
            self.keep.append(connection)
        elif seq <= self.last[key]:
            self.violations.append(f"{stream}: event {seq} after {self.last[key]} (order)")
        self.last[key] = seq


class Soak:
    def __init__(
        self,
        transport: str,
        socket_dir: str,
        proxy: FaultProxy,
        sup: Supervisor,
        seed: int,
        acked: bool = False,
    ) -> None:
        self.acked = acked
        self.options: dict[str, Any] = {**FAST, "acked": "on" if acked else "off"}
        # Acked mode: every connection the clients made, and the hubs' statistics at close.
        self.connections: dict[str, list[Connection]] = defaultdict(list)
        self.hub_statistics: list[ipcactors.ServerStatistics] = []
        self.transport = transport
        self.socket_dir = socket_dir
        self.proxy = proxy
        self.sup = sup
        self.seed = seed
        self.ledger = Ledger()
        self.deadline = anyio.current_time() + SOAK_SECONDS
        self.hub: Server | None = None
        self.hub_scope: anyio.CancelScope | None = None
        self.hub_done = anyio.Event()
        self.sent: Counter[str] = Counter()  # next seq per stream
        self.epochs: Counter[str] = Counter()  # per client: connections lost so far
        self.clients: dict[str, Connection] = {}
        self.last_kill = -1.0
        self.hub_rng = random.Random(f"{seed}hub options")
        self.flood_lock = anyio.Lock()
        self.slow_consumers = 0
        self.broadcasts_dropped = 0
        self.stopped: list[anyio.Event] = []  # one per driver: set when its loop ends
        self.done = anyio.Event()  # the checks are over: clients may close

    def stopping(self) -> anyio.Event:
        event = anyio.Event()
        self.stopped.append(event)
        return event

    async def wait_stopped(self) -> None:
        for event in self.stopped:
            await event.wait()

    # --- running one operation ----------------------------------------------------------------

    async def attempt(self, name: str, operation: Callable[[], Any]) -> None:
        """Run one operation within ``OPERATION_BOUND``; file its outcome."""
        with anyio.move_on_after(OPERATION_BOUND) as scope:
            try:
                await operation()
            except ipcactors.IPCError as exc:
                self.ledger.outcomes[f"{name}: {type(exc).__name__}"] += 1
                if not isinstance(exc, EXPECTED[name]):
                    self.ledger.violations.append(f"{name}: unexpected {exc!r}")
                return
            except Exception as exc:
                self.ledger.violations.append(f"{name}: untyped {type(exc).__name__}: {exc!r}")
                return
        if scope.cancelled_caught:
            self.ledger.violations.append(f"{name}: still running after {OPERATION_BOUND} s")
        else:
            self.ledger.outcomes[f"{name}: ok"] += 1

    def next_seq(self, stream: str) -> int:
        self.sent[stream] += 1
        return self.sent[stream]

    def running(self, count: int) -> bool:
        return count < MAX_OPERATIONS and anyio.current_time() < self.deadline

    # --- the hub ------------------------------------------------------------------------------

    async def run_hub(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self.hub_done = anyio.Event()
        try:
            with anyio.CancelScope() as self.hub_scope:
                # A small outbox, so that a blackholed client meets the slow-consumer policy.
                policy = self.hub_rng.choice(["disconnect", "drop", "wait"])
                options = {
                    **self.options,
                    "max_outbox_bytes": 256 * 1024,
                    "slow_consumer": policy,
                }
                async with Actor("hub", socket_root=self.socket_dir, silent=True, **options) as hub:
                    if self.transport == "unix":
                        server = await hub.serve()
                    else:
                        server = await hub.serve_net("127.0.0.1", 0)
                    server.on("ev", self.on_client_event)
                    server.on("echo", lambda data, client: data)

                    async def slow_echo(data: Any, client: Client) -> Any:
                        await anyio.sleep(data["sleep"])
                        return data

                    server.on("slow_echo", slow_echo)

                    async def ask_back(data: Any, client: Client) -> Any:
                        # A handler that asks the peer that called it (replies keep flowing).
                        return await client.request("cecho", data, timeout=REQUEST_TIMEOUT)

                    server.on("ask_back", ask_back)
                    self.proxy.upstream = server.address
                    self.hub = server
                    task_status.started()
                    await hub.wait_closed()
            # Read once closed: what the hub had not seen acknowledged is reported by now.
            stats = server.statistics()
            self.hub_statistics.append(stats)
            self.slow_consumers += stats.slow_consumers
            self.broadcasts_dropped += stats.broadcasts_dropped
        finally:
            self.hub = None
            self.hub_done.set()

    def on_client_event(self, data: Any, client: Client) -> None:
        self.ledger.numbered(f"{data['c']}->hub", client, data["s"], client.redelivered)

    async def restart_hub(self, task_group: Any) -> None:
        assert self.hub_scope is not None
        self.hub_scope.cancel()
        await self.hub_done.wait()
        await task_group.start(self.run_hub)

    async def hub_driver(self, rng: random.Random, stopped: anyio.Event) -> None:
        count = 0
        while self.running(count):
            count += 1
            hub = self.hub
            names = list(hub.clients) if hub is not None else []
            if hub is None or not names:
                await anyio.sleep(0.01)
                continue
            op = rng.choice(["emit", "broadcast", "request"])
            target = rng.choice(names)
            if op == "emit":

                async def emit(hub: Server = hub, target: str = target) -> None:
                    for _ in range(rng.randint(1, 20)):
                        await hub.emit(target, "down", self.next_seq(f"hub->{target}"))

                await self.attempt("hub emit", emit)
            elif op == "broadcast":

                async def broadcast(hub: Server = hub) -> None:
                    pad = b"b" * (rng.randint(0, 100_000) if rng.random() < 0.2 else 0)
                    await hub.broadcast("bc", [self.next_seq("broadcast"), pad])

                await self.attempt("hub broadcast", broadcast)
            else:

                async def request(hub: Server = hub, target: str = target) -> None:
                    data = {"n": rng.random()}
                    reply = await hub.request(target, "cecho", data, timeout=REQUEST_TIMEOUT)
                    if reply != data:
                        self.ledger.violations.append(f"hub request: {reply!r} != {data!r}")

                await self.attempt("hub request", request)
            await anyio.sleep(rng.uniform(0, 0.01))
        stopped.set()

    async def flood(self) -> None:
        # Its own numbered stream, one flood at a time: concurrent broadcasts have no order.
        async with self.flood_lock:
            hub = self.hub
            if hub is not None:
                for _ in range(40):
                    await hub.broadcast("flood", [self.next_seq("flood"), b"f" * 200_000])

    # --- clients ------------------------------------------------------------------------------

    async def client_driver(self, name: str, rng: random.Random, stopped: anyio.Event) -> None:
        count = 0
        stack: AsyncExitStack | None = None
        actor: Actor | None = None
        try:
            while self.running(count):
                count += 1
                if actor is None:
                    stack = AsyncExitStack()
                    actor = await stack.enter_async_context(
                        Actor(name, socket_root=self.socket_dir, silent=True, **self.options)
                    )
                connection = actor.of.get("hub")
                if connection is None:
                    await self.attempt("connect", lambda a=actor: self.connect(name, a))
                    continue
                op = rng.choices(
                    ["emit", "request", "slow", "ask back", "disconnect", "close"],
                    [40, 25, 10, 5, 3, 2],
                )[0]
                if op == "emit":

                    async def emit(c: Connection = connection) -> None:
                        pad = b"p" * (rng.randint(0, 20_000) if rng.random() < 0.1 else 0)
                        for _ in range(rng.randint(1, 30)):
                            seq = self.next_seq(f"{name}->hub")
                            await c.emit("ev", {"c": name, "s": seq, "pad": pad})

                    await self.attempt("client emit", emit)
                elif op in ("request", "slow", "ask back"):

                    async def request(c: Connection = connection, op: str = op) -> None:
                        data = {"c": name, "n": rng.random(), "sleep": rng.uniform(0, 0.3)}
                        event = {"request": "echo", "slow": "slow_echo", "ask back": "ask_back"}[op]
                        reply = await c.request(event, data, timeout=2 * REQUEST_TIMEOUT)
                        if reply != data:
                            self.ledger.violations.append(f"{name} {event}: {reply!r} != {data!r}")

                    await self.attempt(f"client {op}", request)
                elif op == "disconnect":
                    self.clients.pop(name, None)
                    await self.attempt("disconnect", lambda a=actor: a.disconnect("hub"))
                else:
                    # Not in attempt(): an actor must be left in the cancel scope it was
                    # entered in. Its close is bounded by close_timeout, so time it instead.
                    assert stack is not None
                    self.clients.pop(name, None)
                    started = anyio.current_time()
                    await stack.aclose()
                    took = anyio.current_time() - started
                    if took > OPERATION_BOUND:
                        self.ledger.violations.append(f"close: took {took:.1f} s")
                    self.ledger.outcomes["close: ok"] += 1
                    actor = stack = None
                await anyio.sleep(rng.uniform(0, 0.01))
            stopped.set()
            await self.done.wait()
        finally:
            if stack is not None:
                await stack.aclose()  # (in the scope the actor was entered in)
            self.clients.pop(name, None)

    async def connect(self, name: str, actor: Actor) -> None:
        connection = await self.proxy.connect(actor, "hub")
        self.epochs[name] += 1

        # "Per connection" on this side is per epoch: a Connection lives on across reconnects.
        def on_disconnect() -> None:
            self.epochs[name] += 1

        def numbered(stream: str) -> Callable[[int], None]:
            return lambda seq: self.ledger.numbered(
                stream, f"{name}#{self.epochs[name]}", seq, connection.redelivered
            )

        connection.on("disconnect", on_disconnect)
        connection.on("down", numbered(f"hub->{name}"))
        connection.on("bc", lambda data: numbered(f"bc->{name}")(data[0]))
        connection.on("flood", lambda data: numbered(f"flood->{name}")(data[0]))
        connection.on("cecho", lambda data: data)
        self.clients[name] = connection
        self.connections[name].append(connection)

    # --- the supervisor -----------------------------------------------------------------------

    def on_pong(self, data: Any, client: Client) -> None:
        self.ledger.numbered(f"ping->{client.id}", client, data)

    async def sup_driver(self, rng: random.Random, stopped: anyio.Event) -> None:
        count = 0
        while self.running(count):
            count += 1
            child = f"w{rng.randrange(CHILDREN)}"
            if rng.random() < 0.5:

                async def request(child: str = child) -> None:
                    data = [child, rng.random()]
                    reply = await self.sup.request(child, "echo", data, timeout=REQUEST_TIMEOUT)
                    if reply != data:
                        self.ledger.violations.append(f"sup request: {reply!r} != {data!r}")

                await self.attempt("sup request", request)
            else:

                async def ping(child: str = child) -> None:
                    for _ in range(rng.randint(1, 10)):
                        await self.sup.emit(child, "ping", self.next_seq(f"ping->{child}"))

                await self.attempt("sup emit", ping)
            await anyio.sleep(rng.uniform(0, 0.02))
        stopped.set()

    # --- chaos --------------------------------------------------------------------------------

    async def chaos_driver(self, rng: random.Random, task_group: Any, stopped: anyio.Event) -> None:
        count = 0
        proxy = self.proxy
        while self.running(count):
            count += 1
            await anyio.sleep(rng.uniform(0.02, 0.15))
            fault = rng.choice(
                [
                    *("latency", "slice", "blackhole", "cut", "reset", "cut now", "reset now"),
                    *("flood", "kill", "freeze", "restart", "calm"),
                ]
            )
            self.ledger.outcomes[f"chaos {fault}"] += 1
            direction: Direction = rng.choice(DIRECTIONS)
            if fault == "latency":
                proxy.latency(rng.uniform(0, 0.02), rng.uniform(0, 0.01), direction)
            elif fault == "slice":
                proxy.slice(rng.randint(1, 64), random=True, direction=direction)
            elif fault == "blackhole":
                proxy.blackhole(direction)
            elif fault == "cut":
                proxy.cut_after(rng.randint(0, 5000), direction)
            elif fault == "reset":
                proxy.reset_after(rng.randint(0, 5000), direction)
            elif fault == "flood":
                # Clients stop reading while the hub broadcasts megabytes: its slow_consumer
                # policy decides (a "wait" broadcast waits for the heal, in its own task).
                proxy.blackhole("down")
                task_group.start_soon(self.attempt, "flood", self.flood)
            elif fault == "cut now":
                proxy.cut()
            elif fault == "reset now":
                proxy.reset()  # links just accepted too (item 1 of issue 8)
            elif fault == "kill":
                if anyio.current_time() - self.last_kill > 0.3:
                    info = self.sup.children[f"w{rng.randrange(CHILDREN)}"]
                    if info.running and info.pid is not None:
                        self.last_kill = anyio.current_time()
                        os.kill(info.pid, signal.SIGKILL)
            elif fault == "freeze":
                # SIGSTOP a child for a while: a frozen peer, found by heartbeats if it lasts.
                info = self.sup.children[f"w{rng.randrange(CHILDREN)}"]
                if info.running and info.pid is not None:
                    os.kill(info.pid, signal.SIGSTOP)
                    try:
                        await anyio.sleep(rng.uniform(0.1, 2.0))
                    finally:
                        os.kill(info.pid, signal.SIGCONT)
            elif fault == "restart":
                with anyio.fail_after(OPERATION_BOUND):
                    await self.restart_hub(task_group)
            await anyio.sleep(rng.uniform(0.05, 0.3))
            proxy.heal()
        stopped.set()

    # --- the end ------------------------------------------------------------------------------

    async def check_alive(self) -> None:
        """With the faults healed, every client, the hub and every child answer again.

        A connection may still be lost once after the heal, by what happened before it: the
        hub dropped a client too slow to read while the proxy held its side (a flood), and the
        client learns only when what the proxy held arrives (its welcome, then the end). So a
        lost connection is asked again, a bounded number of times, once it is back."""
        self.proxy.heal()
        with anyio.fail_after(OPERATION_BOUND):
            for name, connection in list(self.clients.items()):
                await answers_again(connection.wait_connected, connection.request, "echo", name)
                hub = self.hub
                assert hub is not None

                async def in_clients(hub: Server = hub, name: str = name) -> None:
                    while name not in hub.clients:  # the hub may not have seen the welcome land
                        await anyio.sleep(0.01)

                await answers_again(in_clients, hub.request, name, "cecho", name)
            for child in self.sup.children:
                await answers_again(None, self.sup.request, child, "echo", child)
        for name, connection in self.clients.items():
            pending = connection.statistics().requests_pending
            assert pending == 0, f"{name}: {pending} request(s) still pending"


async def answers_again(
    ready: Callable[[], Any] | None, request: Callable[..., Any], *args: str, tries: int = 3
) -> None:
    """``request(*args)`` replies its last argument, once ``ready()`` returns; a connection
    lost meanwhile is asked again when ready, at most ``tries`` times in all."""
    for attempt in range(tries):
        if ready is not None:
            await ready()
        try:
            assert await request(*args) == args[-1]
            return
        except ipcactors.ConnectionLostError:
            if attempt == tries - 1:
                raise
            await anyio.sleep(0.05)


def test_the_ledger_sees_duplicates_and_disorder() -> None:
    ledger = Ledger()
    for seq in (1, 2, 5):
        ledger.numbered("a", "conn1", seq)
    ledger.numbered("a", "conn2", 3)  # a new connection may start lower: fine
    assert ledger.violations == []
    ledger.numbered("a", "conn2", 3)
    ledger.numbered("a", "conn1", 4)
    assert ledger.violations == [
        "a: event 3 arrived twice",
        "a: event 3 after 3 (order)",
        "a: event 4 after 5 (order)",
    ]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.timeout(SOAK_SECONDS + 120)
async def test_soak(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    await soak(transport, socket_dir, fault_proxy, seed)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.timeout(SOAK_SECONDS + 120)
async def test_soak_acked(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    """The same, with acknowledged events both ways: the accounting balances."""
    await soak(transport, socket_dir, fault_proxy, seed, acked=True)


@pytest.fixture(scope="module")
def _uvloop_global_state() -> None:
    """uvloop opens a process-wide pipe with its first loop; open it before the leak checks
    take their snapshot (as in test_uvloop.py)."""
    import asyncio

    uvloop = pytest.importorskip("uvloop")
    uvloop.run(asyncio.sleep(0))


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})], ids=["uvloop"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.timeout(SOAK_SECONDS + 120)
@pytest.mark.usefixtures("_uvloop_global_state")
async def test_soak_on_uvloop(
    transport: str, socket_dir: str, fault_proxy: Callable[..., FaultProxy], seed: int
) -> None:
    """The asyncio fast path (_streams.py) on uvloop, whose transports differ."""
    import asyncio

    assert "uvloop" in type(asyncio.get_running_loop()).__module__
    await soak(transport, socket_dir, fault_proxy, seed)


async def soak(
    transport: str,
    socket_dir: str,
    fault_proxy: Callable[..., FaultProxy],
    seed: int,
    acked: bool = False,
) -> None:
    me = psutil.Process()
    tasks_before = live_tasks()
    upstream: Any = os.path.join(socket_dir, "app.hub") if transport == "unix" else ("x", 0)
    async with (
        Supervisor(
            max_restarts=1000,
            max_seconds=1.0,
            socket_root=socket_dir,
            silent=True,
            request_timeout=REQUEST_TIMEOUT,
            shutdown_timeout=2.0,
            terminate_timeout=0.5,
            **FAST,
        ) as sup,
        fault_proxy(upstream) as proxy,
        anyio.create_task_group() as task_group,
    ):
        with anyio.fail_after(30):
            for i in range(CHILDREN):
                await sup.spawn(_workers.echo, id=f"w{i}")
        soak = Soak(transport, socket_dir, proxy, sup, seed, acked)
        sup.on("pong", soak.on_pong)
        await task_group.start(soak.run_hub)
        rss_before = me.memory_info().rss
        soak.deadline = anyio.current_time() + SOAK_SECONDS
        async with anyio.create_task_group() as drivers:
            for i in range(CLIENTS):
                rng = random.Random(f"{seed}c{i}")
                drivers.start_soon(soak.client_driver, f"c{i}", rng, soak.stopping())
            drivers.start_soon(soak.hub_driver, random.Random(f"{seed}hub"), soak.stopping())
            drivers.start_soon(soak.sup_driver, random.Random(f"{seed}sup"), soak.stopping())
            rng = random.Random(f"{seed}chaos")
            drivers.start_soon(soak.chaos_driver, rng, task_group, soak.stopping())
            with anyio.fail_after(SOAK_SECONDS + 2 * OPERATION_BOUND + 10):
                await soak.wait_stopped()
            ledger = soak.ledger
            summary = (
                f"seed {seed}; outcomes {dict(sorted(ledger.outcomes.items()))}; "
                f"slow consumers {soak.slow_consumers}, broadcasts dropped "
                f"{soak.broadcasts_dropped} (of hubs closed so far)"
            )
            try:
                await soak.check_alive()
            except BaseException as exc:
                raise AssertionError(f"not alive after the soak: {exc!r}\n{summary}") from exc
            soak.done.set()
        rss_after = me.memory_info().rss
        print(f"{summary}; RSS {rss_before >> 20} -> {rss_after >> 20} MiB")  # shown with -rP
        assert not ledger.violations, f"{ledger.violations[:20]}\n{summary}"
        assert rss_after - rss_before < RSS_GROWTH, summary
        for stream in ("c0->hub", "broadcast"):
            assert soak.sent[stream] > 0, f"nothing sent on {stream}: {summary}"
        # The supervisor pings a child picked at random: in a short run all may go to one.
        pings = sum(soak.sent[f"ping->w{i}"] for i in range(CHILDREN))
        assert pings > 0, f"no child pinged: {summary}"
        for name in ("client request", "hub request", "sup request"):
            assert ledger.outcomes[f"{name}: ok"] > 0, summary
        for stream, seqs in ledger.seen.items():  # none invented
            origin = {"bc": "broadcast", "flood": "flood"}.get(stream.split("->")[0], stream)
            assert max(seqs) <= soak.sent[origin], f"{stream}: {summary}"
        assert soak.hub_scope is not None
        soak.hub_scope.cancel()
        if acked:
            with anyio.fail_after(OPERATION_BOUND):
                await soak.hub_done.wait()
            print(check_accounting(soak, summary))  # shown with -rP
    tasks_after = await wait_tasks_back_to(tasks_before)
    assert tasks_after <= tasks_before, f"{tasks_after - tasks_before} task(s) leaked; seed {seed}"


def check_accounting(soak: Soak, summary: str) -> str:
    """Acked mode, once every client and hub is closed: acknowledged + reported == sent, for
    every connection and every hub; and the clients' connections sequenced every event their
    drivers emitted."""
    summary = f"{summary}; redelivered {soak.ledger.redelivered}"
    lines = []
    for name in (f"c{i}" for i in range(CLIENTS)):
        totals = Counter[str]()
        for connection in soak.connections[name]:
            stats = connection.statistics()
            assert stats.events_unacknowledged == 0, f"{name}: {stats}; {summary}"
            assert stats.events_acknowledged + stats.events_reported == stats.events_sequenced, (
                f"{name}: {stats}; {summary}"
            )
            totals["sequenced"] += stats.events_sequenced
            totals["acknowledged"] += stats.events_acknowledged
            totals["reported"] += stats.events_reported
        assert totals["sequenced"] == soak.sent[f"{name}->hub"], f"{name}: {totals}; {summary}"
        assert totals["acknowledged"] + totals["reported"] == soak.sent[f"{name}->hub"], summary
        lines.append(
            f"{name}->hub: sent {soak.sent[f'{name}->hub']} = acknowledged "
            f"{totals['acknowledged']} + reported {totals['reported']}"
        )
    assert soak.hub_statistics, summary
    for stats in soak.hub_statistics:
        assert stats.events_unacknowledged == 0, f"hub: {stats}; {summary}"
        assert stats.events_acknowledged + stats.events_reported == stats.events_sequenced, (
            f"hub: {stats}; {summary}"
        )
    hub = {
        key: sum(getattr(stats, f"events_{key}") for stats in soak.hub_statistics)
        for key in ("sequenced", "acknowledged", "reported")
    }
    assert hub["sequenced"] > 0, summary
    lines.append(
        f"hub->clients: sent {hub['sequenced']} = acknowledged {hub['acknowledged']} + "
        f"reported {hub['reported']}; redelivered (flagged duplicates) {soak.ledger.redelivered}"
    )
    return "accounting: " + "; ".join(lines)
