"""The actor: an id, a config, at most one server, and connections to other actors by id.

Invariants:
- Every task an actor starts (its server's, its connections') lives in the actor's task group;
  leaving ``async with Actor(...)`` flushes and closes them all (bounded by ``close_timeout``),
  so nothing outlives the block.
- Nothing outlives the actor either when it runs in a task the actor does not own: closing
  cancels a ``connect_to()`` still trying (in its caller's task) at once, and it raises
  :class:`ClosedError`; no stream, and no client on the server it was trying, is left behind.
- The public methods check their arguments before anything else: a mistake (a wrong type, a
  port out of range) raises :class:`ConfigError` at once, never a retry that cannot succeed.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Iterator, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Literal, TypeVar, overload

import anyio
from anyio.abc import TaskGroup

from ._config import Config, config_of, is_utf8, shown
from ._core._channel import program_goes_on
from ._core._connection import Connection
from ._core._handling import keeps, kept_until_handled
from ._core._hosting import Hosting
from ._core._peer import Peer
from ._core._server import Client, Server
from ._core._udp import DatagramPeer, DatagramServer
from ._core._watchdog import Watchdog
from ._errors import ClosedError, ConfigError, IPCError, UnknownPeerError
from ._log import ActorLog
from ._runtime import current_runtime, end_with_run
from ._transports._datagram import DatagramKind
from ._transports._memfd import memfd_supported
from ._transports._tls import TLSTransport, check_server_context
from ._transports._transport import TCPTransport, Transport, UnixTransport
from ._transports._unix import default_socket_root, ensure_socket_dir

__all__ = ["Actor", "check_actor_id"]


class Actor:
    """A named actor: node-ipc's ``ipc`` object, one per ``async with`` block.

    ``Actor("world")`` uses the default :class:`Config`; pass ``config=`` and/or keyword
    overrides (``Actor("world", retry=1.5, silent=True)``). An id is non-empty text without
    NUL (:class:`ConfigError` otherwise); its default socket file (:meth:`default_path`) takes
    an id without '/'.
    """

    def __init__(self, id: str, config: Config | None = None, **overrides: Any) -> None:
        check_actor_id(id)
        self.config = config_of(config, id=id, **overrides)
        self.id = id
        self._log = ActorLog(id, self.config.silent)
        self._server: Server | DatagramServer | None = None
        self._server_starting = False  # a serve() is under way (see _check_serving)
        self._connections: dict[str, Connection] = {}
        self._task_group: TaskGroup | None = None
        self._hosting: Hosting | None = None  # where _task_group lives (see __aenter__)
        self._flushing: anyio.CancelScope | None = None  # the close's flush, while it runs
        self._aborted = False  # _abort() was called: nothing more is flushed
        # When a close must be over (anyio's clock), whatever close_timeout allows: a supervised
        # child's, as long as its supervisor's stop message gives it (see _child).
        self._close_by = math.inf
        self._body: anyio.CancelScope | None = None  # the async with block's, while it runs
        self._body_task = 0  # the id of the task that runs it
        self._watchdog: Watchdog | None = None  # one task keeps time for every channel
        self._closing = False
        self._closed = anyio.Event()
        #: In a process started by a :class:`Supervisor`: the connection to that supervisor
        #: (set before the child's function runs). ``None`` everywhere else.
        self.parent: Connection | None = None

    def __repr__(self) -> str:
        return f"<Actor {self.id!r}>"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Actor:
        if self._task_group is not None or self._closing:
            raise IPCError(f"actor {self.id!r} can be entered only once")
        program_goes_on()
        # What the actor runs lives in a group that a cancellation of the block does not reach:
        # leaving the block, however it ends, flushes first (see _hosting).
        self._hosting = Hosting()
        task_group = await self._hosting.__aenter__()
        self._task_group = task_group
        self._watchdog = Watchdog(task_group)
        # The block's body runs in a scope of its own, inside the task group's but apart from
        # the tasks in it: a close from elsewhere cancels the body first, and flushes on.
        self._body = anyio.CancelScope()
        self._body.__enter__()
        self._body_task = anyio.get_current_task().id
        runtime = current_runtime()
        if runtime is not None:
            runtime.actors.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._task_group is None or self._body is None or self._hosting is None:
            raise IPCError(f"actor {self.id!r} is not entered: __aexit__ follows __aenter__")
        original = exc
        body, self._body = self._body, None
        try:
            # (Trio's scope answers True when shown no exception: only a shown one is swallowed.)
            if body.__exit__(exc_type, exc, tb) and exc is not None:
                exc_type = exc = tb = None  # the body was cancelled by a close: it ends quietly
        except BaseException as left:
            # Trio's scope raises what is left of a group it took its own Cancelled out of (a
            # task group in the block failed as a close cancelled it): that goes on, but only
            # once the actor is closed and its own task group left.
            exc_type, exc, tb = type(left), left, left.__traceback__
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        finally:
            runtime = current_runtime()
            if runtime is not None:
                runtime.actors.discard(self)
            try:
                suppress = await self._hosting.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                only = group.exceptions[0] if len(group.exceptions) == 1 else None
                if exc is not None and only is not None and _same(only, exc):
                    if exc is not original:
                        raise exc from None  # (what the body's scope left, as itself)
                    return False  # the block's own exception, as itself: not in a group
                raise
        # Trio's task group answers True even when no exception was shown: pass on a true
        # result only when there was one to suppress (a caller may take it at its word).
        suppressed = bool(suppress) and exc is not None
        if exc is None or suppressed:
            await end_with_run()  # after run()'s signal, the code after the block never runs
        elif exc is not original:
            raise exc  # (what the body's scope left of the block's exception)
        return suppressed or (original is not None and exc is None)

    async def aclose(self) -> None:
        """Flush and close every connection and the server (each bounded by ``close_timeout``),
        then stop. ``wait_closed()`` returns after this. The body of the actor's ``async with``
        is cancelled at its next ``await`` (it ends quietly), wherever this was called from:
        called from another task (or a handler), the body is cancelled as the close starts, so
        a ``request()`` or ``emit()`` it waits in does not fail with this close's ClosedError.
        From a handler of this actor's (an event's, a request's, a lifecycle handler): returns
        at once, and the actor starts closing once the handler has returned (a request's reply
        is queued first, and flushed). An actor entered by hand (``await
        actor.__aenter__()``, as ``AsyncExitStack`` does) is left by ``__aexit__`` in the task
        that entered it, as any async context manager: ``aclose()`` alone closes it, but that
        task stays inside its (then cancelled) scopes until it leaves them."""
        if kept_until_handled(self._hosts, self._close_soon):
            return
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        if (
            self._body is not None
            and self._task_group is not None
            and not self._aborted  # (its group is cancelled: a task there would never run)
            and anyio.get_current_task().id != self._body_task
        ):
            # From another task: the body ends now, at its next await, instead of meeting the
            # close's own errors there (a request failed, an emit refused); the close runs in
            # the actor's task group, apart from the body.
            self._body.cancel()
            self._task_group.start_soon(self._close)
            await self._closed.wait()
            return
        await self._close()
        if self._body is not None and anyio.get_current_task().id == self._body_task:
            self._body.cancel()  # from the block itself: the rest of it ends at its next await

    async def _close(self) -> None:
        closers = [connection.aclose for connection in self._connections.values()]
        if self._server is not None:
            closers.append(self._server.aclose)
        bound = min(self.config.close_timeout * 2, self._close_by - anyio.current_time())
        # (Cut short, each connection still names what it never sent as it ends.)
        self._flushing = flushing = anyio.move_on_after(max(0.0, bound))
        if self._aborted:
            flushing.cancel()
        try:
            with flushing:
                if len(closers) == 1:  # the common case: no task to start
                    await closers[0]()
                elif closers:
                    async with anyio.create_task_group() as task_group:
                        for close in closers:
                            task_group.start_soon(close)
        finally:
            if self._watchdog is not None:
                self._watchdog.close()
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            self._closed.set()

    def _unhandled(self) -> list[tuple[str, int]]:
        """``(peer, count)`` for every peer this actor received events or requests from that
        are not handled yet: what the process ending now would drop. Only reads (a signal
        handler calls it, between any two steps of the loop)."""
        server = self._server
        peers: list[Any] = list(self._connections.values())
        if isinstance(server, Server):
            peers.extend(server._clients.values())
        found = []
        for peer in peers:
            channel = peer._channel
            count = 0 if channel is None else channel.unhandled
            if count > 0:
                found.append((peer.id, count))
        if isinstance(server, DatagramServer) and server._inbox:
            found.append(("its UDP peers", len(server._inbox)))
        return found

    def _abort(self) -> None:
        """Stop now (``run``'s second signal): a flush in progress is cut short, and what
        the actor runs is cancelled, as a cancellation of its block no longer does."""
        self._aborted = True
        if self._flushing is not None:
            self._flushing.cancel()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    def _hosts(self, peer: Peer) -> bool:
        """Whether a handler of ``peer``'s runs under this actor."""
        if isinstance(peer, Client | DatagramPeer):
            return self._server is not None and peer._server is self._server
        return self._connections.get(peer.id) is peer

    def _close_soon(self) -> None:
        if self._task_group is not None and not self._closing:
            self._task_group.start_soon(self.aclose)

    async def wait_closed(self) -> None:
        """Return once the actor is closed (``aclose()`` called or its ``async with`` left).
        Raises :class:`IPCError` in a handler that asked for this actor's close: that close
        starts once the handler has returned, so the wait would wait on itself."""
        if keeps(self._close_soon):
            raise IPCError(
                f"wait_closed() in the handler that closes {self.id!r} would wait on itself: "
                "the close starts once the handler has returned"
            )
        if self._task_group is None and not self._closing:
            raise IPCError(
                f"actor {self.id!r} was never entered: nothing would close it "
                f"(async with {self!r} ...)"
            )
        await self._closed.wait()

    def _group(self) -> TaskGroup:
        if self._task_group is None:
            raise IPCError(f"use the actor inside 'async with' first: async with {self!r} ...")
        if self._closing:
            raise ClosedError(f"actor {self.id!r} is closed")
        return self._task_group

    # --- serving ------------------------------------------------------------------------------

    @property
    def server(self) -> Server | DatagramServer | None:
        """This actor's server, once ``serve()``/``serve_net()`` was called."""
        return self._server

    def default_path(self, id: str | None = None) -> str:
        """node-ipc's socket path: ``<socket_root>/<appspace><id>``. Raises
        :class:`ConfigError` for an id that is not a file name there (with '/' or NUL)."""
        if id is None:
            id = self.id
        else:
            _check_id(id)  # (an empty one gave our own path, another type a bare TypeError)
        if "/" in id or "\0" in id:
            raise ConfigError(
                f"actor id {id!r} names no socket file in socket_root: it has '/' or NUL; "
                "pass path= (or serve it over TCP) instead"
            )
        root = self.config.socket_root or default_socket_root()
        return os.path.join(root, f"{self.config.appspace}{id}")

    async def serve(self, path: str | None = None, *, start: bool = True) -> Server:
        """Listen on a Unix socket (default :meth:`default_path`). Returns once listening.

        Nothing a client sends is handled before the caller's next ``await``: register the
        handlers first. ``start=False``: clients are welcomed only from ``server.start()`` on
        (for handlers registered later, or from another thread: see docs/guide.md).

        Raises :class:`AddressInUseError` if a live server holds the path (it is never taken
        over) or a non-socket file is there (it is never removed); a stale socket file left by
        a dead server is replaced.
        """
        return await self._serve(self._unix_transport(path), held=not start)

    @property
    def _pass_fds(self) -> bool:
        """Whether our Unix sockets pass descriptors: shared memory is on, and can be."""
        return self.config.max_shared_bytes > 0 and memfd_supported()

    def _unix_transport(self, path: object) -> UnixTransport:
        path = _path(path, "serve_net(port=...)")
        if path is None:
            ensure_socket_dir(
                self.config.socket_root or default_socket_root(),
                private=not self.config.socket_root,  # ("" as None: the default)
            )
            path = self.default_path()
        return UnixTransport(os.path.abspath(path), pass_fds=self._pass_fds)

    @overload
    async def serve_net(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        udp: None = None,
        tls: ssl.SSLContext | None = None,
        start: bool = True,
    ) -> Server: ...

    @overload
    async def serve_net(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        udp: Literal["udp4", "udp6"],
        tls: None = None,
        start: bool = True,
    ) -> DatagramServer: ...

    async def serve_net(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        udp: Literal["udp4", "udp6"] | None = None,
        tls: ssl.SSLContext | None = None,
        start: bool = True,
    ) -> Server | DatagramServer:
        """Listen on TCP (default ``Config.network_host``/``network_port``; port 0 picks a free
        one, see ``server.address``).

        ``tls``: a server context with a certificate loaded (refused otherwise); set its
        ``verify_mode = ssl.CERT_REQUIRED`` and ``load_verify_locations(...)`` for mutual TLS.
        ``udp="udp4"`` or ``"udp6"``: a :class:`DatagramServer` instead (no connections).
        ``start``: as for :meth:`serve` (a UDP server reads nothing before ``start()``).
        Raises :class:`AddressInUseError` if the port is taken, :class:`ConfigError` if the
        address cannot be served on here (not this host's, of the other IP version, a name
        that does not resolve, a port it may not bind).
        """
        host = _host(host, port, "serve_net(port=...)")
        port = _port(port, self.config.network_port)
        if udp is not None:
            if tls is not None:
                raise ConfigError("TLS over UDP is not supported; use TCP with tls=")
            return await self._serve_udp(host, port, udp, held=not start)
        host = host or self.config.network_host
        if tls is not None:
            check_server_context(tls)
            return await self._serve(TLSTransport(host, port, tls), held=not start)
        return await self._serve(TCPTransport(host, port), held=not start)

    async def _serve_udp(
        self, host: str | None, port: int, udp: str, *, held: bool
    ) -> DatagramServer:
        kind: DatagramKind
        if udp == "udp4":
            kind = "udp4"
            host = host or self.config.network_host
        elif udp == "udp6":
            kind = "udp6"
            host = host or "::1"
        else:
            raise ConfigError(f'udp= takes "udp4" or "udp6", got {udp!r}')
        if self.config.acked == "require":  # datagrams are never acknowledged
            raise ConfigError(
                'acked="require" cannot serve UDP: datagrams are at most once; use acked="on" '
                "(acknowledged where possible) or serve over a stream"
            )
        task_group = self._group()
        self._check_serving()
        server = DatagramServer(self.id, self.config, self._log, host, port, kind)
        await self._start_serving(server, task_group, held)
        return server

    def _check_serving(self) -> None:
        """An actor serves on one server at a time: another once that one is closed."""
        if self._server_starting:
            raise IPCError(f"actor {self.id!r} is already starting a server")
        server = self._server
        if server is not None and not server._stopped.is_set():
            raise IPCError(
                f"actor {self.id!r} already serves on {server.address!r}; close that server "
                "first (server.aclose()) to serve anew"
            )

    async def _serve(self, transport: Transport, *, held: bool = False) -> Server:
        """Listen on ``transport``; ``held``: welcome no client until ``server.start()``, else
        from the caller's next ``await`` on (see :func:`_start_once_awaited`)."""
        task_group = self._group()
        self._check_serving()
        server = Server(self.id, self.config, self._log, transport, self._watchdog)
        await self._start_serving(server, task_group, held)
        return server

    async def _start_serving(
        self, server: Server | DatagramServer, task_group: TaskGroup, held: bool
    ) -> None:
        """Start ``server`` held (no other serve() meanwhile); it becomes the actor's, and,
        unless ``held``, welcomes clients from the caller's next ``await`` on."""
        server._hold()
        self._server_starting = True
        try:
            await server._start(task_group)
        finally:
            self._server_starting = False
        self._server = server
        if not held:
            task_group.start_soon(_start_once_awaited, server)

    # --- connecting ---------------------------------------------------------------------------

    @property
    def of(self) -> Peers[Connection]:
        """Connections by the id of the actor they lead to (node-ipc's ``ipc.of``): a read-only
        mapping, ``ipc.of["world"]``, or ``ipc.of.world`` as in node-ipc. An id not connected
        raises :class:`UnknownPeerError` (a ``KeyError``) naming the ids that are."""
        return Peers(self.id, self._connections)

    async def connect_to(
        self, id: str, path: str | None = None, *, wait: bool = True
    ) -> Connection:
        """Connect to actor ``id``'s Unix socket (default: its :meth:`default_path`).

        Returns once the handshake is done, retrying as ``retry``/``stop_retrying`` say; raises
        :class:`ConnectionFailedError` (or :class:`ServerBusyError`, ...) when retries run out.
        If ``id`` is already connected (or connecting), returns that connection, once it is
        connected as this call would have waited (if the call opening it is cancelled first,
        this one goes on connecting in its place); one being closed (``disconnect``) is not: a
        new one takes its place.

        ``wait=False`` saves a round trip: returns as soon as the socket is connected (with
        ``auth_key``: once the server proved it knows the key); what you emit or request next
        travels right behind the hello (or our proof), in the same write, and the server
        handles it once it welcomed us. The welcome is awaited in the background:
        ``connected`` turns true and the ``connect`` handlers run then. A failed handshake is
        retried as if we had waited: after a ``busy`` refusal or a connection that ended
        unwelcomed (none of it was handled), what went ahead goes again behind the next hello.
        A fatal refusal ends the connection: the requests sent ahead fail with it (so does
        ``wait_connected``, and the ``error`` handlers hear it) and its events are not
        handled; past ``handshake_timeout`` the requests fail with ``ConnectionLostError`` (the
        server may have handled them) and the events are not sent again. Not in the
        acknowledged mode (``Config.acked``), which resumes from the welcome, nor when the
        hello offers shared memory (``Config.max_shared_bytes``), which the welcome settles:
        there it waits as usual.
        """
        _check_id(id)
        path = _path(path, f"connect_to_net({id!r}, port=...)")
        path = os.path.abspath(path) if path is not None else self.default_path(id)
        return await self._connect(id, UnixTransport(path, pass_fds=self._pass_fds), wait)

    async def connect_to_net(
        self,
        id: str,
        host: str | None = None,
        port: int | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        wait: bool = True,
    ) -> Connection:
        """Connect to actor ``id`` over TCP (default ``Config.network_host``/``network_port``).

        ``tls``: a client context; ``ssl.create_default_context(cafile=...)`` verifies the
        server's certificate and host name (add ``load_cert_chain`` for mutual TLS). TLS failures
        raise :class:`TLSError` and are never retried (with ``codec="node-ipc"``, which has no
        handshake, a refused client certificate comes after this returns: the connection's
        ``error`` handlers get the ``TLSError``). ``wait``: as for :meth:`connect_to`.
        """
        _check_id(id)
        host = _host(host, port, f"connect_to_net({id!r}, port=...)") or self.config.network_host
        port = _port(port, self.config.network_port)
        if tls is None:
            return await self._connect(id, TCPTransport(host, port), wait)
        if not isinstance(tls, ssl.SSLContext):
            raise ConfigError(
                "tls= takes an ssl.SSLContext (a client context, e.g. "
                f"ssl.create_default_context(cafile=...)), got {tls!r}"
            )
        if tls.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ConfigError(
                "tls= for connect_to_net needs a client context, "
                "e.g. ssl.create_default_context(cafile=...)"
            )
        return await self._connect(id, TLSTransport(host, port, tls), wait)

    async def _connect(
        self,
        id: str,
        transport: Transport,
        wait: bool = True,
        *,
        ready: anyio.Event | None = None,
        token: str | None = None,
    ) -> Connection:
        """``connect_to``'s work. A supervised child's link to its supervisor also gives the
        event until which nothing received is handled (``ready``: see ``Peer._ready``) and
        its incarnation's ``token`` (see ``Connection._token``)."""
        while (existing := self._connections.get(id)) is not None and not existing._closing:
            if await existing._wait_as_connect(wait):
                return existing
            # (The call opening it was cancelled, which closes nothing: we connect instead.)
        # (One being closed goes on closing on its own: a new connection takes its place.)
        task_group = self._group()
        connection = Connection(
            self.id, id, transport, self.config, self._log, self._forget, self._watchdog, task_group
        )
        connection._ready, connection._token = ready, token
        self._connections[id] = connection
        # Runs in the caller's task, which the actor does not own: aclose() cancels the
        # attempts through the connection (it is in _connections from here on).
        channel = await connection._connect(pipelined=not wait)
        if self._closing or connection._closing:
            # Closed while the connect handlers ran: serve it closed (disconnect and destroy
            # fire), here, since the actor's task group may be gone.
            await connection._run(channel)
            raise ClosedError(f"actor {self.id!r} was closed while connecting to {id!r}")
        task_group.start_soon(connection._run, channel)
        if wait:
            await channel.wait_opened()  # its connect handlers ran (they need the channel running)
        return connection

    def _forget(self, connection: Connection) -> None:
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]

    async def disconnect(self, id: str) -> None:
        """Flush to actor ``id`` (bounded by ``close_timeout``), close, and do not reconnect.
        From a handler of that connection's: returns at once, and the close starts once the
        handler has returned (a request's reply is queued first, and flushed)."""
        await self._connection_to(id).aclose()

    def _connection_to(self, id: str) -> Connection:
        """Our connection to actor ``id``; :class:`UnknownPeerError` if we have none."""
        _check_id(id)
        connection = self._connections.get(id)
        if connection is None:
            raise UnknownPeerError(f"{self.id!r} has no connection to {id!r}")
        return connection

    # --- logging ------------------------------------------------------------------------------

    def log(self, *args: Any) -> None:
        """node-ipc's ``ipc.log``: log the arguments joined by spaces (unless ``silent``)."""
        self._log.user(*args)


class _UnknownPeerAttributeError(UnknownPeerError, AttributeError):
    """``ipc.of.world`` for a peer not connected: the documented :class:`UnknownPeerError`,
    and an ``AttributeError`` so that ``hasattr`` and ``getattr(..., default)`` work."""


def _check_id(id: object) -> None:
    if type(id) is not str or not id:
        raise ConfigError(f"an actor id must be a non-empty string, got {id!r}")


def _path(path: object, net_call: str) -> str | None:
    if path is None:
        return None
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if type(path) is not str or not path:
        hint = f"; for TCP, use {net_call}" if type(path) is int else ""
        raise ConfigError(f"path must be a str (a Unix socket path) or None, got {path!r}{hint}")
    if "\0" in path:
        raise ConfigError(f"a Unix socket path cannot hold NUL, got {path!r}")
    return path


def check_actor_id(id: object) -> None:
    """Raise :class:`ConfigError` unless ``id`` can name an actor: non-empty text (UTF-8 can
    carry it on the wire) without NUL."""
    if type(id) is not str or not id or "\0" in id or not is_utf8(id):
        raise ConfigError(f"an actor id must be a non-empty string of text without NUL, got {id!r}")


C = TypeVar("C")  # what a connection is: a Connection, or the blocking API's


class Peers(Mapping[str, C]):
    """A read-only view of an actor's connections by id, also by attribute (``of.world``)."""

    __slots__ = ("_connections", "_owner")

    def __init__(self, owner: str, connections: Mapping[str, C]) -> None:
        self._owner = owner
        self._connections = MappingProxyType(dict(connections))

    def __getitem__(self, id: str) -> C:
        try:
            return self._connections[id]
        except KeyError:
            known = ", ".join(map(repr, self._connections)) or "none"
            raise UnknownPeerError(
                f"{self._owner!r} has no connection to {id!r} (connected: {known}); "
                f"call connect_to({id!r}) first"
            ) from None

    def __getattr__(self, id: str) -> C:
        if id.startswith("_"):
            raise AttributeError(id)
        try:
            return self[id]
        except UnknownPeerError as exc:
            raise _UnknownPeerAttributeError(str(exc)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._connections)

    def __len__(self) -> int:
        return len(self._connections)

    def __repr__(self) -> str:
        return f"Peers({dict(self._connections)!r})"


def _host(host: object, port: object, by_name: str) -> str | None:
    if host is None:
        return None
    if type(host) is int and port is None:
        # node-ipc's connectToNet(id, port) / serveNet(port): the port lands on host= here.
        call = by_name.replace("...", str(host))
        raise ConfigError(
            f"host must be a str (a host name or address), got the int {host}: node-ipc's "
            f"(id, port) shorthand does not work here; pass the port by name: {call}"
        )
    if type(host) is not str or not host or not is_utf8(host) or "\0" in host:
        raise ConfigError(
            f"host must be a non-empty str (a host name or address, without NUL) or None, "
            f"got {host!r}"
        )
    return host


def _port(port: object, default: int) -> int:
    if port is None:
        return default
    if type(port) is not int or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer between 0 and 65535, got {shown(port)}")
    return port


def _same(seen: BaseException, raised: BaseException) -> bool:
    """Whether ``seen`` is ``raised``, or (a group) the copy of it that a task group made on
    its way out (Trio's takes its cancellations out of a group with ``split``, which copies
    the groups even when nothing is taken out)."""
    if seen is raised:
        return True
    if not isinstance(seen, BaseExceptionGroup) or not isinstance(raised, BaseExceptionGroup):
        return False
    return (
        type(seen) is type(raised)
        and seen.message == raised.message
        and len(seen.exceptions) == len(raised.exceptions)
        and all(map(_same, seen.exceptions, raised.exceptions))
    )


async def _start_once_awaited(server: Server | DatagramServer) -> None:
    """Start a server that ``serve`` returned held: a task started there runs once the caller
    awaits, so the handlers it registers before its next ``await`` meet every client."""
    server.start()
