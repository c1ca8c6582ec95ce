"""The server side: accepting clients, the handshake, clients by id, emit and broadcast.

Invariants:
- A client counts as connected only after it was sent ``welcome``; the ``connect`` handlers run
  before any of its events and requests are handled (while its channel already reads and
  writes, so they may emit to it and await requests), ``disconnect`` once after its last.
  Frames a client sent behind its hello are decoded only after its welcome; the welcome then
  leads its priority lane, so that it goes out with the first replies in one write.
- Requests to a client that leaves fail with ``ConnectionLostError``; with ``ClosedError`` only
  when this server is being closed.
- ``max_connections`` holds for every transport: a client beyond it is refused with
  ``reject(busy)``. It counts the clients and the connections replaced that still finish
  what they got (``_retiring``). A newcomer that replaces its id's connection takes its place
  (which finishes within ``close_timeout``, see below), unless that id already has a
  connection finishing so: then it adds one. So one id's storm of reconnects is held to the
  limit, and the server to twice the limit at most.
- Unfinished handshakes have a budget of their own (``max_handshakes``) and one deadline each
  (``handshake_timeout``, however the bytes trickle in). A connection that finds the budget
  full drops the oldest unfinished handshake, so a flood of silent or trickling sockets cannot
  lock out a good client; a finished handshake is never dropped for this. The budget grows by
  the connections the owner expects (:meth:`_expect_handshakes`: a supervisor's children
  starting), so a burst of them is not taken for a flood; it stays bounded by what was started.
- ``broadcast`` never waits for one slow client unless ``slow_consumer="wait"``: under
  ``"disconnect"`` a client's outbox may hold up to twice ``max_outbox_bytes`` of broadcasts
  (room to catch up after a burst), past that the client is disconnected; under ``"drop"`` it
  has the same room, past which it misses the frame. Both are counted and logged.
- A client that sends nothing for ``heartbeat_interval + heartbeat_timeout`` (frozen, hung,
  vanished) is dropped, and with ``idle_timeout`` one that sends nothing but heartbeats is
  closed: either way its slot is freed (see ``_channel``).
- One id, one connection: a client that connects with an id already connected replaces the
  older connection (usually a half-open leftover of a reconnect), which is told (``reject
  replaced``, within ``REPLACED_NOTICE_WAIT``: a live client with the same id then gives up
  instead of replacing the newer one in turn) and closed. It is not cut short: what it sent is
  handled before the newcomer's events (within ``close_timeout``; in the acknowledged mode, a
  handler cancelled then has its event delivered again, the welcome's ``last`` not counting
  it; its request handlers still running then are cancelled: no reply could reach its client,
  and the newcomer's events must not wait on them), the newcomer welcomed at once meanwhile:
  up to its end if its input ended (it closed, or the link broke), and if not, up to its end
  or until it falls quiet (``REPLACED_QUIET`` with nothing left to handle: a half-open
  leftover, at once; a live client that goes on sending, the notice unread, until
  ``close_timeout``), for its client may have closed it behind a backlog not yet read, its end
  of stream behind it. Until it ends it is ``_retiring``, closed with the server although no
  longer in ``clients``; one whose input ended is told nothing (its client closed: a write
  would fail, and cut its handling short). The newcomer's ``connect`` handlers run once the
  connections it replaced are gone (their ``disconnect`` handlers done); closed before that,
  it has no ``disconnect`` either. Newcomers with one id are ordered as their handshakes end
  (``_newest``): one that a later one overtook while it waited for the notice is refused
  (``reject replaced``) instead of welcomed, so however many arrive at once, one connection
  per id is kept and every other one is closed.
- A held server (``_hold()``, before it listens) welcomes no one until ``start()``: every
  server until the caller of ``serve`` awaits (``Actor._serve``), one served with
  ``start=False`` until it says, a supervised child until its function has registered its
  handlers. A client whose handshake is done waits, outside the ``max_handshakes`` budget but
  counted in ``max_connections``, and keeps its frames in its own outbox meanwhile: nothing it
  sends meets a missing handler (a node-ipc client's wait in its socket). The wait is
  bounded: past ``HOLD_SHARE`` of ``handshake_timeout`` (so that the client hears why before
  its own deadline) it is refused with ``busy`` (retried), as when the server closes first; a
  newer attempt with the same id drops the older one (its client gave up on it). A client
  without a handshake (node-ipc's) has no deadline to hear of, and what it sent already waits
  in its socket, which a refusal would close unread: it waits until ``start()`` or the close.
- A bad peer costs only its own connection: nothing one accepted socket raises (a reset before
  it was accepted, a handler's bug) reaches the server's task group. The accept loop survives
  running out of file descriptors or buffers (it logs once, backs off and keeps serving).
- Acknowledged mode (``Config.acked``, see ``_acks``): a client whose hello offers it is
  welcomed with ``last``, the last sequence number its session delivered here (0 for a session
  this process does not know), and its events are delivered once each while this server lives
  (sessions outlive connections, and a restarted server counts as new). With
  ``acked="require"`` a client that does not offer it is refused (``reject(acked)``). Our
  events to a client that acknowledges them (its hello has ``last``) form one stream per
  client id, moved to each of its connections (after the previous one's outbox is closed) and
  kept ``acked_keep`` seconds while it is away; given up then, or when the server closes, they
  are reported (``unacknowledged``). Closing a client waits for its acknowledgements within
  ``close_timeout``.
- Every accepted socket is closed however its handling ends, cancellation included. Closing
  the server drops unfinished handshakes at once (there is nothing to flush to them).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from math import inf
from types import MappingProxyType
from typing import Any, NamedTuple

import anyio
from anyio.abc import ByteStream, TaskGroup, TaskStatus
from anyio.streams.tls import TLSAttribute

from .._bursts import WarningBursts
from .._config import Config
from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    IPCError,
    ProtocolError,
    UnknownPeerError,
)
from .._log import ActorLog
from .._proto._codec import EventBatches
from .._proto._messages import Frame, frame_size
from .._proto._session import Refusal, Role, Session
from .._transports._fds import can_pass_fds
from .._transports._streams import close_now
from .._transports._transport import Address, Listener, Transport
from ._acks import SESSIONS_KEPT, AckedSender, ClientStreams, Entry, ReceiverSessions
from ._channel import Channel
from ._flag import Flag
from ._handlers import HandlerMethods, Handlers
from ._handling import kept_until_handled
from ._handshake import SaidNothing, accept_handshake
from ._peer import Peer, check_event_name
from ._shared import shared_offer
from ._stats import ServerCounters, ServerStatistics
from ._watchdog import Watchdog

__all__ = ["Client", "Server"]


# accept() failures that mean "out of resources for now", not "the listener is gone".
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF = 0.1
#: s a reconnecting client waits, at most, for the notice to its previous connection (``reject
#: replaced``) to be written, when it could not be written at once (TLS, a busy writer).
REPLACED_NOTICE_WAIT = 0.5
#: s a replaced connection still open may send nothing, with nothing left to handle, before it
#: is closed: a leftover that sends no more holds up its newcomer's events no longer.
REPLACED_QUIET = 0.1
# The share of handshake_timeout a held client waits for the server to be ready: refused a little
# before the client's own deadline, it learns why instead of timing out.
HOLD_SHARE = 0.9


class _Offer(NamedTuple):
    """A hello's ``acked``: the client's stream (``session``, ``sent``) and, when it
    acknowledges ours, the last seq (``last``) it delivered of our stream ``peer``."""

    session: str
    sent: int
    peer: str
    last: int | None


class Client(Peer):
    """A server's handle on one connected client. Handlers receive it as their last argument.

    ``client.emit(...)`` and ``client.request(...)`` are the same as ``server.emit(client, ...)``.
    """

    def __init__(self, server: Server, client_id: str, peer_address: Any) -> None:
        super().__init__(server._config, server._log, server._handlers, server._unhandled_names)
        self._server = server
        self._idle_timeout = server._config.idle_timeout
        self._watchdog = server._watchdog
        self.id = client_id
        #: The peer's socket address (``(host, port)`` for TCP; ``""`` for an unnamed Unix socket).
        self.peer_address = peer_address
        #: Over TLS with client certificates: the client's certificate as ``ssl`` decodes it
        #: (``peer_certificate["subject"]`` names the client); otherwise ``None``.
        self.peer_certificate: dict[str, Any] | None = None
        self._channel: Channel | None = None
        self._handler_extra = (self,)
        self._control_events = server._control_events
        # Its disconnect handlers run only if it went live (a newcomer held behind the
        # connections it replaced may be closed before: see Server._after_retiring).
        self._announced = True
        self._left: Flag | None = None  # set once it left, disconnect handlers done (retiring)
        self._replaced_open = False  # replaced while its input went on: it finishes till quiet

    def __repr__(self) -> str:
        return f"<Client {self.id!r}>"

    @property
    def connected(self) -> bool:
        return self._channel is not None

    def _input_ended(self) -> None:
        self._answers_ended = True  # (its connection's last: a client reconnects as another)

    def _handler_exited(self) -> None:
        self._server._exited_by_handler = True

    def _heartbeat_lost(self, message: str) -> None:
        self._counters.heartbeat_timeouts += 1
        self._server._counters.heartbeat_timeouts += 1
        self._server._bursts.warn("heartbeat timeout", message)

    def _idle_closed(self, message: str) -> None:
        self._server._counters.idle_closed += 1
        self._log.info(message)

    def _say_replaced(self) -> None:
        """A newer connection with this id replaces this one: tell the client (``reject
        replaced``), so that one that is still alive (another process with the same id) gives
        up instead of reconnecting and replacing the newer one in turn. Best effort: the
        newer connection waits at most ``REPLACED_NOTICE_WAIT`` for it to be written (a
        half-open leftover, the usual case, never reads it)."""
        try:
            frame = self._encoder.reject(
                "replaced", f"another connection with the id {self.id!r} took this one's place"
            )
        except IPCError:  # a codec without a handshake has no reject: the connection just ends
            return
        if not self._outbox.closed:
            self._outbox.put_reply(frame)  # (queued if it cannot be written at once)

    def _unwritable(self) -> None:
        """Nothing more reaches this client: its requests fail (``ConnectionLostError``) and its
        outbox closes now, so that a handler waiting for room to emit to it fails
        (``ClosedError``) instead of holding up the handling of what the client sent before it
        went."""
        self._requests.fail(
            ConnectionLostError(f"client {self.id!r} disconnected before the reply")
        )
        self._close_outbox(ClosedError(f"client {self.id!r} disconnected"))

    def _close_outbox(self, error: ClosedError) -> None:
        # Acknowledged events wait for the client's return, or are reported when given up.
        acked = self._acked
        left = self._outbox.close(error, events_kept=acked is not None and acked.active)
        if left:
            self._log.warning(f"{left} message(s) for {self.id!r} were not sent: it left")

    async def aclose(self) -> None:
        """Flush what is queued for this client and, in the acknowledged mode, wait for its
        acknowledgements (together bounded by ``close_timeout``), then close. What it did not
        acknowledge is reported (``Server.unacknowledged``). From a handler of this client's
        (an event's, a request's, a lifecycle handler): returns at once, and the close starts
        once the handler has returned (a request's reply is queued first, and flushed)."""
        if kept_until_handled(self._is, self._close_soon):
            return
        with anyio.move_on_after(self._config.close_timeout):
            await self._outbox.wait_flushed()
            if self._acked is not None and len(self._acked) and self._channel is not None:
                await self._acked.wait()
        if self._channel is not None:
            self._channel.abort()

    @property
    def _finishing(self) -> bool:
        """Whether its channel still handles what came before its input ended, or before a
        newcomer with its id replaced it."""
        channel = self._channel
        return channel is not None and (channel.input_ended or self._replaced_open)

    def _close_soon(self) -> None:
        group = self._server._task_group
        if group is not None and self._channel is not None:
            group.start_soon(self.aclose)


def _lost(exc: BaseException) -> str:
    """Why a connection ended during its handshake, never empty (anyio's BrokenResourceError and
    EndOfStream carry no message: the reason is in their cause)."""
    if isinstance(exc, anyio.EndOfStream):
        return "the peer closed the connection"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, anyio.BrokenResourceError):
        return f"the connection broke ({cause!r})" if cause is not None else "the connection broke"
    return str(exc) or repr(exc)


def _timed_out(session: Session) -> str:
    """What a handshake that ran out of ``handshake_timeout`` lacked."""
    if session.hello is not None:  # a shared key's: the proof, after the hello
        return "the hello came, but no proof of the shared key within handshake_timeout"
    return "no hello within handshake_timeout"


class Server(HandlerMethods):
    """A listening socket and its clients. Made by ``Actor.serve()`` / ``Actor.serve_net()``."""

    _lifecycle = frozenset({"connect", "disconnect"})

    def __init__(
        self,
        actor_id: str,
        config: Config,
        log: ActorLog,
        transport: Transport,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._id = actor_id
        self._watchdog = watchdog  # keeps time for the clients' heartbeats
        self._config = config
        self._log = log
        self._transport = transport
        self._handlers = Handlers()
        self._codec = config.wire_codec
        self._encoder = self._codec.encoder(config.limits)
        self._accepted = 0  # connections accepted: numbers clients when the codec names none
        self._clients: dict[str, Client] = {}
        # By id, the latest connection whose handshake ended: the one to keep (see _run_client).
        self._newest: dict[str, Client] = {}
        # Names of the owner's own events, handled as they arrive (see Peer._control_events):
        # a supervisor's children's reports, which must not wait behind a retiring connection.
        self._control_events: frozenset[str] = frozenset()
        # By id, the connections a newcomer replaced that have not ended yet, oldest first:
        # they finish handling what they got before the newcomer's events (_after_retiring).
        self._retiring: dict[str, list[Client]] = {}
        # Unfinished handshakes, oldest first: the scope that drops each (dicts keep order).
        self._handshakes: dict[anyio.CancelScope, bool] = {}  # (a value: still there)
        self._expected_handshakes = 0  # beyond max_handshakes: see _expect_handshakes
        # While held (see _hold()): set once ready; and the clients waiting for it, by id.
        self._ready: anyio.Event | None = None
        self._held: dict[str, anyio.CancelScope] = {}
        # Who may take an id (a supervisor's server: a child's, only with its incarnation's
        # token): called with the id and the hello's token, says why not, or None.
        self._claims: Callable[[str, Any], str | None] | None = None
        self._bursts = WarningBursts(log)
        self._counters = ServerCounters()
        self._unhandled_names: set[str] = set()  # shared by the clients (see Peer._unhandled)
        # Clients whose comings and goings someone else logs at INFO (a supervisor its children:
        # "ready" and "stopped"); here they go to DEBUG, so a worker's lifecycle is not 4 lines.
        self._logged_elsewhere: Callable[[str], bool] = lambda id: False
        self._listening: Listener | None = None
        self._task_group: TaskGroup | None = None
        self._owner_group: TaskGroup | None = None  # the actor's, which _start was given
        self._closing = False
        # A handler's exit or interrupt left one of its channels: it is ending the actor (and,
        # unless caught, the program).
        self._exited_by_handler = False
        self._stopped = anyio.Event()
        # Acknowledged mode: what each sender session delivered here; our streams of events
        # to the clients that acknowledge them; what was given up (see ``unacknowledged``).
        self._sessions = ReceiverSessions() if config.acked != "off" else None
        self._streams = ClientStreams(self._encoder.kept_frame)
        self._unacknowledged: dict[str, list[tuple[int, str]]] = {}
        self._keeping: dict[str, anyio.CancelScope] = {}  # by client id: see _keep

    def __repr__(self) -> str:
        return f"<Server {self._id!r} {self._transport.kind} {self.address!r}>"

    @property
    def address(self) -> Address:
        """The socket path (Unix) or ``(host, port)`` (TCP, TLS, UDP) this server listens on."""
        if self._listening is not None:
            return self._listening.address
        return self._transport.address

    @property
    def port(self) -> int:
        """The TCP port this server listens on (TCP and TLS; with port 0, the one picked):
        ``address[1]``, typed. A Unix socket server has none: :class:`IPCError`."""
        address = self.address
        if isinstance(address, str):
            raise IPCError(f"a Unix socket server has no port; its address is {address!r}")
        return address[1]

    @property
    def clients(self) -> Mapping[str, Client]:
        """Connected clients by id (a live read-only view)."""
        return MappingProxyType(self._clients)

    def statistics(self) -> ServerStatistics:
        """A snapshot of this server's counters."""
        counters = self._counters
        return ServerStatistics(
            clients=len(self._clients),
            handshaking=len(self._handshakes),
            held=len(self._held),
            refused_busy=counters.refused_busy,
            handshakes_dropped=counters.handshakes_dropped,
            handshakes_failed=counters.handshakes_failed,
            slow_consumers=counters.slow_consumers,
            broadcasts_dropped=counters.broadcasts_dropped,
            heartbeat_timeouts=counters.heartbeat_timeouts,
            idle_closed=counters.idle_closed,
            events_unhandled=counters.events_unhandled
            + sum(client._counters.events_unhandled for client in self._clients.values()),
            **self._streams.totals(),
        )

    # --- sending ------------------------------------------------------------------------------

    def _client(self, client: Client | str) -> Client:
        if isinstance(client, Client):
            self._check_open()
            if client._server is not self:
                raise UnknownPeerError(
                    f"client {client.id!r} is a client of server {client._server._id!r}, not of "
                    f"{self._id!r}: send through the server it connected to"
                )
            return client  # gone, its own emit and request say how (as if called on it)
        if type(client) is not str:
            raise ConfigError(f"a client is a Client or a client's id (a str), got {client!r:.80}")
        found = self._clients.get(client)
        if found is None:
            self._check_open()
            raise UnknownPeerError(f"no client with id {client!r} is connected to {self._id!r}")
        return found

    def _check_open(self) -> None:
        """Raise :class:`ClosedError` once the server is closed for good (while it closes,
        what it still holds goes on as before)."""
        if self._stopped.is_set():
            raise ClosedError(f"server {self._id!r} is closed")

    async def emit(self, client: Client | str, event: str, data: Any = None) -> None:
        """Send ``event`` to one of this server's clients, given by its handle or its id.
        Raises :class:`UnknownPeerError` for an id no client has (or another server's client),
        :class:`ClosedError` once the client is gone or the server closed (a request to a
        client that left: :class:`ConnectionLostError`, as its handle's own does)."""
        await self._client(client).emit(event, data)

    async def request(
        self, client: Client | str, event: str, data: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Ask one of this server's clients; returns its handler's answer (see
        ``Connection.request``). Raises as :meth:`emit` does for the client."""
        return await self._client(client).request(event, data, timeout=timeout)

    async def broadcast(self, event: str, data: Any = None) -> None:
        """Send ``event`` to every connected client, encoded once.

        Clients with room in their outbox get it at once (with one loop pass, for the writers
        and other tasks, each time 64 KiB were queued for a client), in a batch of events for
        those that take batches. A client whose outbox is full still gets it while the outbox
        holds at most twice ``max_outbox_bytes`` (room to catch up after a burst; in the
        acknowledged mode, what it holds unacknowledged counts too); past that it
        is handled as ``Config.slow_consumer`` says: disconnected (the default) or skipped for
        this frame, without waiting for it; or, with ``"wait"``, waited for (at once). A
        broadcast that no client took gives the loop one pass (a loop of them would hold up
        the rest). Raises :class:`ClosedError` once the server is closed.
        """
        check_event_name(event, self._codec.peer_reserved)
        self._check_open()
        plain: Frame | None = None  # encoded once for all plain clients
        item: bytes | None = None  # likewise, for those that take batches (see _outbox)
        itemized = False
        make: Callable[[int], Frame] | None = None  # data encoded once for all acked ones
        policy = self._config.slow_consumer
        waiting: list[Client] = []
        behind = False
        queued = False  # for anyone: else the loop gets its pass here (see the end)
        # The last frame made for an acked client (its seq, size): clients whose streams are
        # at the same seq (those that joined together and get the same events) share it.
        made_seq = 0
        made: Frame = b""
        made_size = 0
        entry: Entry | None = None  # and the last store entry made: shared likewise
        for client in list(self._clients.values()):
            outbox = client._outbox
            if outbox.closed:
                continue  # leaving
            acked = client._acked
            seq = 0
            if acked is None or not acked.active:
                if outbox.batches is not None:
                    if not itemized:
                        item, itemized = self._encoder.event_item(event, data), True
                    if item is not None and outbox.put_item_if_room(item):
                        queued = True
                        if outbox.turn_due:
                            outbox.turn_given()
                            behind = True  # (as below)
                        continue
                if plain is None:
                    plain = self._encoder.event(event, data)
                frame = plain
                size = len(frame) if type(frame) is bytes else frame_size(frame)
            else:  # acknowledged: its own sequence number (only the tail differs)
                seq = acked.seq + 1
                if outbox.batches is not None:
                    if not itemized:
                        item, itemized = self._encoder.event_item(event, data), True
                    if item is not None:
                        position = outbox.put_item_if_room(item, seq)
                        if position:  # kept as its item (see Encoder.kept_frame)
                            queued = True
                            if entry is not None and entry[4] == position and entry[0] == seq:
                                acked.keep(entry)  # (the same seq: the same item)
                            else:
                                entry = acked.stored(seq, event, item, len(item), position)
                            if outbox.turn_due:
                                outbox.turn_given()
                                behind = True  # (as below)
                            continue
                if seq == made_seq:
                    frame, size = made, made_size
                else:
                    if make is None:
                        make = self._encoder.sequencer(event, data)
                    frame = made = make(seq)
                    size = made_size = len(frame) if type(frame) is bytes else frame_size(frame)
                    made_seq = seq
            refused = client._encoder.refusal(frame)
            if refused is not None:
                self._counters.broadcasts_dropped += 1
                self._bursts.warn(
                    "broadcast dropped",
                    f"client {client.id!r} announced {client._encoder.peers_limits} in its "
                    f"handshake: a broadcast it would refuse was not sent to it ({refused})",
                )
                continue
            if outbox.has_room(size):
                pass
            elif policy == "wait":
                waiting.append(client)
                continue
            elif (pending := outbox.used + outbox.held) <= outbox.max_bytes or (
                pending + size <= 2 * outbox.max_bytes
            ):
                # Room to catch up after a burst (its writer may be mid-write). What an acked
                # client holds unacknowledged counts: it reads, but does not keep up.
                behind = True
            elif policy == "drop":
                self._counters.broadcasts_dropped += 1
                self._bursts.warn(
                    "broadcast dropped",
                    f"client {client.id!r} is too slow to read: a broadcast was not sent to it "
                    "(slow_consumer='drop')",
                )
                continue
            else:
                self._disconnect_slow(client)
                continue
            position = outbox.put_nowait(frame, size)
            queued = True
            if outbox.turn_due:
                outbox.turn_given()
                behind = True  # the loop is due a pass (see _outbox): the writers' turn too
            if seq:
                assert acked is not None
                if entry is not None and entry[4] == position and entry[0] == seq:
                    acked.keep(entry)  # (the same seq: the same frame)
                else:
                    entry = acked.stored(seq, event, frame, size, position)
        if behind or not (queued or waiting):
            # Let the writers run: a burst is not a stall. And a broadcast that nobody took
            # (no client, all leaving as the server closes, every one too slow) is the loop's
            # turn too: a loop of them would hold up the rest for ever, the close included.
            await anyio.lowlevel.checkpoint()
        for client in waiting:
            try:
                acked = client._acked
                if acked is not None and acked.active and make is not None:
                    await client._put_sequenced(acked, event, make)
                else:
                    if plain is None:
                        plain = self._encoder.event(event, data)
                    await client._outbox.put(plain)
            except ClosedError:
                pass  # it left meanwhile: broadcast reaches those connected

    def _disconnect_slow(self, client: Client) -> None:
        outbox = client._outbox
        self._counters.slow_consumers += 1
        self._bursts.warn(
            "slow consumer",
            f"disconnecting client {client.id!r}: too slow to read ({outbox.used} bytes wait "
            f"for it, max_outbox_bytes={outbox.max_bytes}; slow_consumer='disconnect')",
        )
        outbox.close(ClosedError(f"client {client.id!r} was disconnected: too slow to read"))
        if client._channel is not None:
            client._channel.abort()

    # --- serving ------------------------------------------------------------------------------

    def _serves(self, peer: Peer) -> bool:
        return isinstance(peer, Client) and peer._server is self

    def _close_soon(self) -> None:
        if self._owner_group is not None and not self._closing:
            self._owner_group.start_soon(self.aclose)

    async def _start(self, task_group: TaskGroup) -> None:
        self._owner_group = task_group  # (a close kept for after a reply starts there)
        backlog = min(self._config.max_connections + self._config.max_handshakes, 4096)
        self._listening = await self._transport.listen(backlog)
        try:
            await task_group.start(self._serve)
        except BaseException:
            await self._listening.aclose()
            raise
        self._log.info(f"serving on {self._transport.kind} {self.address}")

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        assert self._listening is not None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_status.started()
                await self._accept_loop(task_group)
        finally:
            try:
                await self._listening.aclose()  # removes the socket file, even when cancelled
            finally:
                for client_id, sender in self._streams:  # kept for clients that left: gone
                    self._give_up(client_id, sender, "the server closed")
                self._log.info("server closed")
                self._stopped.set()

    async def _accept_loop(self, task_group: TaskGroup) -> None:
        assert self._listening is not None
        listening = self._listening
        warned = False
        while True:
            try:
                stream, peer_address = await listening.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:
                if self._closing:
                    return
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                if not warned:
                    self._log.warning(f"cannot accept connections ({exc}); retrying")
                    warned = True
                await anyio.sleep(_ACCEPT_BACKOFF)
                continue
            warned = False
            task_group.start_soon(self._handle, stream, peer_address)

    async def _handle(self, stream: ByteStream, peer_address: Any) -> None:
        """One accepted connection, from its handshake to its goodbye. Whatever goes wrong with
        it closes only it: nothing it raises reaches the server's task group."""
        try:
            await self._admit(stream, peer_address)
        except Exception as exc:
            self._log.exception(f"connection from {peer_address!r} failed; closed it", exc)

    async def _admit(self, stream: ByteStream, peer_address: Any) -> None:
        try:
            await self._admit_stream(stream, peer_address)
        except BaseException:
            # Cancelled (the server is closing) or failed before a channel owned the stream.
            await close_now(stream)
            raise

    async def _admit_stream(self, stream: ByteStream, peer_address: Any) -> None:
        codec = self._codec
        session = Session(
            codec,
            self._config.limits,
            Role.SERVER,
            self._encoder,
            self._id,
            auth_key=self._config.auth_key_bytes,
        )
        now = anyio.current_time()
        # Held before a welcome, for what the client's handshake allows; without a handshake
        # (node-ipc's) the client sends at once, and a refusal would drop what it sent unread.
        held_until = now + self._config.handshake_timeout * HOLD_SHARE if codec.handshake else inf
        # One scope for both ends of a handshake: its deadline, and a newer connection's need
        # for its place (see _enter_handshake).
        scope = self._enter_handshake(now + self._config.handshake_timeout)
        dropped = False
        client_id: str | None = None
        offer: _Offer | None = None
        shm: int | None = None
        batches: EventBatches | None = None
        frame: Any = None  # the largest frame the client takes, if its hello said
        objects: Any = None  # and the objects it decodes from one
        token: Any = None  # and what proves it may take its id (see _claims)
        # Until the transport's own handshake is done (TLS), nothing of ours can be written:
        # a plain reject inside a TLS session reads to the client as a broken TLS server.
        secured = self._transport.kind != "tls"
        try:
            with scope:
                stream = await self._transport.accepted(stream)
                secured = True
                if codec.handshake:
                    hello = await accept_handshake(stream, session)
                    offer = self._acked_offer(hello.extra.get("acked"))
                    shm = shared_offer(hello.extra.get("shm"))
                    batches = codec.event_batches(hello.extra.get("batch"), self._config.limits)
                    frame = hello.extra.get("frame")
                    objects = hello.extra.get("objects")
                    token = hello.extra.get("token")
                    client_id = hello.id
                else:  # nothing on the wire names the client: the server does
                    self._accepted += 1
                    client_id = codec.client_id(self._accepted, peer_address)
        except Refusal as exc:
            self._handshake_failed(f"refusing {peer_address!r} ({exc.reason}): {exc.message}")
            await self._refuse(stream, session, exc.reason, exc.message)
            return
        except (TimeoutError, ProtocolError) as exc:
            reason = exc.reject_reason if isinstance(exc, ProtocolError) else "timeout"
            message = str(exc) or _timed_out(session)
            self._handshake_failed(f"handshake with {peer_address!r} failed: {message}")
            if secured or isinstance(exc, ProtocolError):  # (a plain client: told in plain)
                await self._refuse(stream, session, reason, message)
            else:
                await close_now(stream)
            return
        except SaidNothing:  # (not a failed handshake: a liveness check, say)
            self._log.debug(f"a connection from {peer_address!r} closed without a word")
            await close_now(stream)
            return
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self._handshake_failed(f"handshake with {peer_address!r} failed: {_lost(exc)}")
            await close_now(stream)
            return
        finally:
            dropped = not self._handshakes.pop(scope, False)
            if client_id is None:
                # Its input is over: the frame in progress (up to 64 KiB) goes now, not when
                # the frames above are freed (on Trio, a reference cycle with the cancellation
                # that dropped it keeps them until a garbage collection).
                session.end_input()
        if client_id is None:
            if dropped:  # to admit a newer connection (see _enter_handshake), or closing
                await close_now(stream)
            elif not secured:  # the deadline passed in the TLS handshake: we can only hang up
                timeout = self._config.handshake_timeout
                message = f"no TLS handshake within handshake_timeout ({timeout:g} s)"
                self._handshake_failed(f"handshake with {peer_address!r} failed: {message}")
                await close_now(stream)
            else:  # the deadline passed
                message = _timed_out(session)
                self._handshake_failed(f"handshake with {peer_address!r} failed: {message}")
                await self._refuse(stream, session, "timeout", message)
            return
        refusal = self._claims(client_id, token) if self._claims is not None else None
        if refusal is not None:
            self._handshake_failed(f"refusing {client_id!r} from {peer_address!r}: {refusal}")
            await self._refuse(stream, session, "id", refusal)
            return
        if not await self._wait_ready(stream, session, client_id, held_until):
            return
        previous = self._clients.get(client_id)
        # A newcomer that replaces its id's connection takes its place: a live one is aborted
        # at once, one whose input ended finishes within close_timeout (a client back at
        # once, a restarted child). Any other adds one: a new client, or another connection of
        # an id that already has one finishing (a storm of reconnects).
        if (
            previous is None or (previous._finishing and client_id in self._retiring)
        ) and self._held_connections() >= (limit := self._config.max_connections):
            self._log.debug(f"refusing {client_id!r}: max_connections={limit}")
            self._counters.refused_busy += 1
            await self._refuse(stream, session, "busy", f"{self._id!r} is at max_connections")
            return
        client = Client(self, client_id, peer_address)
        if self._transport.kind == "tls":  # (extra() on a plain stream: ~5 us for nothing)
            client.peer_certificate = stream.extra(TLSAttribute.peer_certificate, None)
        if (
            offer is None  # (acknowledged resends and shared memory's places do not mix)
            and shm is not None
            and self._config.max_shared_bytes
            and can_pass_fds(stream)
        ):
            client._shared_accept = shm
        client._outbox.rebatch(batches)
        client._keep_to_peer(frame, objects)  # (its outbox is new: kept for it, below)
        overtaken = self._newest.get(client_id)
        if overtaken is not None and previous is None:
            previous = overtaken  # (still waiting to replace; the same notice, in its handshake)
        self._newest[client_id] = client
        try:
            await self._run_client(client, stream, session, previous, offer)
        finally:
            if self._newest.get(client_id) is client:
                del self._newest[client_id]

    async def _run_client(
        self,
        client: Client,
        stream: ByteStream,
        session: Session,
        previous: Client | None,
        offer: _Offer | None = None,
    ) -> None:
        if previous is not None:
            self._log.info(f"{client.id!r} reconnected; closing its previous connection")
            channel = previous._channel
            if channel is not None:
                # Until it ended, whoever replaces it: this one's events wait for its own.
                retiring = self._retiring.setdefault(client.id, [])
                if previous not in retiring:  # (two newcomers may replace it)
                    retiring.append(previous)
                    previous._left = Flag()
            if channel is not None and channel.input_ended:
                # Nothing reads it: a notice (or anything) written to it would fail, and a
                # failed write would cut short its handling of what it got (Channel._on_lost).
                channel._stop_writing()
            else:
                previous._say_replaced()
                if not previous._outbox.flushed and channel is not None:
                    # Not written at once (a TLS stream, or a busy writer): the writer takes
                    # the notice first (priority lane); a leftover that reads nothing costs
                    # the wait.
                    with anyio.move_on_after(REPLACED_NOTICE_WAIT):
                        await previous._outbox.wait_flushed()
            previous._outbox.close(ClosedError(f"client {client.id!r} reconnected"))
            if channel is not None and not channel.input_ended:
                # Its client may have closed it behind a backlog we have not read yet (its end
                # of stream behind it): what it sent is handled too, up to its end or until it
                # falls quiet (a half-open leftover: at once), within close_timeout.
                previous._replaced_open = True
            if self._newest.get(client.id) is not client:  # a newer one came meanwhile
                message = f"another connection with the id {client.id!r} took this one's place"
                await self._refuse(stream, session, "replaced", message)
                return
        if self._closing:  # (it took its list of clients while we waited for the notice)
            await close_now(stream)
            return
        predecessors = list(self._retiring.get(client.id, ()))
        connect_handlers = bool(self._handlers.get("connect"))
        opening = None
        if predecessors or connect_handlers:
            client._announced = not predecessors  # (no disconnect for a connect never made)

            async def opening() -> None:
                if predecessors:
                    await self._after_retiring(predecessors)
                    client._announced = True
                if connect_handlers:
                    await self._handlers.call("connect", (client,), self._log)

        # After the previous connection's outbox is closed: our events move to this one.
        extra: dict[str, Any] = {}
        if offer is not None:
            extra["acked"] = self._welcome_acked(client, offer)
        if client._shared_accept is not None:
            extra["shm"] = self._config.max_shared_bytes
        if self._codec.handshake:  # the largest frame we take, its objects (protocol.md 3.4)
            extra["frame"] = self._config.max_frame_size
            extra["objects"] = self._config.max_decoded_objects
        if client._outbox.batches is not None:  # the hello announced what it takes: so do we
            batch_limit = self._codec.batch_limit(self._config.limits)
            if batch_limit:
                extra["batch"] = batch_limit
                session.accept_batches(batch_limit)
        welcome = b"" if session.is_open else session.accept(**extra)  # lifts the frame limit
        client._channel = channel = Channel(stream, session, client, opening)
        # Registered before the welcome: a client that knows it is connected is in `clients`.
        self._clients[client.id] = client
        missing = session.missing()
        if welcome and missing is not None and missing <= 0:
            # A whole frame came behind the hello (connect_to(wait=False)): the welcome leads
            # the priority lane, and the first replies go out with it, in one write.
            client._outbox.put_reply(welcome)
            welcome = b""
        try:
            if welcome:
                await stream.send(welcome)
        except BaseException as exc:  # gone, or cancelled because the server is closing
            client._channel = None
            self._retired(client)
            if self._clients.get(client.id) is client:
                del self._clients[client.id]
            client._outbox.close(ClosedError(f"client {client.id!r} left in its handshake"))
            self._client_left(client)
            await close_now(stream)
            if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError):
                return
            raise
        log_lifecycle = self._log.debug if self._logged_elsewhere(client.id) else self._log.info
        log_lifecycle(f"client {client.id!r} connected")
        try:
            await channel.run()  # the connect handlers first, while it reads and writes
        except ProtocolError as exc:
            self._log.warning(f"closing connection of {client.id!r}: {exc}")
        finally:
            client._channel = None
            self._retired(client)
            if self._clients.get(client.id) is client:
                del self._clients[client.id]
            self._counters.events_unhandled += client._counters.events_unhandled
            client._close_outbox(ClosedError(f"client {client.id!r} disconnected"))
            self._client_left(client)
            if self._closing:
                client._requests.fail(ClosedError(f"server {self._id!r} closed"))
            else:
                client._requests.fail(
                    ConnectionLostError(f"client {client.id!r} disconnected before the reply")
                )
            log_lifecycle(f"client {client.id!r} disconnected")
            try:
                if client._announced:
                    await client._call_lifecycle("disconnect", client, shielded=True)
            finally:
                if client._left is not None:
                    client._left.set()

    async def _after_retiring(self, predecessors: list[Client]) -> None:
        """The opening of a newcomer that replaced connections with its id (``predecessors``,
        oldest first): return once they ended. One whose input ended (the client closed it,
        or it broke) finishes handling what it got, within ``close_timeout``, after which its
        handlers still running are cancelled (in the acknowledged mode their event comes
        again, flagged redelivered: the welcome did not count it). So one id's events are
        handled one at a time, in order, across its connections, and the newcomer's welcome
        waits for none of it."""
        wait = self._config.close_timeout
        for previous in predecessors:
            channel = previous._channel
            if channel is not None:
                with anyio.move_on_after(wait) as waited:
                    if previous._replaced_open:
                        await channel.wait_ended_or_quiet(REPLACED_QUIET)
                    else:
                        # Its events; not its request handlers, which the abort below ends
                        # (no reply could reach its client, and what a newcomer sends next
                        # must not wait on them).
                        await channel.wait_dispatched()
                why = "a newer connection with its id replaced the one they came on"
                if waited.cancelled_caught:
                    why += f", which did not handle them within close_timeout ({wait:g} s)"
                channel.abort(why)
                with anyio.move_on_after(wait):  # (cancelled: at once, but shielded handlers)
                    await channel.wait_ended()
            if previous._left is not None:
                with anyio.move_on_after(wait):
                    await previous._left.wait()  # its disconnect handlers, before our connect

    def _held_connections(self) -> int:
        """Clients, and connections replaced that still finish what they got."""
        return len(self._clients) + sum(map(len, self._retiring.values()))

    def _retired(self, client: Client) -> None:
        """``client``'s connection, replaced by a newcomer, ended."""
        retiring = self._retiring.get(client.id)
        if retiring is not None and client in retiring:
            retiring.remove(client)
            if not retiring:
                del self._retiring[client.id]

    def _acked_offer(self, offer: Any) -> _Offer | None:
        """The client's acknowledged-mode offer from its hello, if both sides have the mode.
        Raises :class:`Refusal`."""
        if offer is None:
            if self._config.acked == "require":
                raise Refusal(
                    "acked",
                    f"{self._id!r} requires acknowledged events: set Config.acked='on' (or "
                    "'require') on the client",
                )
            return None
        if self._sessions is None:
            return None  # we lack the mode: the welcome says nothing of it
        get = offer.get if type(offer) is dict else {}.get
        session, sent, peer, last = get("session"), get("sent"), get("peer", ""), get("last")
        if (
            type(session) is not str
            or not 0 < len(session) <= 64
            or type(sent) is not int
            or sent < 0
            or type(peer) is not str
            or len(peer) > 64
            or not (last is None or (type(last) is int and last >= 0))
        ):
            raise Refusal("protocol", f"malformed acked offer in hello: {offer!r:.80}")
        return _Offer(session, sent, peer, last)

    def _welcome_acked(self, client: Client, offer: _Offer) -> dict[str, Any]:
        """Join ``client`` to its streams both ways; returns the welcome's ``acked``."""
        assert self._sessions is not None
        client._receiver = receiver = self._sessions.join(offer.session, offer.sent)
        last = receiver.last
        for previous in self._retiring.get(client.id, ()):
            if previous._receiver is receiver and previous._ack_in_flight == last:
                last -= 1  # its handlers still run, and may yet be cancelled: not delivered
        answer: dict[str, Any] = {"last": last}
        if offer.last is not None:  # the client acknowledges our events too
            keeping = self._keeping.pop(client.id, None)
            if keeping is not None:
                keeping.cancel()  # it is back
            kept = self._streams.sender_of(client.id)
            # What it would refuse now goes not (see Peer._keep_to_peer, which set its limit).
            if kept is not None and client._encoder.peers_limits:
                refused = kept.drop_refused(client._encoder.refusal)
                if refused:
                    self._reported(client.id, refused)
                    self._log.warning(
                        f"{len(refused)} event(s) kept for client {client.id!r} (seq "
                        f"{refused[0][0]}..{refused[-1][0]}) are beyond the "
                        f"{client._encoder.peers_limits} its handshake announced: given up, "
                        "not sent; see Server.unacknowledged"
                    )
            sender, sent = self._streams.join(
                client.id, offer.session, offer.peer, offer.last, client._outbox
            )
            client._acked = sender
            answer.update(session=sender.session, sent=sent)
        return answer

    def _client_left(self, client: Client) -> None:
        """Acknowledged mode: keep the events ``client`` did not acknowledge for its return
        (``acked_keep`` seconds), or report them now if the server is closing."""
        if client._acked is None:
            return
        kept = self._streams.left(client.id, client._outbox)
        if kept is None:
            return
        if self._closing or self._task_group is None:
            self._give_up(client.id, kept, "the server closed")
            return
        # At most max_connections clients' streams are kept away at once (what they hold is
        # bounded as a connected client's is): one more gives up the one away the longest.
        most = self._config.max_connections
        while len(self._keeping) >= most:
            oldest = next(iter(self._keeping))
            self._keeping.pop(oldest).cancel()
            sender = self._streams.sender_of(oldest)
            if sender is not None:
                self._give_up(oldest, sender, f"more than max_connections={most} were away")
        keeping = self._keeping[client.id] = anyio.CancelScope()  # (counted at once)
        self._task_group.start_soon(self._keep, client.id, kept, keeping)

    async def _keep(self, client_id: str, sender: AckedSender, scope: anyio.CancelScope) -> None:
        """Give up on ``sender`` after ``acked_keep`` unless its client comes back first (which
        cancels ``scope``) or the server closes (which reports it, see ``aclose``)."""
        with scope:
            try:
                await anyio.sleep(self._config.acked_keep)
            finally:
                if self._keeping.get(client_id) is scope:
                    del self._keeping[client_id]
            keep = self._config.acked_keep
            self._give_up(client_id, sender, f"it did not come back within acked_keep={keep:g} s")

    def _give_up(self, client_id: str, sender: AckedSender, why: str) -> None:
        events = self._streams.give_up(client_id, sender)
        if not events:
            return
        self._reported(client_id, events)
        self._log.warning(
            f"{len(events)} event(s) to client {client_id!r} were never acknowledged (seq "
            f"{events[0][0]}..{events[-1][0]}): {why}; see Server.unacknowledged"
        )

    def _reported(self, client_id: str, events: list[tuple[int, str]]) -> None:
        """``events`` to ``client_id`` were given up: listed after those given up before."""
        self._unacknowledged[client_id] = [*self._unacknowledged.pop(client_id, ()), *events]
        while len(self._unacknowledged) > SESSIONS_KEPT:  # (the client given up longest ago)
            del self._unacknowledged[next(iter(self._unacknowledged))]

    @property
    def unacknowledged(self) -> Mapping[str, list[tuple[int, str]]]:
        """Acknowledged mode: by client id, the ``(seq, event)`` of the events to that client
        given up without an acknowledgement (it left and did not come back within
        ``acked_keep``, or the server closed first; or it came back taking a smaller
        ``max_frame_size`` than they need); they may or may not have been handled. Every
        report of each client, in the order given up (a live read-only view)."""
        return MappingProxyType(self._unacknowledged)

    def _hold(self) -> None:
        """Welcome no client until :meth:`start` (see the module's invariants). Called before
        the server starts, so that no client is welcomed early."""
        if self._ready is None:
            self._ready = anyio.Event()

    def start(self) -> None:
        """Welcome clients, from a server served with ``start=False`` (held until now: their
        handshakes wait, within ``handshake_timeout``); nothing once started."""
        ready, self._ready = self._ready, None
        if ready is not None:
            if self._held:
                self._log.debug(f"ready: welcoming {len(self._held)} held client(s)")
            ready.set()

    async def _wait_ready(
        self, stream: ByteStream, session: Session, client_id: str, deadline: float
    ) -> bool:
        """Hold a client whose handshake is done until the server is ready. Returns whether
        to welcome it; if not, it was refused (or dropped for a newer attempt) and closed."""
        ready = self._ready
        if ready is None:
            return True
        older = self._held.pop(client_id, None)
        if older is not None:
            older.cancel()  # the client makes one attempt at a time: it gave up on that one
        elif (
            client_id not in self._clients
            and len(self._clients) + len(self._held) >= self._config.max_connections
        ):
            self._counters.refused_busy += 1
            await self._refuse(stream, session, "busy", f"{self._id!r} is at max_connections")
            return False
        self._log.debug(f"holding {client_id!r} until {self._id!r} is ready")
        scope = self._held[client_id] = anyio.CancelScope(deadline=deadline)
        try:
            with scope:
                await ready.wait()
        finally:
            replaced = self._held.get(client_id) is not scope
            if not replaced:
                del self._held[client_id]
        if replaced:
            await close_now(stream)
            return False
        if self._closing:
            message = f"{self._id!r} closed before it was ready"
        elif not ready.is_set():
            message = (
                f"{self._id!r} is not ready yet (still starting after "
                f"{HOLD_SHARE:g} x handshake_timeout={self._config.handshake_timeout:g} s)"
            )
        else:
            return True
        self._counters.refused_busy += 1
        self._bursts.warn("client held too long", f"refusing {client_id!r} (busy): {message}")
        await self._refuse(stream, session, "busy", message)
        return False

    def _enter_handshake(self, deadline: float) -> anyio.CancelScope:
        """Count a connection in as handshaking; returns the scope that ends it at
        ``deadline`` or drops it. At ``max_handshakes``, the oldest unfinished handshake is
        dropped to make room (a handshake is dropped by taking it out of ``_handshakes`` and
        cancelling its scope, here or as the server closes)."""
        budget = self._config.max_handshakes + self._expected_handshakes
        if len(self._handshakes) >= budget:
            oldest = next(iter(self._handshakes))
            del self._handshakes[oldest]
            oldest.cancel()
            self._counters.handshakes_dropped += 1
            self._bursts.warn(
                "handshakes dropped",
                f"{budget} connections are in their handshake (max_handshakes, plus any "
                "expected): dropping the oldest to admit new ones",
            )
        scope = anyio.CancelScope(deadline=deadline)
        self._handshakes[scope] = True
        return scope

    def _expect_handshakes(self, count: int) -> None:
        """``count`` more (or, negative, fewer) connections are expected to come and handshake:
        the budget of unfinished handshakes grows by that many meanwhile (a supervisor counts
        its children from their start until they are ready or gone)."""
        self._expected_handshakes += count
        assert self._expected_handshakes >= 0

    def _handshake_failed(self, message: str) -> None:
        self._counters.handshakes_failed += 1
        self._bursts.warn("handshake failed", message)

    async def _refuse(
        self, stream: ByteStream, session: Session, reason: str, message: str
    ) -> None:
        """Send ``reject`` (if the codec has a handshake to send it in), then close."""
        if not self._codec.handshake:
            await close_now(stream)
            return
        with anyio.move_on_after(1):
            try:
                await stream.send(session.reject(reason, message))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        await close_now(stream)

    async def aclose(self) -> None:
        """Stop accepting, flush to every client (bounded by ``close_timeout``), close them all,
        and remove the socket file. From a handler of one of its clients' (an event's, a
        request's, a lifecycle handler): returns at once, and the close starts once the handler
        has returned (a request's reply is queued first, and flushed). A close cancelled by
        its caller cuts what it had left to flush at once; a later one returns once the
        server has stopped."""
        if kept_until_handled(self._serves, self._close_soon):
            return
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        if self._task_group is None:
            return  # never started
        try:
            if self._listening is not None:
                await self._listening.aclose()
            handshakes, self._handshakes = self._handshakes, {}
            for scope in handshakes:  # nothing to flush to them: drop them now
                scope.cancel()
            if self._ready is not None:
                self._ready.set()  # the held clients are refused (see _wait_ready)
            for keeping in self._keeping.values():
                keeping.cancel()  # their events are reported as it stops (see _serve)
            for retiring in self._retiring.values():  # (no longer in clients: replaced)
                for client in retiring:
                    if client._channel is not None:
                        client._channel.abort()
            async with anyio.create_task_group() as task_group:
                for client in list(self._clients.values()):
                    task_group.start_soon(client.aclose)
            with anyio.move_on_after(self._config.close_timeout):
                await self._stopped.wait()
        finally:
            # What is left is cut now; also when this close is cancelled while it flushed
            # (a later close waits for the stop, as one made meanwhile does).
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
        await self._stopped.wait()
