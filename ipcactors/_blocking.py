"""The blocking API: an :class:`~ipcactors.Actor` for scripts, notebooks and threaded programs.

``BlockingActor`` runs the event loop in a background thread (anyio's blocking portal) and
forwards each call to it; its servers, connections and clients are thin wrappers whose methods
block until the async method they stand for returns, and raise the same exceptions.

Invariants:
- One loop thread per ``BlockingActor``, started by ``__enter__`` and joined by ``close()`` (or
  leaving ``with``, or the interpreter's exit if neither came: ``_loopthreads``): nothing
  (thread, socket, socket file) outlives the actor.
- From a thread that runs Trio, calls into a Trio loop thread go through a helper thread
  (``from_this_thread``): Trio refuses them from any thread running Trio.
- Methods may be called from any number of threads at once, never from the loop thread itself
  (that would wait on itself): there they raise :class:`IPCError` saying to use the async API.
  A caller's thread that runs an event loop of its own (Jupyter) is blocked for each call, like
  any blocking call, and keeps working; in async code the async API is the better choice.
- Plain (``def``) handlers run in a worker thread (anyio's), one at a time per peer in the order
  the events arrive, so they may call this blocking API and may block; ``async def`` handlers
  run in the loop thread and get the async objects. Closing waits for handlers still running.
- After ``close()`` every method raises :class:`ClosedError`. ``close()`` (of the actor, a
  server or a connection) and ``disconnect()`` called in a plain handler start closing and
  return: the close waits for running handlers, so waiting there would wait on itself.
- A handler that raises what is not an ``Exception`` (``sys.exit``, ``KeyboardInterrupt``)
  ends the actor, as in the async API, without ending the loop thread under it (which would
  leave calls nothing answers): the actor closes, its methods raise :class:`ClosedError` from
  that exception, and ``close()`` (leaving ``with``) raises it, alone, in the caller's thread.
"""

from __future__ import annotations

import inspect
import math
import os
import ssl
import sys
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, cast, overload

import anyio
import anyio.abc
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._actor import Actor, Peers, check_actor_id
from ._config import Config, config_of, seconds_of, shown
from ._core._connection import Connection
from ._core._handlers import errors_or_cancellations
from ._core._server import Client, Server
from ._core._stats import ConnectionStatistics, ServerStatistics
from ._core._udp import DatagramPeer, DatagramServer, DatagramStatistics, PeerAddress
from ._errors import (
    ClosedError,
    ConfigError,
    IPCError,
    ReservedEventError,
    exhaustion_raised_as_resource_error,
)
from ._loopthreads import close_at_exit, closed, from_this_thread, signals_deferred
from ._proto._messages import RESERVED_EVENTS
from ._transports._backend import check_backend

__all__ = [
    "BlockingActor",
    "BlockingClient",
    "BlockingConnection",
    "BlockingInbox",
    "BlockingServer",
]

WORKER_END_WAIT: Final = 1.0  # s a worker thread told to end may take (it holds no work)
_Host = tuple[Future[None], anyio.Event]  # the host task's end, and what stops it

T = TypeVar("T")
Handler = Callable[..., Any]
Close = Callable[[], Coroutine[Any, Any, None]]  # an aclose() (or a disconnect) to run
H = TypeVar("H", bound=Handler)

# Set in a worker thread while it runs a plain handler (``closes``: the closes it asked for).
# Closing from there must not wait (it would wait on itself): the close is started once the
# handler has returned, after its reply is queued, so that the reply is flushed, not lost.
_in_handler = threading.local()

# The loop threads of the blocking actors alive: a blocking call made in any of them (an async
# handler) would block that loop, and wait on it if the call needs it, so it is refused. A
# forked child has none of them (a thread of its own may get one's ident: its dead stack).
_loop_threads: set[int] = set()
os.register_at_fork(after_in_child=_loop_threads.clear)


class _Loop:
    """The portal and the id of its thread, shared by an actor and its wrappers."""

    def __init__(self, actor_id: str, trio_portal: bool) -> None:
        self.actor_id = actor_id
        self.trio_portal = trio_portal  # see from_this_thread
        self.pid = os.getpid()  # the process whose thread runs the loop (see forked)
        self.portal: BlockingPortal | None = None
        self.thread_id: int | None = None
        # Open inboxes: closed before the portal stops, which waits for the get() in flight.
        self.inboxes: set[BlockingInbox] = set()
        self.actor: Actor | None = None
        self.stop: anyio.Event | None = None  # set: the actor's block ends (see _host)
        #: What a handler raised that ends the program (see ``end``).
        self.ended: BaseException | None = None
        # The worker threads that ran plain handlers (asyncio's: they end with the loop, and
        # the close joins them; Trio keeps its idle ones process-wide, for reuse).
        self.workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def end(self, exc: BaseException) -> None:
        """A handler raised ``exc``, which is not an ``Exception``: the actor ends, as an
        actor's block does in the async API, while the loop thread keeps running until
        ``close()`` (which raises ``exc``). In the loop thread."""
        if self.ended is None:
            self.ended = exc
        if self.stop is not None:
            self.stop.set()

    @property
    def forked(self) -> bool:
        """Whether this is a process forked from the one the loop thread runs in: a thread
        does not survive fork(), so nothing here can reach that loop."""
        return os.getpid() != self.pid

    def start_soon(self, fn: Close) -> None:
        """Start ``fn`` in a task of the actor's (in the loop thread, after this task's next
        checkpoint or end)."""
        assert self.actor is not None
        try:
            group = self.actor._group()
        except ClosedError:
            return  # the actor is closing already, and with it all it owns
        group.start_soon(fn)

    @overload
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    def call(self, fn: Callable[..., T], *args: Any) -> T: ...

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.ended is not None and not self.forked:
            raise ClosedError(
                f"blocking actor {self.actor_id!r} ended: a handler raised {self.ended!r}"
            ) from self.ended
        return self.reach(fn, *args)

    def reach(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``call`` for what ends things (closing an inbox), also once the actor ended."""
        portal = self.portal
        if self.forked:
            raise IPCError(
                f"blocking actor {self.actor_id!r} was made before this process forked: its "
                "event loop thread stayed in the parent. Make a new one in the child"
            )
        if portal is None:
            raise ClosedError(f"blocking actor {self.actor_id!r} is closed")
        if threading.get_ident() in _loop_threads:
            raise IPCError(
                "a blocking method was called in a blocking actor's event loop thread (from an "
                "async handler?), where it would block that loop, and wait on itself if the "
                "call needs it: await the async API there (`.wrapped` gives the "
                "async object), or make the handler a plain def (it then runs in a worker thread)"
            )
        return from_this_thread(self.trio_portal, partial(_call_in, portal, fn, *args))

    def read(self, fn: Callable[[], T]) -> T:
        """A property's value: computed in the loop thread while the loop runs (the loop
        changes what it reads), and here once it stopped (nothing changes it any more)."""
        if self.portal is not None and not self.forked and threading.get_ident() != self.thread_id:
            try:
                return cast(T, self.reach(fn))
            except ClosedError:
                if self.portal is not None:
                    raise
        return fn()

    def close(self, aclose: Close) -> None:
        """Run ``aclose`` to its end; from a handler's thread, have it started once the
        handler returns, and return."""
        closes = _deferred_closes(self)
        if self.forked:
            return  # (the parent's to close)
        if closes is not None:
            if self.portal is not None:
                closes.append(aclose)
        elif self.portal is not None:  # (else the actor is closed, and all it owned with it)
            try:
                self.call(aclose)
            except ClosedError:
                if self.portal is not None:
                    raise


class _Handlers:
    """``on``/``off`` and the catch-alls for a wrapper: plain handlers go to a worker thread
    with their peer arguments wrapped; ``async def`` handlers are registered as they are."""

    def __init__(self, loop: _Loop, target: Server | DatagramServer | Connection) -> None:
        self._loop = loop
        self._target = target
        # (event, handler) -> what was registered; catch-alls under "" (no event is named "")
        # for events, None for requests.
        self._adapted: dict[tuple[str | None, Handler], Handler] = {}

    def _adapt(self, key: str | None, handler: Handler) -> Handler:
        if not callable(handler):
            return handler  # (refused by on())
        loop = self._loop
        if inspect.iscoroutinefunction(handler):

            async def in_loop(*args: Any) -> Any:
                try:
                    return await handler(*args)
                except BaseException as exc:
                    await _end_if_it_ends_the_program(loop, exc)
                    raise

            adapted: Handler = in_loop
        else:

            async def in_thread(*args: Any) -> Any:
                closes: list[Close] = []
                peers = (_wrap_peer(loop, arg) for arg in args)
                call = partial(_run_handler, loop, closes, handler, *peers)
                try:
                    result = await anyio.to_thread.run_sync(call)
                    if type(result) is _Raised:
                        raise result.error
                    return result
                except BaseException as exc:
                    await _end_if_it_ends_the_program(loop, exc)
                    raise
                finally:
                    for aclose in closes:
                        loop.start_soon(aclose)  # it runs after our caller has queued the reply

            adapted = in_thread
        adapted.__qualname__ = getattr(handler, "__qualname__", repr(handler))
        self._adapted[(key, handler)] = adapted
        return adapted

    def on(self, event: str, handler: Handler) -> None:
        self._loop.call(self._target.on, event, self._adapt(event, handler))

    def off(self, event: str, handler: Handler | None) -> None:
        if handler is None:
            for key in [key for key in self._adapted if key[0] == event]:
                del self._adapted[key]
        else:
            handler = self._adapted.pop((event, handler), handler)
        self._loop.call(self._target.off, event, handler)

    def on_any(self, handler: Handler, requests: bool) -> None:
        key = None if requests else ""
        adapted = self._adapt(key, handler)
        if requests:
            self._loop.call(self._target.on_any_request, adapted)
        else:
            self._loop.call(self._target.on_any, adapted)

    def off_any(self, handler: Handler | None, requests: bool) -> None:
        key = None if requests else ""
        if handler is None:
            for found in [found for found in self._adapted if found[0] == key]:
                del self._adapted[found]
        else:
            handler = self._adapted.pop((key, handler), handler)
        self._loop.call(partial(self._target.off_any, handler, requests=requests))


async def _end_if_it_ends_the_program(loop: _Loop, exc: BaseException) -> None:
    """If the handler raised what ends a program (not an ``Exception``, not the backend's
    cancellation exception), end the actor (``_Loop.end``) and wait here to be cancelled by
    its close: the requester sees the connection go, as in the async API, and the loop thread
    lives on. In an asyncio task ``SystemExit`` and ``KeyboardInterrupt`` may not leave the
    task: asyncio would re-raise them out of the loop, and the loop thread would end under
    its callers. The cancellation exception, alone or in a group with errors, goes on as the
    async API takes it: this task's cancellation, or, nothing cancelling it, the handler's
    error (``raised_by_the_handler``)."""
    if errors_or_cancellations(exc):
        return
    loop.end(exc)
    await anyio.sleep_forever()


class _Raised:
    """What a plain handler raised that is not an ``Exception``, brought back from its worker
    thread as a value and raised in the loop's task: on asyncio, anyio hands an exception
    back through a future, which throws it into the task, and a coroutine thrown a
    ``GeneratorExit`` closes the one it awaits instead of raising it there."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _call_in(portal: BlockingPortal, fn: Callable[..., Any], *args: Any) -> Any:
    """``portal.call(fn, *args)``, but a wait that ends early (Ctrl-C in the caller's thread)
    ends what it started too: left running, a get() would take the next item for no one."""
    future = portal.start_task_soon(fn, *args)
    try:
        return future.result()
    except BaseException:
        future.cancel()  # (no-op once it is done)
        raise


def _deferred_closes(loop: _Loop) -> list[Close] | None:
    """In a plain handler of ``loop``'s actor: the closes it defers until it returns (a close
    of this actor's would wait on the handler). Elsewhere (a plain handler of another actor
    included, whose loop is another), ``None``: a close runs there and then."""
    if getattr(_in_handler, "loop", None) is not loop:
        return None
    closes: list[Close] | None = getattr(_in_handler, "closes", None)
    return closes


def _run_handler(loop: _Loop, closes: list[Close], handler: Handler, *args: Any) -> Any:
    if not loop.trio_portal:
        loop.workers.add(threading.current_thread())
    _in_handler.loop = loop
    _in_handler.closes = closes
    try:
        return handler(*args)
    except Exception:
        raise
    except BaseException as exc:
        return _Raised(exc)
    finally:
        _in_handler.closes = _in_handler.loop = None


class _Wrapper:
    """What servers and connections share: handlers, an inbox, statistics."""

    _handlers: _Handlers
    _loop: _Loop

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``event`` (or use ``on(event)`` as a decorator). A plain
        ``def`` runs in a worker thread and may call this blocking API; an ``async def`` runs
        in the loop thread with the async objects."""
        if handler is None:

            def register(function: H) -> H:
                self._handlers.on(event, function)
                return function

            return register
        self._handlers.on(event, handler)
        return handler

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` from ``event``, or all of its handlers when ``None``."""
        self._handlers.off(event, handler)

    @overload
    def on_any(self, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on_any(self, handler: H) -> H: ...

    def on_any(self, handler: H | None = None) -> H | Callable[[H], H]:
        """Register a catch-all for every event, as the async API's ``on_any`` (called as
        ``handler(event, data, client)`` on a server; also a decorator: ``@server.on_any()``);
        a plain ``def`` runs in a worker thread."""
        return self._catch_all(handler, requests=False)

    @overload
    def on_any_request(self, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on_any_request(self, handler: H) -> H: ...

    def on_any_request(self, handler: H | None = None) -> H | Callable[[H], H]:
        """Register a catch-all for every request, as the async API's ``on_any_request``: it
        answers requests that have no handler of their own (also a decorator)."""
        return self._catch_all(handler, requests=True)

    def _catch_all(self, handler: H | None, *, requests: bool) -> H | Callable[[H], H]:
        def register(function: H) -> H:
            self._handlers.on_any(function, requests)
            return function

        return register if handler is None else register(handler)

    def off_any(self, handler: Handler | None = None, *, requests: bool = False) -> None:
        """Remove the catch-all ``handler`` (of requests if ``requests``), or all of them."""
        self._handlers.off_any(handler, requests)

    def inbox(self, *events: str, max_items: int = 1000) -> BlockingInbox:
        """Collect ``events`` into a :class:`BlockingInbox` to read with ``get()`` or a
        ``for`` loop, in the caller's thread (from now on: earlier events are not in it).

        It holds at most ``max_items`` events (default 1000: a burst is absorbed, memory stays
        bounded); when it is full, handling that peer's events waits for your thread to read,
        so backpressure reaches the sender (see :class:`BlockingInbox`)."""
        return BlockingInbox(self._loop, self._handlers._target, events, max_items)


class _Taking:
    """One ``get()``: whether its caller still waits, and the item the loop took for it."""

    __slots__ = ("abandoned", "item", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.item: tuple[str, Any, BlockingClient | None] | None = None


class BlockingInbox(AbstractContextManager["BlockingInbox"]):
    """Events collected for a script to read in its own thread: ``get()`` returns
    ``(event, data, peer)`` (``peer``: a :class:`BlockingClient` on a server, ``None`` on a
    connection); iterating yields them until ``close()``.

    Bounded: at most ``max_items`` events wait in it. When it is full, the handler that fills
    it waits, so that peer's later events wait in the connection's inbox
    (``max_inbox_bytes``), then reading from that peer pauses and the sender's ``emit``
    waits once its outbox is full: a stream peer is slowed down, never buffered without
    bound. A server's ``broadcast`` to a client that stalls so is handled by the server's
    ``slow_consumer`` policy; a UDP server stops receiving, and the kernel drops the
    datagrams that do not fit its buffer. Closing the inbox drops what it holds and lets the
    waiting handlers go on (the events they carried are dropped)."""

    def __init__(
        self,
        loop: _Loop,
        target: Server | DatagramServer | Connection,
        events: tuple[str, ...],
        max_items: int = 1000,
    ) -> None:
        if not events:
            raise ConfigError("inbox() needs at least one event name, e.g. inbox('message')")
        for event in events:
            if type(event) is str and event in RESERVED_EVENTS:  # (their handlers differ)
                raise ReservedEventError(
                    f"inbox() collects the events a peer sends; {event!r} is a lifecycle "
                    f"event: register a handler for it with on({event!r}, handler)"
                )
        if type(max_items) is not int or max_items < 1:
            raise ConfigError(f"max_items must be an int >= 1, got {max_items!r:.80}")
        self._loop = loop
        self._target = target
        send, receive = anyio.create_memory_object_stream[tuple[str, Any, Any]](max_items)
        self._send, self._receive = send, receive
        self._handlers: list[tuple[str, Handler]] = []
        self._closed = False
        # Taken by a get() whose caller went meanwhile (Ctrl-C): the next get() returns them.
        self._kept: deque[tuple[str, Any, BlockingClient | None]] = deque()
        # In the loop thread: set as an item comes (or the inbox closes). A get() takes items
        # with receive_nowait only, never through a wait that a cancel could end with an item
        # handed to it; and one get() at a time (_in_take: set once the one that waits ends,
        # its caller maybe gone), so what one took and kept comes before what the next takes.
        # Made there too: here it would be made for the loop this thread may run, which is
        # not the actor's when their backends differ.
        self._arrived: anyio.Event = loop.call(anyio.Event)
        self._in_take: anyio.Event | None = None
        for event in events:
            # Runs in the loop thread; waits while the inbox is full (that is the backpressure).
            async def put(*args: Any, event: str = event) -> None:
                peer = _wrap_peer(loop, args[1]) if len(args) > 1 else None
                try:
                    await send.send((event, args[0], peer))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass  # the inbox was closed: nobody will read it
                else:
                    self._arrived.set()

            loop.call(target.on, event, put)
            self._handlers.append((event, put))
        self._watching: anyio.CancelScope | None = None
        loop.call(loop.start_soon, self._end_with_target)
        loop.inboxes.add(self)

    def get(self, timeout: float | None = None) -> tuple[str, Any, BlockingClient | None]:
        """The next ``(event, data, peer)``; raises :class:`TimeoutError` after ``timeout``
        seconds (``None``: wait as long as it takes), :class:`ClosedError` once closed."""
        if self._closed:
            raise ClosedError("this inbox is closed")
        timeout = _wait_timeout(timeout)
        taking = _Taking()
        try:
            item: tuple[str, Any, BlockingClient | None] = self._loop.call(
                self._next, timeout, taking
            )
        except BaseException:
            with taking.lock:  # (what the loop took meanwhile is kept, here or there)
                taking.abandoned = True
                if taking.item is not None:
                    self._kept.appendleft(taking.item)
            raise
        return item

    async def _next(
        self, timeout: float | None, taking: _Taking
    ) -> tuple[str, Any, BlockingClient | None]:
        try:
            with anyio.fail_after(timeout):  # (a deadline passed already: 0, then no await)
                while self._in_take is not None:  # a get() whose caller went may still wait
                    await self._in_take.wait()
                kept = bool(self._kept)
                item = self._kept.popleft() if kept else await self._take()
            with taking.lock:
                if taking.abandoned:  # the caller went (Ctrl-C): the next get() has it
                    # In its place: first if it was kept, else after what was kept meanwhile
                    # (what a get() whose caller went as it was returning kept, say).
                    if kept:
                        self._kept.appendleft(item)
                    else:
                        self._kept.append(item)
                else:
                    taking.item = item
            return item
        except TimeoutError:
            raise TimeoutError(f"nothing arrived within {timeout} s") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ClosedError("this inbox is closed") from None

    async def _end_with_target(self) -> None:
        """In the loop thread, while the inbox is open: once its connection or server ended
        for good (closed, or out of retries), nothing more can come. The stream ends: a
        reader gets what arrived, then the end (a ``for`` loop ends)."""
        if self._closed:
            return  # (closed before this task started)
        target = self._target
        ended = target._destroyed if isinstance(target, Connection) else target._stopped
        with anyio.CancelScope() as self._watching:
            await ended.wait()
            self._send.close()
            self._arrived.set()

    async def _take(self) -> tuple[str, Any, BlockingClient | None]:
        """The next item from the stream, for the one get() taking now (see ``_arrived``)."""
        self._in_take = taken = anyio.Event()
        try:
            while True:
                try:
                    return self._receive.receive_nowait()
                except anyio.WouldBlock:
                    if self._arrived.is_set():
                        self._arrived = anyio.Event()
                    await self._arrived.wait()
        finally:
            self._in_take = None
            taken.set()

    def __iter__(self) -> Iterator[tuple[str, Any, BlockingClient | None]]:
        while True:
            try:
                yield self.get()
            except ClosedError:
                return

    def close(self) -> None:
        """Stop collecting; a reader waiting in ``get()`` or a ``for`` loop ends."""
        if self._closed:
            return
        self._closed = True
        self._loop.inboxes.discard(self)
        if self._loop.portal is not None:
            self._loop.reach(self._close)

    def _close(self) -> None:
        """In the loop thread: by ``close()``, or as the actor's block ends (``_host``)."""
        self._loop.inboxes.discard(self)
        # The send side first: a reader waiting in get() ends (EndOfStream); then the receive
        # side: a handler waiting to put is let go (BrokenResourceError), the rest dropped.
        self._send.close()
        self._arrived.set()
        self._receive.close()
        if self._watching is not None:
            self._watching.cancel()
        for event, handler in self._handlers:
            self._target.off(event, handler)

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingClient:
    """A server's client (or a UDP server's peer) seen from a blocking program."""

    def __init__(self, loop: _Loop, peer: Client | DatagramPeer) -> None:
        self._loop = loop
        #: The async object (for ``async def`` handlers and code in the loop thread).
        self.wrapped = peer

    @property
    def id(self) -> str | PeerAddress:
        """The client's actor id (a UDP peer: its ``(host, port)`` address)."""
        peer = self.wrapped
        return peer.id if isinstance(peer, Client) else peer.address

    def __repr__(self) -> str:
        return f"<BlockingClient {self.id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockingClient) and other.wrapped is self.wrapped

    def __hash__(self) -> int:
        return hash(self.wrapped)

    def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` to this client (as ``server.emit(client, ...)``)."""
        self._loop.call(self.wrapped.emit, event, data)

    def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Ask this client; its handler's answer, or the async API's exceptions."""
        return self._loop.call(partial(self.wrapped.request, event, data, timeout=timeout))

    @property
    def redelivered(self) -> bool:
        """Acknowledged mode, in a handler: this event may have been handled before (see
        :attr:`Client.redelivered <ipcactors.Client.redelivered>`). ``False`` for a UDP peer."""
        peer = self.wrapped
        return isinstance(peer, Client) and peer.redelivered

    @property
    def unacknowledged(self) -> list[tuple[int, str]]:
        """As :attr:`Client.unacknowledged <ipcactors.Client.unacknowledged>` (``[]`` for a UDP
        peer)."""
        peer = self.wrapped
        return self._loop.read(lambda: peer.unacknowledged) if isinstance(peer, Client) else []

    def wait_acknowledged(self, timeout: float | None = None) -> None:
        """As :meth:`Client.wait_acknowledged`; raises :class:`TimeoutError` after ``timeout``
        seconds. A UDP peer has no acknowledged mode: :class:`ConfigError`."""
        timeout = _wait_timeout(timeout)
        peer = self.wrapped
        if not isinstance(peer, Client):
            raise ConfigError("UDP is at most once: a UDP peer acknowledges nothing")
        what = f"{peer.id!r} did not acknowledge everything"
        self._loop.call(_bounded, peer.wait_acknowledged, timeout, what)


def _wrap_peer(loop: _Loop, arg: Any) -> Any:
    if isinstance(arg, Client | DatagramPeer):
        return BlockingClient(loop, arg)
    return arg


def _unwrap(client: Any) -> Any:
    return client.wrapped if isinstance(client, BlockingClient) else client


class BlockingConnection(_Wrapper):
    """A connection to another actor (``ipc.connect_to(...)``), blocking."""

    def __init__(self, loop: _Loop, connection: Connection) -> None:
        self._loop = loop
        #: The async :class:`~ipcactors.Connection`.
        self.wrapped = connection
        self._handlers = _Handlers(loop, connection)

    def __repr__(self) -> str:
        return f"<BlockingConnection to {self.id!r}>"

    @property
    def id(self) -> str:
        return self.wrapped.id

    @property
    def connected(self) -> bool:
        return self.wrapped.connected

    def emit(self, event: str, data: Any = None) -> None:
        """As :meth:`Connection.emit`: queued, at most once; waits while the outbox is full."""
        self._loop.call(self.wrapped.emit, event, data)

    def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """As :meth:`Connection.request`: the reply, or the same exceptions."""
        return self._loop.call(partial(self.wrapped.request, event, data, timeout=timeout))

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (raises :class:`TimeoutError` after ``timeout`` seconds)."""
        timeout = _wait_timeout(timeout)
        what = f"not connected to {self.wrapped.id!r}"
        self._loop.call(_bounded, self.wrapped.wait_connected, timeout, what)

    @property
    def redelivered(self) -> bool:
        """Acknowledged mode, in a handler of this connection's: this event may have been
        handled before (as :attr:`Connection.redelivered <ipcactors.Connection.redelivered>`)."""
        return self.wrapped.redelivered

    @property
    def unacknowledged(self) -> list[tuple[int, str]]:
        """As :attr:`Connection.unacknowledged <ipcactors.Connection.unacknowledged>`."""
        return self._loop.read(lambda: self.wrapped.unacknowledged)

    def wait_acknowledged(self, timeout: float | None = None) -> None:
        """As :meth:`Connection.wait_acknowledged`: every event emitted so far was handled by
        the server (raises :class:`TimeoutError` after ``timeout`` seconds,
        :class:`UnacknowledgedError` if they were given up)."""
        timeout = _wait_timeout(timeout)
        what = f"{self.wrapped.id!r} did not acknowledge everything"
        self._loop.call(_bounded, self.wrapped.wait_acknowledged, timeout, what)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of this connection's counters."""
        return self._loop.call(self.wrapped.statistics)

    def close(self) -> None:
        """Flush, close, and do not reconnect (as ``ipc.disconnect(id)``). In a plain handler:
        returns at once, and the close starts when the handler returns."""
        self._loop.close(self.wrapped.aclose)


class BlockingServer(_Wrapper):
    """This actor's server (Unix, TCP, TLS or UDP), blocking. Clients are named by a
    :class:`BlockingClient`, a :class:`~ipcactors.Client`, an id, or (UDP) a ``(host, port)``."""

    def __init__(self, loop: _Loop, server: Server | DatagramServer) -> None:
        self._loop = loop
        #: The async :class:`~ipcactors.Server` or :class:`~ipcactors.DatagramServer`.
        self.wrapped = server
        self._handlers = _Handlers(loop, server)

    def __repr__(self) -> str:
        return f"<BlockingServer {self.address!r}>"

    @property
    def address(self) -> Any:
        return self.wrapped.address

    @property
    def port(self) -> int:
        """As :attr:`Server.port <ipcactors.Server.port>`: the port a TCP, TLS or UDP server is
        bound to (with port 0, the one picked); a Unix socket server has none."""
        return self.wrapped.port

    @property
    def clients(self) -> Mapping[Any, BlockingClient]:
        """A snapshot of the clients (UDP: the peers heard from lately) by id (UDP: address)."""
        peers = self._loop.call(lambda: dict(self.wrapped.clients))
        return {key: BlockingClient(self._loop, peer) for key, peer in peers.items()}

    def start(self) -> None:
        """As :meth:`Server.start`: welcome clients, from a server served with
        ``start=False`` (what lets handlers registered from this thread meet every client)."""
        self._loop.call(self.wrapped.start)

    def emit(self, client: Any, event: str, data: Any = None) -> None:
        """As :meth:`Server.emit`: send ``event`` to one client."""
        self._loop.call(self.wrapped.emit, _unwrap(client), event, data)

    def request(
        self, client: Any, event: str, data: Any = None, *, timeout: float | None = None
    ) -> Any:
        """As :meth:`Server.request`: ask one client, return its answer."""
        request = partial(self.wrapped.request, _unwrap(client), event, data, timeout=timeout)
        return self._loop.call(request)

    def broadcast(self, event: str, data: Any = None) -> None:
        """As :meth:`Server.broadcast`: send ``event`` to every client."""
        self._loop.call(self.wrapped.broadcast, event, data)

    @property
    def unacknowledged(self) -> Mapping[str, list[tuple[int, str]]]:
        """As :attr:`Server.unacknowledged <ipcactors.Server.unacknowledged>` (a UDP server's
        is empty: it acknowledges nothing)."""
        server = self.wrapped
        if isinstance(server, Server):
            return self._loop.read(lambda: dict(server.unacknowledged))
        return {}

    def statistics(self) -> ServerStatistics | DatagramStatistics:
        """A snapshot of the server's counters."""
        server = self.wrapped
        if isinstance(server, Server):
            return self._loop.call(server.statistics)
        return self._loop.call(server.statistics)

    def close(self) -> None:
        """Stop serving and close every client. In a plain handler: returns at once, and the
        close starts when the handler returns."""
        self._loop.close(self.wrapped.aclose)


async def _host(
    actor: Actor, loop: _Loop, *, task_status: anyio.abc.TaskStatus[anyio.Event]
) -> None:
    """The actor's ``async with``, in one task of the loop thread until ``stop`` is set (or the
    actor closes itself: its ``aclose()`` cancels this wait, which ends the block cleanly).
    Its inboxes close with it: a reader waiting in ``get()`` ends, however the actor ended."""
    stop = anyio.Event()
    try:
        async with actor:
            task_status.started(stop)
            await stop.wait()
    finally:
        for inbox in list(loop.inboxes):
            inbox._close()


def _wait_timeout(timeout: object) -> float | None:
    """A blocking wait's ``timeout``, checked in the caller's thread: ``None`` (no limit) or a
    number of seconds (0 or less: do not wait), never NaN."""
    if timeout is None:
        return None
    seconds = seconds_of(timeout)
    if seconds is None or math.isnan(seconds):
        raise ConfigError(f"timeout must be a number of seconds or None, got {shown(timeout)}")
    return seconds


async def _bounded(fn: Callable[[], Awaitable[None]], timeout: float | None, what: str) -> None:
    with anyio.move_on_after(timeout) as waited:
        await fn()
    if waited.cancelled_caught:
        raise TimeoutError(f"{what} within {timeout} s")


class BlockingActor:
    """An :class:`~ipcactors.Actor` for code that is not async: use it as ``with``.

    ``BlockingActor("hello", backend="trio", retry=1.0)``: the same arguments as ``Actor``, plus
    ``backend`` (``"asyncio"`` or ``"trio"``) and ``backend_options`` (e.g.
    ``{"use_uvloop": True}``) for the loop thread. See docs/blocking.md.
    """

    def __init__(
        self,
        id: str,
        config: Config | None = None,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        backend_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        check_backend(backend, backend_options)
        check_actor_id(id)
        self.id = id
        # Validated here, in the caller's thread: a mistake raises ConfigError at once.
        self.config = config_of(config, id=id, **overrides)
        self._backend = backend
        self._backend_options = backend_options
        self._loop = _Loop(id, backend == "trio")
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._host: _Host | None = None
        self._actor: Actor | None = None
        self._used = False
        self._lock = threading.Lock()
        self._closed = threading.Event()  # set once a close has stopped the loop thread

    def __repr__(self) -> str:
        return f"<BlockingActor {self.id!r}>"

    def __enter__(self) -> BlockingActor:
        with self._lock:
            if self._used:
                raise IPCError(f"blocking actor {self.id!r} can be entered only once")
            self._used = True
        try:
            # Ctrl-C is kept until the loop thread and the actor run, then closes them.
            with (
                signals_deferred(),
                exhaustion_raised_as_resource_error(f"cannot start blocking actor {self.id!r}"),
            ):
                self._start()
        except BaseException:
            self.close()
            raise
        close_at_exit(self._close_at_exit)  # a program that never closes it still exits
        return self

    def _start(self) -> None:
        self._loop.pid = os.getpid()
        portal_cm = start_blocking_portal(self._backend, self._backend_options)
        hop = partial(from_this_thread, self._loop.trio_portal)
        portal = hop(portal_cm.__enter__)
        try:
            actor = hop(partial(portal.call, partial(Actor, self.id, self.config)))
            host = hop(partial(portal.start_task, _host, actor, self._loop))
        except BaseException:
            exc_info = sys.exc_info()
            hop(partial(portal_cm.__exit__, *exc_info))
            raise
        self._portal_cm, self._host, self._actor = portal_cm, host, actor
        self._loop.actor, self._loop.stop = actor, host[1]
        self._loop.thread_id = thread_id = hop(partial(portal.call, threading.get_ident))
        _loop_threads.add(thread_id)
        self._loop.portal = portal

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        """``close()`` at the interpreter's exit, where what a handler raised (the program
        already ends) has nowhere to go."""
        self._loop.ended = None
        self.close()

    def close(self) -> None:
        """Flush and close every connection and the server, then stop the loop thread.
        Idempotent; called by leaving ``with``. In a plain handler: returns at once, and the
        actor starts closing when the handler returns (its reply queued first);
        ``wait_closed()`` returns once it is closed, and leaving ``with`` then stops the loop
        thread. If a handler raised what ends a program (``sys.exit``, ``KeyboardInterrupt``),
        the actor has ended, and this raises it, once."""
        self._close()
        ended, self._loop.ended = self._loop.ended, None
        if ended is not None:
            raise ended

    def _close(self) -> None:
        if self._loop.forked:
            return  # (the parent's to close: its loop thread is there)
        if _deferred_closes(self._loop) is not None:
            if self._loop.portal is not None and self._actor is not None:
                self._loop.close(self._actor.aclose)
            return
        if threading.get_ident() in _loop_threads:
            raise IPCError("close() was called in an event loop thread; call it from another")
        with self._lock:
            host, self._host = self._host, None
            started = self._actor is not None
        if host is None:  # never started, or another close is at it (or a Ctrl-C cut one short)
            if started:
                self._closed.wait()  # another thread's close: returns once it is done
                self._stop_loop()  # (what a Ctrl-C left of a close: nothing if it was not cut)
            return
        try:
            self._stop_actor(host)
        finally:
            try:
                self._stop_loop()
            except BaseException:
                # A Ctrl-C right behind the first can land as the stop begins to hold them,
                # before it took the loop: the stop is made all the same, then it is raised.
                self._stop_loop()
                raise
            finally:
                self._closed.set()

    def _stop_actor(self, host: _Host) -> None:
        """Close the actor (in its loop), once: a reader waiting in an inbox ends first."""
        done, stop = host
        for inbox in list(self._loop.inboxes):
            inbox.close()
        if not done.done():
            portal = self._loop.portal
            assert portal is not None
            from_this_thread(self._loop.trio_portal, partial(portal.call, stop.set))
        done.result()

    def _stop_loop(self) -> None:
        """Stop the loop thread, once, whichever comes first: a close, another after a Ctrl-C
        cut one short, the interpreter's exit. Signals wait meanwhile (the loop's work is
        done: its stop is short); the portal is taken only once they do."""
        with signals_deferred():
            with self._lock:
                portal_cm, self._portal_cm = self._portal_cm, None
            if portal_cm is None:
                return
            self._loop.portal = None
            _loop_threads.discard(self._loop.thread_id)
            stop_portal = partial(portal_cm.__exit__, None, None, None)
            from_this_thread(self._loop.trio_portal, stop_portal)
            for worker in list(self._loop.workers):  # told to end as the loop did
                worker.join(WORKER_END_WAIT)
        closed(self)

    @property
    def wrapped(self) -> Actor:
        """The async :class:`~ipcactors.Actor` (for code in the loop thread)."""
        if self._actor is None:
            raise IPCError(f"use the blocking actor inside 'with' first: with {self!r} as ipc")
        return self._actor

    @property
    def portal(self) -> BlockingPortal:
        """The anyio portal of the loop thread: ``portal.call(async_fn, ...)`` runs there."""
        if self._loop.portal is None:
            raise ClosedError(f"blocking actor {self.id!r} is not running")
        return self._loop.portal

    @overload
    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._actor is None:
            raise IPCError(f"use the blocking actor inside 'with' first: with {self!r} as ipc")
        return self._loop.call(fn, *args)

    # --- serving ------------------------------------------------------------------------------

    @property
    def server(self) -> BlockingServer | None:
        server = self.wrapped.server
        return None if server is None else BlockingServer(self._loop, server)

    def serve(self, path: str | None = None, *, start: bool = True) -> BlockingServer:
        """As :meth:`Actor.serve`: listen on a Unix socket. Handlers registered from this
        thread afterwards may miss the first events of clients already waiting (one restarted
        server): ``start=False``, then :meth:`BlockingServer.start` once they are in place."""
        serve = partial(self.wrapped.serve, path, start=start)
        return BlockingServer(self._loop, self._call(serve))

    def serve_net(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        udp: Literal["udp4", "udp6"] | None = None,
        tls: ssl.SSLContext | None = None,
        start: bool = True,
    ) -> BlockingServer:
        """As :meth:`Actor.serve_net`: listen on TCP, TLS or (``udp=``) UDP (``start``: see
        :meth:`serve`)."""
        serve = partial(self.wrapped.serve_net, host, port, udp=udp, tls=tls, start=start)
        return BlockingServer(self._loop, self._call(serve))

    # --- connecting ---------------------------------------------------------------------------

    @property
    def of(self) -> Peers[BlockingConnection]:
        """A snapshot of the connections by id (node-ipc's ``ipc.of``), also by attribute
        (``of.world``); an id not connected raises :class:`UnknownPeerError`, as in the async
        API."""
        connections = self._call(lambda: dict(self.wrapped.of))
        return Peers(
            self.id, {id: BlockingConnection(self._loop, c) for id, c in connections.items()}
        )

    def connect_to(
        self, id: str, path: str | None = None, *, wait: bool = True
    ) -> BlockingConnection:
        """As :meth:`Actor.connect_to`: returns once connected (``wait=False``: once the
        socket is), or raises."""
        connect = partial(self.wrapped.connect_to, id, path, wait=wait)
        return BlockingConnection(self._loop, self._call(connect))

    def connect_to_net(
        self,
        id: str,
        host: str | None = None,
        port: int | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        wait: bool = True,
    ) -> BlockingConnection:
        """As :meth:`Actor.connect_to_net`."""
        connect = partial(self.wrapped.connect_to_net, id, host, port, tls=tls, wait=wait)
        return BlockingConnection(self._loop, self._call(connect))

    def disconnect(self, id: str) -> None:
        """As :meth:`Actor.disconnect`: flush, close, do not reconnect. In a plain handler:
        returns at once, and the disconnect starts when the handler returns."""
        connection = self._call(self.wrapped._connection_to, id)  # (its errors: now)
        self._loop.close(connection.aclose)

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the actor is closed (by another thread's ``close()``, or a handler);
        raises :class:`TimeoutError` after ``timeout`` seconds. Raises :class:`IPCError` in a
        plain handler that closed this actor: that close starts once the handler has returned,
        so the wait would wait on itself; and in any plain handler of this actor's, whose close
        waits for its handlers."""
        timeout = _wait_timeout(timeout)
        actor = self.wrapped
        if self._loop.portal is None:
            return
        closes = _deferred_closes(self._loop)
        if closes is not None and actor.aclose in closes:
            raise IPCError(
                f"wait_closed() in the handler that closes {actor.id!r} would wait on itself: "
                "the close starts once the handler has returned"
            )
        if closes is not None:
            raise IPCError(
                f"wait_closed() in a plain handler of {actor.id!r} would hold up its close, "
                "which waits for its handlers: return from the handler instead"
            )
        try:
            self._call(_bounded, actor.wait_closed, timeout, f"actor {actor.id!r} not closed")
        except ClosedError:
            return  # the loop stopped meanwhile: closed

    def log(self, *args: Any) -> None:
        """As :meth:`Actor.log`."""
        self.wrapped.log(*args)
