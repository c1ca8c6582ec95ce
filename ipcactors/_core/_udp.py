"""UDP: a server on a port, peers known by address, one datagram per message.

UDP has no connections, no handshake and no delivery guarantee: a datagram is what the codec's
datagram encoder makes (msgpack: one body, no length prefix; a codec may put several messages in
one), events may be lost or reordered by the network, and a request may time out.

Invariants:
- A datagram too large to send is a :class:`DatagramTooLargeError` before anything is sent, on
  every backend (anyio's asyncio backend would drop it silently, trio would raise late).
- An inbound datagram that is malformed (any of its messages) or oversized is dropped and
  counted (see :meth:`DatagramServer.statistics`), never half decoded. An oversized reply to
  one of our requests (its kind and id read from its first bytes, from the address asked)
  fails that request at once.
- A peer takes a place in the table only once it sent a valid message from an address an
  answer can reach (not port 0, not a broadcast address): junk datagrams (from however many
  addresses) cannot fill the table and lock real peers out.
- A reply resolves one of our requests only if it comes from the address the request went to.
- What ``emit``/``request`` are given is checked before sending (``_address``): an address the
  system would refuse is a :class:`ConfigError` there, since asyncio reports a refused send to
  no one; a send refused later is one too where the backend says so (Trio, uvloop).
- The peer table is bounded by ``max_connections``; a peer not heard from for ``PEER_TTL``
  seconds is forgotten (and no longer reached by ``broadcast``), and so is the one heard from
  the longest ago when a newcomer finds the table full: no one is kept out.
- Events and requests are taken one at a time, in the order they were received, by a task
  beside the receive loop, which goes on reading meanwhile (an event's handler may await a
  reply): an event is handled there, a request started there (answered in a task of its
  own), so a request starts once every event received before it was handled. They wait in
  ``_inbox`` within ``max_inbox_bytes``, past which the loop reads nothing more (replies
  included) until the handlers catch up. A close stops the taking at once (the handler
  running finishes first when it closed); what it leaves is named in a warning, with the
  handlers it cancelled (the one taking an event, and the requests').
- One datagram is sent at a time (replies, emits and broadcasts from any number of tasks).
- At most ``MAX_REQUESTS`` requests are answered at once (each in a task); a request beyond
  them (still so after ``_PASSES_FOR_A_PLACE`` loop passes) is dropped and counted, and its
  sender times out as if the datagram were lost.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import anyio
from anyio.abc import SocketAttribute, TaskGroup, TaskStatus, UDPSocket

from .._config import Config, request_timeout
from .._errors import (
    ClosedError,
    ConfigError,
    DatagramTooLargeError,
    DecodeError,
    FrameTooLargeError,
    IPCError,
    ProtocolError,
    RequestTimeoutError,
)
from .._log import ActorLog
from .._proto._messages import ErrorReply, Event, Frame, Message, Reply, Request, frame_bytes
from .._proto._session import datagram_messages
from .._transports._datagram import (
    MAX_DATAGRAM,
    DatagramKind,
    interface_name,
    open_datagram_endpoint,
    resolve_datagram_peer,
)
from .._transports._transport import host_port
from ._handlers import HandlerMethods, Handlers, unhandled
from ._handling import Handling, kept_until_handled
from ._peer import answer, check_event_name, error_frame, unsupported_request
from ._requests import Requests

__all__ = ["DatagramPeer", "DatagramServer", "DatagramStatistics"]


#: Events and requests taken from a UDP server's inbox between two loop passes (its plain
#: handlers give none): a close, the reader and senders wait at most this many handlers.
_TAKEN_PER_PASS: Final = 64
#: Loop passes a request taken while MAX_REQUESTS are answered waits for a place: a quick
#: handler's answer (its handler, then its send) ends within them.
_PASSES_FOR_A_PLACE: Final = 4

PEER_TTL = 60.0  # seconds a peer stays in the table (and in broadcasts) after its last datagram
MAX_REQUESTS = 64  # requests answered at once; a flood beyond them costs no task and no memory

PeerAddress = tuple[str, int]

#: The broadcast addresses a datagram may come from only forged, and may not be sent to
#: without SO_BROADCAST: the limited one and loopback's.
_BROADCASTS = frozenset({"255.255.255.255", "127.255.255.255"})


def _unsendable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> str | None:
    """What ``ip`` is if the system would refuse to send a datagram there, else ``None``:
    refused here, before sending, because asyncio would tell no one (see ``_send``)."""
    if isinstance(ip, ipaddress.IPv4Address):
        if str(ip) in _BROADCASTS:
            return "a broadcast address (a server sends to peers, one at a time)"
        if "%" in host:
            return "an IPv4 address with a scope (only IPv6 addresses have one)"
    elif ip.ipv4_mapped is not None:
        return "an IPv4-mapped address (serve udp4 to reach IPv4 peers)"
    return None


def _with_scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, scope: str, peer: Any) -> str:
    """``ip`` with ``scope`` as the kernel writes a datagram's source: the interface's name on
    a link-local address (a number is looked up), nothing on any other (the kernel ignores
    it there, and Trio's lookup refuses it)."""
    if not scope or not ip.is_link_local:
        return str(ip)
    if scope.isdigit():
        try:
            scope = interface_name(int(scope))
        except OSError as exc:
            raise ConfigError(f"a UDP peer's scope is no interface here, got {peer!r:.80}") from exc
    return f"{ip}%{scope}"


def _answerable(address: tuple[Any, ...]) -> bool:
    """Whether a datagram from ``address`` (as the kernel gives it: no parsing, on every
    datagram) can be answered: not from port 0 or a broadcast address, which only a forged
    datagram comes from."""
    return address[1] != 0 and address[0] not in _BROADCASTS


@dataclass
class DatagramStatistics:
    """Counters of a UDP server, since it started."""

    received: int = 0
    sent: int = 0
    dropped_malformed: int = 0
    dropped_oversized: int = 0
    dropped_peer_table_full: int = 0  # peers forgotten for a newcomer (the table was full)
    #: Requests dropped because ``MAX_REQUESTS`` were already being answered.
    dropped_busy: int = 0
    #: Events that arrived with no handler registered (each name is also logged once).
    events_unhandled: int = 0


class DatagramPeer:
    """A UDP peer as handlers see it: its address, and a way to answer it."""

    __slots__ = ("_server", "address", "last_seen")

    def __init__(self, server: DatagramServer, address: PeerAddress, now: float) -> None:
        self._server = server
        self.address = address
        self.last_seen = now

    def __repr__(self) -> str:
        return f"<DatagramPeer {host_port(*self.address[:2])}>"

    async def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` to this peer in one datagram (``server.emit(peer, ...)``)."""
        await self._server.emit(self.address, event, data)

    async def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Ask this peer (``server.request(peer, ...)``)."""
        return await self._server.request(self.address, event, data, timeout=timeout)


class DatagramServer(HandlerMethods):
    """A UDP server made by ``Actor.serve_net(host, port, udp="udp4" | "udp6")``.

    Handlers are called as ``handler(data, peer)``; ``emit(peer_or_address, ...)`` sends one
    datagram; ``broadcast`` reaches the peers heard from within ``PEER_TTL`` seconds.
    """

    def __init__(
        self,
        actor_id: str,
        config: Config,
        log: ActorLog,
        host: str,
        port: int,
        kind: DatagramKind,
    ) -> None:
        self._id = actor_id
        self._config = config
        self._log = log
        self._host = host
        self._port = port
        self._kind: DatagramKind = kind
        self._max_datagram = min(MAX_DATAGRAM[kind], config.max_frame_size)
        self._handlers = Handlers()
        self._unhandled_names: set[str] = set()  # event names logged as having no handler
        self._codec = codec = config.wire_codec
        # The encoder's frame limit is the datagram's: too large is refused before it is made.
        limits = dataclasses.replace(config.limits, max_frame_size=self._max_datagram)
        self._encoder = codec.datagram_encoder(limits)
        self._encoder.tracebacks = config.remote_tracebacks is True  # anyone may send to a port
        self._decoder = codec.decoder(config.limits)
        self._requests = Requests()
        self._asked: dict[int, PeerAddress] = {}  # our requests in flight: to whom
        self._send_lock = anyio.Lock()
        self._answering = 0  # requests being answered (tasks), at most MAX_REQUESTS
        self._cut_short: list[PeerAddress] = []  # the senders of what a close cancelled
        self._peers: OrderedDict[PeerAddress, DatagramPeer] = OrderedDict()
        self._socket: UDPSocket | None = None
        self._bound: PeerAddress | None = None  # (host, port) once bound; kept after close
        self._stats = DatagramStatistics()
        # Events and requests wait here to be taken, one at a time, by a task of their own
        # (see the invariants): (message, peer, bytes), within max_inbox_bytes.
        self._inbox: deque[tuple[Event | Request, DatagramPeer, int]] = deque()
        self._inbox_bytes = 0
        self._inbox_filled = anyio.Event()  # set when the taking task may have work
        self._inbox_room: anyio.Event | None = None  # the receive loop waits for room
        self._closing = False  # no more taking from the inbox
        self._scope = anyio.CancelScope()
        self._ready: anyio.Event | None = None  # held (see _hold): set by start()
        self._stopped = anyio.Event()
        self._owner_group: TaskGroup | None = None  # (a close kept by a handler starts there)

    def __repr__(self) -> str:
        return f"<DatagramServer {self._id!r} udp {self.address!r}>"

    @property
    def address(self) -> PeerAddress:
        """``(host, port)`` this server is bound to (still, once closed)."""
        return self._bound or (self._host, self._port)

    @property
    def port(self) -> int:
        """The port this server is bound to (with port 0, the one picked): ``address[1]``."""
        return self.address[1]

    @property
    def clients(self) -> Mapping[PeerAddress, DatagramPeer]:
        """Peers heard from recently, by address (a live read-only view)."""
        self._expire(anyio.current_time())
        return MappingProxyType(self._peers)

    def statistics(self) -> DatagramStatistics:
        """A snapshot of this server's counters."""
        return DatagramStatistics(**vars(self._stats))

    # --- handlers -----------------------------------------------------------------------------

    # --- sending ------------------------------------------------------------------------------

    async def _address(self, peer: DatagramPeer | PeerAddress) -> PeerAddress:
        """Where ``peer`` is: checked, its host an IP address of our family (a name is looked
        up here, once per call: see ``resolve_datagram_peer``)."""
        if isinstance(peer, DatagramPeer):
            if peer._server._kind != self._kind:
                raise ConfigError(
                    f"a UDP peer of a {self._kind} server has an IPv{self._kind[-1]} address, "
                    f"got {peer!r:.80}, a peer of a {peer._server._kind} server"
                )
            return peer.address
        if (
            not isinstance(peer, tuple)
            or len(peer) != 2
            or not isinstance(peer[0], str)
            or not isinstance(peer[1], int)
        ):
            raise ConfigError(
                f"a UDP peer is a (host, port) tuple or a DatagramPeer, got {peer!r:.80}"
            )
        # Checked here, not left to the socket: asyncio closes a datagram transport for good
        # on a send error that is not an OSError (a port out of range is an OverflowError).
        host, port = peer
        if type(port) is not int or not 0 < port <= 65535:
            raise ConfigError(f"a UDP peer's port is 1-65535, got {peer!r:.80}")
        # The address as the kernel writes it (a reply's source is compared with it): a name,
        # or another spelling of an address ("0:0:0:0:0:0:0:1", "127.1"), is looked up.
        address, _, scope = host.partition("%")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            host, port = await resolve_datagram_peer(self._kind, host, port)
            address, _, scope = host.partition("%")
            ip = ipaddress.ip_address(address)
        if f"udp{ip.version}" != self._kind:
            raise ConfigError(
                f"a UDP peer of a {self._kind} server has an IPv{self._kind[-1]} address, "
                f"got {peer!r:.80} (serve udp{ip.version} to reach it)"
            )
        if refused := _unsendable(ip, host):
            raise ConfigError(f"a UDP peer cannot be {refused}, got {peer!r:.80}")
        return (_with_scope(ip, scope, peer), port)

    async def _send(self, frame: Frame, address: PeerAddress) -> None:
        body = frame_bytes(frame)  # a datagram encoder's frame is the whole datagram
        if len(body) > self._max_datagram:
            raise DatagramTooLargeError(
                f"a datagram of {len(body)} bytes exceeds the limit of {self._max_datagram}; "
                "send less per event, or use a stream transport"
            )
        sock = self._check_open()
        try:
            async with self._send_lock:  # anyio's socket refuses two senders at once
                await sock.sendto(body, *address)
        except anyio.ClosedResourceError:  # closed while this waited for its turn
            raise ClosedError(f"UDP server {self._id!r} is closed") from None
        except (anyio.BrokenResourceError, OSError, ValueError) as exc:
            # The system refused the address (one _address cannot tell, such as a link-local
            # address with no route): Trio says so as BrokenResourceError, uvloop as a
            # ValueError; asyncio tells no one (its transport passes it to error_received).
            cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
            raise ConfigError(f"a UDP peer the system cannot send to: {address} ({cause})") from exc
        self._stats.sent += 1

    def _check_open(self) -> UDPSocket:
        if self._stopped.is_set():
            raise ClosedError(f"UDP server {self._id!r} is closed")
        if self._socket is None:
            raise IPCError("the UDP server is not running")
        return self._socket

    async def emit(self, peer: DatagramPeer | PeerAddress, event: str, data: Any = None) -> None:
        """Send ``event`` to ``peer`` (a handle or ``(host, port)``) in one datagram."""
        check_event_name(event)
        address = await self._address(peer)
        await self._send(self._encoder.event(event, data), address)

    async def request(
        self,
        peer: DatagramPeer | PeerAddress,
        event: str,
        data: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Ask ``peer`` (a UDP server) and return its answer; a lost datagram means a
        :class:`RequestTimeoutError`."""
        check_event_name(event)
        if not self._codec.carries(Request):
            raise unsupported_request(self._codec.name)
        timeout = request_timeout(timeout, self._config)
        address = await self._address(peer)  # (as the answer will come from)
        request_id, pending = self._requests.open(event, timeout)  # (its own deadline: below)
        self._asked[request_id] = address
        try:
            frame = self._encoder.request(event, data, request_id)
            with anyio.move_on_after(timeout):
                await self._send(frame, address)
                await pending.wait(math.inf)
        finally:
            self._requests.discard(request_id)
            del self._asked[request_id]
        if pending.error is not None:
            raise pending.error
        if not pending.is_set():
            raise RequestTimeoutError(f"no reply to {event!r} from {address} within {timeout} s")
        return pending.result

    async def broadcast(self, event: str, data: Any = None) -> None:
        """Send ``event`` to every peer heard from within ``PEER_TTL`` seconds. Raises
        :class:`ClosedError` once the server is closed, peers or none."""
        check_event_name(event)
        self._check_open()
        frame = self._encoder.event(event, data)
        self._expire(anyio.current_time())
        peers = list(self._peers)
        if not peers:  # the loop's turn all the same (see Server.broadcast)
            await anyio.lowlevel.checkpoint()
        for address in peers:
            await self._send(frame, address)

    # --- serving ------------------------------------------------------------------------------

    async def _start(self, task_group: TaskGroup) -> None:
        self._owner_group = task_group
        self._socket = await open_datagram_endpoint(self._kind, self._host, self._port)
        local = self._socket.extra(SocketAttribute.local_address)
        self._bound = (str(local[0]), int(local[1]))
        await task_group.start(self._serve)
        self._log.info(f"serving on udp {self.address}")

    def _hold(self) -> None:
        """Read nothing until :meth:`start` (called before the server starts)."""
        if self._ready is None:
            self._ready = anyio.Event()

    def start(self) -> None:
        """Read datagrams, from a server served with ``start=False`` (those that came
        meanwhile wait in the kernel's receive buffer; what it could not hold is lost, as
        anything on UDP may be); nothing once started."""
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.set()

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        assert self._socket is not None
        try:
            with self._scope:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._take_inbox, task_group)
                    task_status.started()
                    if self._ready is not None:
                        await self._ready.wait()
                    await self._receive_loop(self._socket, task_group)
        finally:
            self._drop_inbox()
            with anyio.CancelScope(shield=True):
                await self._socket.aclose()
            self._stopped.set()
            # No reply can come now: what waits for one fails at once, not at its timeout.
            self._requests.fail(ClosedError(f"UDP server {self._id!r} is closed"))

    async def _receive_loop(self, sock: UDPSocket, task_group: TaskGroup) -> None:
        while True:
            try:
                data, address = await sock.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on a later receive
                self._log.debug(f"udp receive error: {exc}")
                continue
            self._stats.received += 1
            if len(data) > self._max_datagram:
                self._stats.dropped_oversized += 1
                self._refuse_reply(data, (address[0], address[1]))
                continue
            try:
                messages = datagram_messages(self._decoder, data)
                if not messages:
                    raise DecodeError("a datagram with no message in it")
                if not _answerable(address):
                    raise DecodeError("a datagram from an address no answer can reach")
            except ProtocolError as exc:
                self._stats.dropped_malformed += 1
                self._log.trace(f"dropped a malformed datagram from {address}: {exc}")
                continue
            # Only now, with valid messages in hand, does the sender take a place in the table.
            peer = self._remember((address[0], address[1]))
            size = len(data) // len(messages)
            for message in messages:
                self._dispatch(message, peer, size)
            if self._inbox_bytes > self._config.max_inbox_bytes:
                # Handlers are behind: read on once they caught up (the kernel drops what does
                # not fit its buffer meanwhile, replies too).
                self._inbox_room = anyio.Event()
                await self._inbox_room.wait()

    def _dispatch(self, message: Message, peer: DatagramPeer, size: int) -> None:
        if type(message) is Event or type(message) is Request:
            self._inbox.append((message, peer, size))
            self._inbox_bytes += size
            self._inbox_filled.set()
        elif isinstance(message, Reply | ErrorReply):
            # Taken only from where the request went: anyone can send to a port.
            if self._asked.get(message.id) != peer.address:
                return
            if isinstance(message, Reply):
                self._requests.resolve(message)
            else:
                self._requests.reject(message)

    async def _take_inbox(self, task_group: TaskGroup) -> None:
        """Take what was received, one at a time, in order, beside the receive loop (see the
        invariants): handle an event, start a request. A loop pass every ``_TAKEN_PER_PASS``
        (plain handlers never give one): a close, a sender, the reader get their turn."""
        inbox = self._inbox
        taken = 0
        while not self._closing:
            if not inbox:
                self._inbox_filled = anyio.Event()
                await self._inbox_filled.wait()
                continue
            message, peer, size = inbox.popleft()
            self._inbox_bytes -= size
            room = self._inbox_room
            if room is not None and self._inbox_bytes <= self._config.max_inbox_bytes:
                self._inbox_room = None
                room.set()
            if type(message) is Request:
                # MAX_REQUESTS running: a few loop passes for those that are quick to end
                # (requests that waited behind a slow handler, started back to back, are no
                # flood of slow ones), then this one is dropped.
                for _ in range(_PASSES_FOR_A_PLACE):
                    if self._answering < MAX_REQUESTS:
                        break
                    await anyio.lowlevel.checkpoint()
                if self._answering >= MAX_REQUESTS:
                    self._stats.dropped_busy += 1
                else:
                    self._answering += 1
                    task_group.start_soon(self._answer, message, peer)
            elif not self._handlers.handles(message.event, request=False):
                self._stats.events_unhandled += 1
                unhandled(self._unhandled_names, message.event, repr(peer), self._log)
            else:
                with Handling(peer):  # (see _handling: closing from the handler)
                    try:
                        await self._handlers.call(message.event, (message.data, peer), self._log)
                    except anyio.get_cancelled_exc_class():
                        self._cut_short.append(peer.address)  # (the close: named in its warning)
                        raise
            taken += 1
            if taken % _TAKEN_PER_PASS == 0:
                await anyio.lowlevel.checkpoint()

    def _drop_inbox(self) -> None:
        """The server closed with events or requests received and not taken, or in handlers
        it cancelled: say how many, and from whom (a request's sender times out, as for a lost
        datagram)."""
        cut = self._cut_short
        senders = {peer.address: None for _, peer, _ in self._inbox} | dict.fromkeys(cut)
        if senders:
            dropped = len(self._inbox) + len(cut)
            first = next(iter(senders))
            whom = host_port(*first[:2]) if len(senders) == 1 else f"{len(senders)} peers"
            in_handlers = f" ({len(cut)} of them cut short in their handlers)" if cut else ""
            self._log.warning(
                f"{dropped} event(s) or request(s) from {whom} dropped unhandled{in_handlers}: "
                "server closed"
            )
        self._inbox.clear()
        self._inbox_bytes = 0
        cut.clear()

    def _refuse_reply(self, data: bytes, address: PeerAddress) -> None:
        """``data``, too large to decode, may answer one of our requests (the answering side
        does not know our ``max_frame_size``): that request fails now, not at its timeout. Its
        id is read from the datagram's first bytes; only from the address the request went to."""
        if not self._asked:
            return
        request_id = self._decoder.reply_to(data)
        if request_id is not None and self._asked.get(request_id) == address:
            limit = self._max_datagram
            self._requests.fail_one(request_id, FrameTooLargeError(len(data), limit, reply=True))

    def _remember(self, address: PeerAddress) -> DatagramPeer:
        now = anyio.current_time()
        peer = self._peers.get(address)
        if peer is not None:
            peer.last_seen = now
            self._peers.move_to_end(address)
            return peer
        if len(self._peers) >= self._config.max_connections:
            self._expire(now)
            if len(self._peers) >= self._config.max_connections:
                # The one heard from the longest ago gives way: peers that left (one-shot
                # clients) must not keep newcomers out until they expire.
                self._peers.popitem(last=False)
                self._stats.dropped_peer_table_full += 1
        peer = self._peers[address] = DatagramPeer(self, address, now)
        return peer

    def _expire(self, now: float) -> None:
        while self._peers:
            address, oldest = next(iter(self._peers.items()))
            if now - oldest.last_seen < PEER_TTL:
                return
            del self._peers[address]

    async def _answer(self, message: Request, peer: DatagramPeer) -> None:
        with Handling(peer):  # (see _handling: closing from the handler)
            try:
                try:
                    frame = await answer(
                        self._handlers, message, (message.data, peer), self._encoder, self._log
                    )
                except anyio.get_cancelled_exc_class():
                    self._cut_short.append(peer.address)  # (the close: named in its warning)
                    raise
                try:
                    try:
                        await self._send(frame, peer.address)
                    except DatagramTooLargeError as exc:  # the requester must hear of it
                        await self._send(error_frame(self._encoder, message.id, exc), peer.address)
                except IPCError as exc:
                    self._log.warning(
                        f"reply to {message.event!r} for {peer.address} not sent: {exc}"
                    )
            finally:
                self._answering -= 1

    def _serves(self, peer: object) -> bool:
        return isinstance(peer, DatagramPeer) and peer._server is self

    def _close_soon(self) -> None:
        self._closing = True  # (nothing more is taken, from the handler that closed on)
        if self._owner_group is not None and not self._stopped.is_set():
            self._owner_group.start_soon(self.aclose)

    async def aclose(self) -> None:
        """Stop receiving and close the socket. From one of its handlers: returns at once, and
        the close starts once the handler has returned (a request's reply sent first)."""
        if kept_until_handled(self._serves, self._close_soon):
            return
        self._closing = True
        self._scope.cancel()
        if self._socket is not None:
            await self._stopped.wait()
            self._log.info("server closed")
