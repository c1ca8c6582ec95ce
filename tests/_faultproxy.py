"""A fault-injecting proxy for tests: it sits between a client and a server (Unix socket or TCP
on loopback, asyncio or Trio) and, per direction, delays, slices, holds, cuts or resets the bytes.

    async with fault_proxy(server.address) as proxy:        # the fixture in conftest.py
        world = await proxy.connect(hello, "world")           # connect_to / connect_to_net
        proxy.latency(0.01)                                    # 10 ms each way
        proxy.slice(1)                                         # every byte in a write of its own
        proxy.blackhole()                                      # forward nothing, keep sockets open
        proxy.heal()                                           # a clean link again
        proxy.cut_after(100, "down")                           # close after 100 more bytes
        proxy.reset()                                          # RST every live link now

Directions: ``"up"`` is client to server, ``"down"`` server to client, ``"both"`` (default) is
both. A link is one client connection and the proxy's connection to the server behind it.

Invariants:
- A fault never reorders, duplicates, drops or alters a byte: it delays, splits, holds or ends
  the stream. Held bytes (blackhole) flow again, in order, after ``heal()``.
- Faults take effect at once on live links and apply to new ones, until changed or healed.
- Cuts and resets are one-shot: the link that carries the Nth byte ends, then the fault
  disarms, so a client that reconnects gets a clean link (arm it again to cut again).
- A reset closes both sockets with SO_LINGER 0 (an RST on TCP). Unix sockets have no RST:
  there a reset is an abrupt close (the peer sees ECONNRESET only if unread data was left).
- When one side ends (EOF or error), the proxy forwards what it holds for the other side, then
  ends the link the same way (EOF: close; error: reset). A side that cannot be written to any
  more (it went) stops its direction only: what the other side sent before it ends still goes
  through (a peer that closes with unread bytes resets the link, after its last bytes).
- All randomness (latency jitter, random slice sizes) comes from one ``random.Random(seed)``;
  the seed is shown in the report of a failing test (conftest.py).
- Every task lives in the proxy's task group; leaving ``async with`` closes every socket and
  removes the proxy's socket file.
- The proxy drives plain non-blocking sockets with ``anyio.wait_readable``/``wait_writable``:
  the same code on both backends, and no stream object whose cancelled read can race its close
  (anyio's asyncio Unix streams can, raising InvalidStateError from a loop callback).
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import ipcactors

__all__ = ["Direction", "FaultProxy", "ProxyStats", "proxy_factory", "random_seed"]

Direction = Literal["up", "down", "both"]
Address = str | tuple[str, int]
_Chunk = tuple[float, bytes]  # when it was read, what was read
_End = Literal["cut", "reset"]  # how the source ended: EOF, or an error (after its last bytes)
READ_SIZE = 64 * 1024
QUEUED_CHUNKS = 16  # chunks read ahead per direction: a held direction stops reading after it


@dataclass
class _Faults:
    """The faults of one direction, read by its writers before every piece they write."""

    latency: float = 0.0
    jitter: float = 0.0
    slice_size: int = 0  # 0: forward chunks whole
    random_slices: bool = False  # each piece 1..slice_size bytes, drawn from the seeded rng
    flowing: anyio.Event = field(default_factory=anyio.Event)
    held: bool = False
    end_after: int | None = None  # bytes left before the link that carries them ends
    end_how: Literal["cut", "reset"] = "cut"

    def __post_init__(self) -> None:
        self.flowing.set()


@dataclass
class ProxyStats:
    """What the proxy did, for tests to assert on."""

    accepted: int = 0  # client connections accepted
    refused: int = 0  # of those, closed at once because the server could not be reached
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0  # links ended by cut_after / cut
    resets: int = 0  # links ended by reset_after / reset


class _Socket:
    """A connected non-blocking socket, read and written by waiting for readiness."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.closed = False

    async def receive(self) -> bytes:
        """The next bytes; ``b""`` at end of stream. Raises ``OSError`` (a reset, ...)."""
        while True:
            try:
                return self.sock.recv(READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if reset and self.sock.family != socket.AF_UNIX:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        anyio.notify_closing(self.sock)
        self.sock.close()


class _Link:
    def __init__(self, client: _Socket) -> None:
        self.client = client
        self.server: _Socket | None = None
        self.scope = anyio.CancelScope()
        self.how: Literal["cut", "reset"] | None = None

    def end(self, how: Literal["cut", "reset"]) -> None:
        if self.how is None:
            self.how = how
        self.scope.cancel()

    def close(self) -> None:
        for end in (self.client, self.server):
            if end is not None:
                end.close(reset=self.how == "reset")


class FaultProxy:
    """Listens on ``listen`` (a Unix socket path, or ``(host, port)``; port 0 picks one) and
    forwards every connection to ``upstream``, injecting the faults set by its methods."""

    def __init__(self, upstream: Address, listen: Address, *, seed: int) -> None:
        self.upstream = upstream
        self.seed = seed
        self.stats = ProxyStats()
        self._listen = listen
        self._rng = random.Random(seed)
        self._faults = {"up": _Faults(), "down": _Faults()}
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._task_group: TaskGroup | None = None
        self._accepted = anyio.Event()
        self.address: Address = listen

    def __repr__(self) -> str:
        return f"<FaultProxy {self.address!r} -> {self.upstream!r} seed={self.seed}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        if isinstance(self._listen, str):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self._listen)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(self._listen)
            self.address = listener.getsockname()
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._accept_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        assert self._listener is not None
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and group.exceptions == (exc,):
                return False  # the block's own exception, as itself: not in a group
            raise
        finally:
            anyio.notify_closing(self._listener)
            self._listener.close()
            if isinstance(self._listen, str):
                try:
                    os.unlink(self._listen)
                except FileNotFoundError:
                    pass

    # --- faults -------------------------------------------------------------------------------

    def latency(self, seconds: float, jitter: float = 0.0, direction: Direction = "both") -> None:
        """Delay every chunk by ``seconds`` plus up to ``jitter`` more (seeded), keeping order."""
        for faults in self._directions(direction):
            faults.latency, faults.jitter = seconds, jitter

    def slice(self, size: int = 1, *, random: bool = False, direction: Direction = "both") -> None:
        """Forward in writes of ``size`` bytes (``random=True``: 1..size, seeded), a loop pass
        apart, so that the peer reads partial frames."""
        if size < 1:
            raise ValueError("slice size must be >= 1")
        for faults in self._directions(direction):
            faults.slice_size, faults.random_slices = size, random

    def blackhole(self, direction: Direction = "both") -> None:
        """Stop forwarding (bytes are held, both sockets stay open) until :meth:`heal`."""
        for faults in self._directions(direction):
            if not faults.held:
                faults.held = True
                faults.flowing = anyio.Event()

    def cut_after(self, n: int, direction: Direction = "both") -> None:
        """Close the link that carries the ``n``-th next byte in ``direction`` (one-shot)."""
        self._arm(n, "cut", direction)

    def reset_after(self, n: int, direction: Direction = "both") -> None:
        """Reset the link that carries the ``n``-th next byte in ``direction`` (one-shot)."""
        self._arm(n, "reset", direction)

    def cut(self) -> None:
        """Close every live link now."""
        for link in list(self._links):
            link.end("cut")

    def reset(self) -> None:
        """Reset every live link now."""
        for link in list(self._links):
            link.end("reset")

    def heal(self, direction: Direction = "both") -> None:
        """Remove every fault in ``direction``; held bytes flow again."""
        for faults in self._directions(direction):
            faults.latency = faults.jitter = 0.0
            faults.slice_size = 0
            faults.end_after = None
            faults.held = False
            faults.flowing.set()

    def _arm(self, n: int, how: Literal["cut", "reset"], direction: Direction) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        for faults in self._directions(direction):
            faults.end_after, faults.end_how = n, how

    def _directions(self, direction: Direction) -> list[_Faults]:
        if direction == "both":
            return [self._faults["up"], self._faults["down"]]
        return [self._faults[direction]]

    # --- observing ----------------------------------------------------------------------------

    @property
    def links(self) -> int:
        """Links open right now."""
        return len(self._links)

    async def wait_accepted(self, count: int) -> None:
        """Wait until ``count`` client connections were accepted in all (e.g. a reconnect)."""
        while self.stats.accepted < count:
            await self._accepted.wait()

    async def connect(self, actor: ipcactors.Actor, id: str) -> ipcactors.Connection:
        """``actor`` connects to actor ``id`` through this proxy (Unix or TCP, as it listens)."""
        if isinstance(self.address, str):
            return await actor.connect_to(id, path=self.address)
        host, port = self.address
        return await actor.connect_to_net(id, host, port)

    # --- forwarding ---------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        assert self._task_group is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                await anyio.wait_readable(self._listener)
                continue
            self.stats.accepted += 1
            self._accepted.set()
            self._accepted = anyio.Event()
            self._task_group.start_soon(self._serve_link, _Link(_Socket(sock)))

    async def _serve_link(self, link: _Link) -> None:
        try:
            try:
                with anyio.fail_after(5):
                    link.server = await self._connect_upstream()
            except (OSError, TimeoutError):
                self.stats.refused += 1  # the server is down: the client sees its link close
                return
            self._links.add(link)
            with link.scope:
                async with anyio.create_task_group() as task_group:
                    ends: list[tuple[Literal["up", "down"], _Socket, _Socket]] = [
                        ("up", link.client, link.server),
                        ("down", link.server, link.client),
                    ]
                    for direction, source, sink in ends:
                        send, receive = anyio.create_memory_object_stream[_Chunk | _End](
                            QUEUED_CHUNKS
                        )
                        task_group.start_soon(self._read, link, source, send)
                        task_group.start_soon(self._write, link, direction, receive, sink)
        finally:
            self._links.discard(link)
            link.close()

    async def _connect_upstream(self) -> _Socket:
        family = socket.AF_UNIX if isinstance(self.upstream, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(self.upstream)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        except BaseException:
            sock.close()
            raise
        return _Socket(sock)

    async def _read(
        self,
        link: _Link,
        source: _Socket,
        queue: MemoryObjectSendStream[_Chunk | _End],
    ) -> None:
        async with queue:
            end: _End = "cut"
            try:
                try:
                    while chunk := await source.receive():
                        await queue.send((anyio.current_time(), chunk))
                except OSError:
                    end = "reset"
                await queue.send(end)  # the writer ends the link once it has sent the rest
            except anyio.BrokenResourceError:
                pass  # the writer stopped: its sink went

    async def _write(
        self,
        link: _Link,
        direction: Literal["up", "down"],
        queue: MemoryObjectReceiveStream[_Chunk | _End],
        sink: _Socket,
    ) -> None:
        faults = self._faults[direction]
        async with queue:
            async for item in queue:
                if isinstance(item, str):
                    link.end(item)
                    return
                arrived, chunk = item
                delay = faults.latency + (
                    self._rng.uniform(0, faults.jitter) if faults.jitter else 0
                )
                await anyio.sleep_until(arrived + delay)
                view = memoryview(chunk)
                while view:
                    await faults.flowing.wait()
                    size = len(view)
                    if faults.slice_size:
                        step = faults.slice_size
                        size = min(
                            size, self._rng.randint(1, step) if faults.random_slices else step
                        )
                    ending = faults.end_after is not None and faults.end_after <= size
                    if ending:
                        assert faults.end_after is not None
                        size = faults.end_after
                    elif faults.end_after is not None:
                        faults.end_after -= size
                    if size:
                        try:
                            await sink.send(bytes(view[:size]))
                        except OSError:
                            return  # the sink went: the other direction ends the link
                        self._count(direction, size)
                    view = view[size:]
                    if ending:
                        how = faults.end_how
                        faults.end_after = None
                        setattr(self.stats, f"{how}s", getattr(self.stats, f"{how}s") + 1)
                        link.end(how)
                        return
                    if faults.slice_size:
                        await anyio.sleep(0)  # a loop pass between pieces: separate reads

    def _count(self, direction: str, size: int) -> None:
        if direction == "up":
            self.stats.bytes_up += size
        else:
            self.stats.bytes_down += size


def random_seed() -> int:
    """A seed from ``FAULT_SEED`` in the environment (to replay a failure), else a fresh one."""
    value = os.environ.get("FAULT_SEED")
    return int(value) if value else random.randrange(2**32)


def proxy_factory(socket_dir: str, seed: int) -> Callable[..., FaultProxy]:
    """What the ``fault_proxy`` fixture returns: ``fault_proxy(upstream, listen=None)``; the
    proxy listens where the upstream is (Unix: a new path in ``socket_dir``; TCP: loopback, a
    free port) unless ``listen`` says otherwise. Each proxy's seed is derived from ``seed``."""
    count = 0

    def make(upstream: Address, listen: Address | None = None) -> FaultProxy:
        nonlocal count
        count += 1
        if listen is None:
            if isinstance(upstream, str):
                listen = os.path.join(socket_dir, f"proxy{count}")
            else:
                listen = ("127.0.0.1", 0)
        return FaultProxy(upstream, listen, seed=seed * 1000 + count)

    return make
