"""The connection lifecycle as a hypothesis state machine, on asyncio and Trio.

Rules: start and stop the server, connect, emit, request (with the server up or down), the
server emits and asks, disconnect, close the client actor, use a closed connection; over TCP
the client goes through the fault proxy, and the link breaks (cut or reset) under both ends.
A model says what must hold after each step:

- ``connection.connected`` and ``"world" in hello.of`` are what the model says (a step that
  changes them waits, bounded, for the change to be seen);
- a closed or disconnected connection raises ``ClosedError`` for ``emit`` and ``request``;
- a request with the server down times out (``RequestTimeoutError``), with it up is answered;
  the server's request to the client is answered while it is connected, else
  ``UnknownPeerError``;
- events arrive in the order emitted, never twice, none invented; an event emitted while the
  server was known to be down, or confirmed by a later answered request, is never lost (a
  request starts only once every event sent before it was handled);
- no event reaches the server before its handlers (``events_unhandled`` stays 0);
- at the end of every run: no task left behind (and conftest.py: no process, socket, file
  descriptor or socket file).

Each rule runs a coroutine on a live event loop through anyio's blocking portal; actors are
entered and left through ``portal.wrap_async_context_manager`` so that each lives in one task.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import anyio
import anyio.from_thread
import pytest
from _faultproxy import FaultProxy
from _leaks import live_tasks, wait_tasks_back_to
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ipcactors
from ipcactors import Actor, Connection

STEP_BOUND = 5.0  # seconds any step may take
ACTOR_OPTIONS = {"silent": True, "retry": 0.01, "retry_cap": 0.05, "close_timeout": 1.0}


class Lifecycle(RuleBasedStateMachine):
    backend = "asyncio"
    transport = "unix"  # "tcp": the client reaches the server through a fault proxy
    socket_dir = ""
    seed = 0

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(self.backend)
        )
        self.proxy: FaultProxy | None = None
        if self.transport == "tcp":
            # Each server incarnation gets a new port; the client only knows the proxy's.
            proxy = FaultProxy(("127.0.0.1", 1), ("127.0.0.1", 0), seed=self.seed)
            self.proxy = self.stack.enter_context(self.portal.wrap_async_context_manager(proxy))
        self.drops = 0  # disconnect events seen by the client
        self.tasks_before = self.portal.call(live_tasks)
        # the server side
        self.world: contextlib.ExitStack | None = None
        self.received: list[int] = []  # seqs, across server incarnations, in arrival order
        # the client side
        self.hello_stack: contextlib.ExitStack | None = None
        self.hello: Actor | None = None
        self.connection: Connection | None = None
        self.dead: list[Connection] = []  # closed or disconnected
        self.down_received: list[int] = []
        self.down_sent = 0
        # the model
        self.sent = 0
        self.must: set[int] = set()  # seqs that must arrive
        self.unconfirmed: set[int] = set()  # sent while up, not yet confirmed by a request
        self.here: set[int] = set()  # sent through the current connection
        self.world_actor: Actor | None = None

    def run(self, fn: Any, *args: Any) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(STEP_BOUND):
                return await fn(*args)

        return self.portal.call(bounded)

    # --- server -------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.start_server()
        self.open_client()

    def start_server(self) -> None:
        stack = contextlib.ExitStack()
        actor = stack.enter_context(
            self.portal.wrap_async_context_manager(
                Actor("world", socket_root=self.socket_dir, **ACTOR_OPTIONS)
            )
        )

        async def serve() -> ipcactors.Server:
            # The handlers in the same loop pass as the listening socket: registered from
            # this thread later, they could miss what a client waiting to reconnect sends
            # first (events queued while the server was down).
            if self.proxy is None:
                server = await actor.serve()
            else:
                server = await actor.serve_net("127.0.0.1", 0)
                self.proxy.upstream = server.address
            server.on("ev", lambda seq, client: self.received.append(seq))
            server.on("echo", lambda data, client: data)
            return server

        self.run(serve)
        self.world_actor = actor
        self.world = stack

    def unhandled(self) -> int:
        """The events the server received before its handlers."""
        server = None if self.world_actor is None else self.world_actor.server
        assert isinstance(server, ipcactors.Server)
        return server.statistics().events_unhandled

    @precondition(lambda self: self.world is None)
    @rule()
    def server_start(self) -> None:
        self.start_server()
        if self.connection is not None:
            self.run(self.connection.wait_connected)
            self.must |= self.unconfirmed  # queued while down: flushed after the handshake
            self.unconfirmed = set()

    @precondition(lambda self: self.world is not None)
    @rule()
    def server_stop(self) -> None:
        assert self.world is not None
        assert self.unhandled() == 0
        self.world.close()
        self.world = None
        if self.connection is not None:
            connection = self.connection

            async def noticed() -> None:
                while connection.connected:
                    await anyio.sleep(0.005)

            self.run(noticed)
        # Sent while up and not confirmed: they may have died with the server; so may those
        # queued while it was down and flushed after the last handshake, not yet handled.
        self.unconfirmed = set()
        self.must &= set(self.received)

    @precondition(lambda self: self.world is not None and self.connection is not None)
    @rule()
    def server_emit(self) -> None:
        assert self.world_actor is not None
        server = self.world_actor.server
        assert isinstance(server, ipcactors.Server)

        async def emit() -> None:
            while "hello" not in server.clients:  # the server may not have seen it yet
                await anyio.sleep(0.005)
            self.down_sent += 1
            await server.emit("hello", "down", self.down_sent)

        self.run(emit)

    @precondition(lambda self: self.world is not None)
    @rule()
    def server_request(self) -> None:
        """The server asks the client: answered while it is connected, else UnknownPeerError."""
        assert self.world_actor is not None
        server = self.world_actor.server
        assert isinstance(server, ipcactors.Server)
        connected = self.connection is not None

        async def ask() -> None:
            if connected:
                while "hello" not in server.clients:  # the welcome may still be landing
                    await anyio.sleep(0.005)
                assert await server.request("hello", "ask", 7) == ["answer", 7]
            else:
                while "hello" in server.clients:  # the server notices the goodbye in a moment
                    await anyio.sleep(0.005)
                with pytest.raises(ipcactors.UnknownPeerError):
                    await server.request("hello", "ask", 7)

        self.run(ask)

    @precondition(
        lambda self: self.proxy is not None and self.connection is not None and self.world
    )
    @rule(how=st.sampled_from(["cut", "reset"]))
    def link_lost(self, how: str) -> None:
        """The link breaks under both ends (the proxy closes or resets it): the client notices
        and reconnects; what was sent and not confirmed may be lost."""
        assert self.proxy is not None
        assert self.connection is not None
        connection = self.connection
        drops = self.drops
        self.portal.call(self.proxy.cut if how == "cut" else self.proxy.reset)  # on the loop

        async def back() -> None:
            while self.drops == drops:
                await anyio.sleep(0.005)
            await connection.wait_connected()

        self.run(back)
        self.unconfirmed = set()
        # So may events queued while the server was down: they were flushed after the
        # handshake, possibly just before the break (emit is at most once over a broken link).
        self.must &= set(self.received)

    # --- client -------------------------------------------------------------------------------

    def open_client(self) -> None:
        stack = contextlib.ExitStack()
        self.hello = stack.enter_context(
            self.portal.wrap_async_context_manager(
                Actor("hello", socket_root=self.socket_dir, **ACTOR_OPTIONS)
            )
        )
        self.hello_stack = stack

    @precondition(lambda self: self.world is not None and self.connection is None)
    @rule()
    def connect(self) -> None:
        assert self.hello is not None
        if self.proxy is None:
            self.connection = self.run(self.hello.connect_to, "world")
        else:
            self.connection = self.run(self.proxy.connect, self.hello, "world")
        self.here = set()

        def dropped() -> None:
            self.drops += 1

        self.connection.on("disconnect", dropped)
        self.connection.on("down", self.down_received.append)
        self.connection.on("ask", lambda data: ["answer", data])

    @precondition(lambda self: self.connection is not None)
    @rule(count=st.integers(min_value=1, max_value=20))
    def emit(self, count: int) -> None:
        connection = self.connection
        assert connection is not None
        seqs = range(self.sent + 1, self.sent + count + 1)
        self.sent += count

        async def emit() -> None:
            for seq in seqs:
                await connection.emit("ev", seq)

        self.run(emit)
        self.here.update(seqs)
        if self.world is None:
            self.must.update(seqs)  # queued while known down: flushed after the handshake
        else:
            self.unconfirmed.update(seqs)

    @precondition(lambda self: self.connection is not None and self.world is not None)
    @rule()
    def request(self) -> None:
        connection = self.connection
        assert connection is not None
        assert self.run(connection.request, "echo", self.sent) == self.sent
        # Handled before this request started: every event sent before it on this connection.
        self.must |= self.unconfirmed
        self.unconfirmed = set()
        missing = self.must - set(self.received)
        if missing:
            # Events flushed by a connection closed since may still be handled on its own;
            # on this connection, none may be missing.
            assert not missing & self.here, f"events lost: {sorted(missing & self.here)}"

            async def arrived() -> None:
                while self.must - set(self.received):
                    await anyio.sleep(0.005)

            self.run(arrived)

    @precondition(lambda self: self.connection is not None and self.world is None)
    @rule()
    def request_while_down(self) -> None:
        connection = self.connection
        assert connection is not None

        async def request() -> None:
            with pytest.raises(ipcactors.RequestTimeoutError):
                await connection.request("echo", 0, timeout=0.05)

        self.run(request)

    @precondition(lambda self: self.connection is not None)
    @rule()
    def disconnect(self) -> None:
        assert self.hello is not None
        assert self.connection is not None
        self.run(self.hello.disconnect, "world")
        self.lose_connection()

    @precondition(lambda self: self.hello is not None)
    @rule()
    def close_client(self) -> None:
        assert self.hello_stack is not None
        self.hello_stack.close()
        if self.connection is not None:
            self.lose_connection()
        self.open_client()

    def lose_connection(self) -> None:
        assert self.connection is not None
        self.dead.append(self.connection)
        self.connection = None
        if self.world is not None:
            self.must |= self.unconfirmed  # flushed to the kernel first, read before the EOF
        else:
            self.must -= set(self.must) - set(self.received)  # queued, never sent: dropped
        self.unconfirmed = set()

    @precondition(lambda self: bool(self.dead))
    @rule()
    def use_a_closed_connection(self) -> None:
        connection = self.dead[-1]

        async def use() -> None:
            with pytest.raises(ipcactors.ClosedError):
                await connection.emit("ev", -1)
            with pytest.raises(ipcactors.ClosedError):
                await connection.request("echo", -1)

        self.run(use)

    # --- what must hold -----------------------------------------------------------------------

    @invariant()
    def connected_as_the_model_says(self) -> None:
        if self.hello is None:
            return
        up = self.connection is not None and self.world is not None
        assert ("world" in self.hello.of) == (self.connection is not None)
        if self.connection is not None:
            assert self.connection.connected == up
        for connection in self.dead:
            assert not connection.connected

    @invariant()
    def events_in_order_never_twice_none_invented(self) -> None:
        received = self.received
        assert all(a < b for a, b in itertools.pairwise(received)), received
        assert all(0 < seq <= self.sent for seq in received)
        down = self.down_received
        assert all(a < b for a, b in itertools.pairwise(down)), down

    def teardown(self) -> None:
        try:
            if self.hello_stack is not None:
                self.hello_stack.close()
            if self.world is not None:
                self.world.close()
                assert self.unhandled() == 0
            left = self.portal.call(wait_tasks_back_to, self.tasks_before)
            assert left <= self.tasks_before, f"{left - self.tasks_before} task(s) left"
        finally:
            self.stack.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.timeout(120)
def test_connection_lifecycle(
    transport: str, anyio_backend: str, socket_dir: str, seed: int
) -> None:
    options = {
        "backend": anyio_backend,
        "transport": transport,
        "socket_dir": socket_dir,
        "seed": seed,
    }
    machine = type("Lifecycle", (Lifecycle,), options)
    run_state_machine_as_test(
        hypothesis_seed(seed)(machine),
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
