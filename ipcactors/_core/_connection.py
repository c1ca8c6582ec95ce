"""The client side: a connection to another actor's server that reconnects on its own.

Invariants:
- Connected means welcomed: ``connect`` fires after the server's ``welcome``, once per live
  connection, while the channel already reads and writes (the handlers may emit and await
  requests) and before any of the server's events are handled; ``connect_to`` returns once
  they are done. ``disconnect`` fires once per lost connection, never per failed attempt.
  Without a handshake (the node-ipc codec) a connection is up as soon as the socket is; after
  one that ended as it began (within ``STABLE_AFTER``: a full server closing it), the next is
  connected only once the server sends something or it lasts ``STABLE_AFTER`` (``_proving``),
  so a server that closes every connection costs failed attempts, not events.
- Pipelined (``connect_to(wait=False)``, the first connection only, never when the hello offers
  what the welcome settles: the acknowledged mode, shared memory): ``connect_to`` returns once
  frames may follow the hello and the channel reads the welcome (see ``_channel``); connected,
  the ``connect`` handlers and the "connected" line come with it. A handshake that fails there
  counts as a failed attempt: a fatal refusal ends the connection (``_refused``), anything
  else is retried. What went ahead of the welcome is kept (within the outbox's bound) until it
  comes. Refused with ``busy``, or the connection ended unwelcomed, the server handled none of
  it (it decodes nothing behind a hello before its welcome, which reaches us ahead of the
  connection's end): it goes again, first, behind the next hello, and its requests wait on
  (within their timeout), as if we had waited for the welcome. A fatal refusal fails the
  requests sent ahead with itself; past ``handshake_timeout`` (the welcome may be on its way)
  they fail with ``ConnectionLostError`` and its events are not sent again (at most once).
  ``wait_connected`` waits on through failed attempts.
- Retries follow ``stop_retrying``: a failed attempt or a lost connection spends one retry; the
  count, and the backoff, restart once a connection has lasted ``STABLE_AFTER`` seconds
  connected (welcomed, or proven: the wait for either is part of the attempt). One
  that ends sooner (a server that takes connections and closes them at once: a full node-ipc
  server, a broken one) is a failed attempt like any other, so such a server meets backoff
  and ``stop_retrying``, never a reconnect storm. Errors retrying cannot fix (a refusal other
  than ``busy``, a path too long, no permission) end the connection at once, and so does
  anything that is not a connection failure at all (a bug: it comes out as itself).
- Retrying is never silent: the first failure of a run of attempts is logged at WARNING with
  its reason, then a reminder every ``RETRY_REMINDER`` seconds (30) while it keeps failing, and
  the success after failures at INFO (each attempt at DEBUG).
- Closing cancels every attempt at once, the first connect's (which runs in the caller's task)
  as well as the reconnects: nothing of a closed connection keeps trying.
- Delays grow exponentially from ``retry`` to ``retry_cap``, each randomised between half and
  all of its nominal value.
- Frames emitted while disconnected wait in the outbox and go out first, in order, after the
  next handshake. Disconnected begins as the server's input ends (``connected`` turns False),
  though the channel still handles what came before it: nothing more is written on that one
  (and once something waits to be, its handlers have ``close_timeout`` to finish: the next
  connection comes after them). Requests whose frames had reached the socket fail as soon as
  the connection is lost; those still queued wait for the next connection (within their
  timeout).
- Once given up (or closed), every waiting emit and request fails, and ``destroy`` fires once.
- Acknowledged mode (``Config.acked``, see ``_acks``): the hello offers the mode with our
  session id; the welcome's ``last`` resumes it (what the writer had taken and the server did
  not deliver goes out again, first). A server without the mode is refused under
  ``"require"`` (:class:`RejectedError`, reason ``"acked"``, not retried) and used plainly
  under ``"on"`` (what was stored is reported). When the connection is given up or closed
  (``aclose`` waits for acknowledgements first, within ``close_timeout``), every event never
  acknowledged is reported (logged, counted, kept in ``unacknowledged``). The server's events
  to us are acknowledged too, when its welcome names its stream (``session``): the same
  stream resumes across reconnects; a new one (a restarted server) starts a new record.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any, Final

import anyio
from anyio.abc import ByteStream, TaskGroup

from .._config import Config
from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    ConnectionLostError,
    IPCError,
    ProtocolError,
    RejectedError,
    ServerBusyError,
    UnacknowledgedError,
)
from .._log import ActorLog
from .._proto._messages import RESERVED_EVENTS, Welcome
from .._proto._session import Role, Session
from .._transports._fds import can_pass_fds
from .._transports._streams import close_now
from .._transports._transport import (
    Address,
    Transport,
    is_fatal_connect_error,
    refused_certificate,
    tls_error,
)
from ._acks import AckedReceiver, AckedSender
from ._channel import Channel
from ._flag import Flag
from ._handlers import HandlerMethods, Handlers
from ._handling import kept_until_handled
from ._handshake import open_handshake
from ._peer import Peer
from ._shared import shared_offer
from ._watchdog import Watchdog

__all__ = ["RETRY_REMINDER", "Connection"]

#: Seconds between the warnings that a connection still cannot be made: often enough to be
#: seen in a log, rarely enough not to flood it (attempts themselves are logged at DEBUG).
RETRY_REMINDER: Final = 30.0
#: A connection that lasted this long (seconds) restarts the backoff and the retry count.
STABLE_AFTER: Final = 1.0

# What a failed attempt to connect can raise; anything else is a bug and is not retried.
_CONNECT_FAILURES: Final = (
    OSError,
    TimeoutError,
    IPCError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _own_error(exc: BaseException) -> BaseException:
    """The socket's own error behind one of anyio's: its BrokenResourceError's cause, or, for
    its "All connection attempts failed" (a host name, each address tried), the first
    address's error (the one address's)."""
    if isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, OSError):
        return exc.__cause__
    if type(exc) is OSError and exc.errno is None:
        cause: BaseException | None = exc.__cause__
        if isinstance(cause, ExceptionGroup) and isinstance(cause.exceptions[0], OSError):
            cause = cause.exceptions[0]
        if isinstance(cause, OSError):
            return cause
    return exc


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, IPCError):
        return text or type(exc).__name__
    if not text and exc.__cause__ is not None:  # anyio's BrokenResourceError: the OSError behind
        return _reason(exc.__cause__)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_fatal(exc: BaseException) -> bool:
    if isinstance(exc, RejectedError):
        return not isinstance(exc, ServerBusyError)
    return is_fatal_connect_error(exc)


def _handled_nothing(error: Exception | None) -> bool:
    """Whether a pipelined handshake that failed with ``error`` leaves the server having
    handled nothing sent ahead of the welcome: it refused us, or the connection ended first (a
    welcome sent reaches us ahead of the end); not after our deadline (it may be on its way)."""
    return error is not None and not isinstance(error, TimeoutError)


class Connection(Peer, HandlerMethods):
    """A connection to another actor, made by ``Actor.connect_to()`` / ``connect_to_net()``.

    Lives in ``actor.of[id]`` until it is closed or gives up. Event handlers are called as
    ``handler(data)``; lifecycle handlers as ``connect()``, ``disconnect()``, ``destroy()`` and
    ``error(exception)`` (raised locally only, never by a peer's frame; an ``IPCError``: each
    failed attempt to connect, as ``connect_to`` would raise it, and a protocol error).
    """

    _lifecycle = RESERVED_EVENTS
    _outbox_outlives_channel = True

    def __init__(
        self,
        actor_id: str,
        target: str,
        transport: Transport,
        config: Config,
        log: ActorLog,
        on_destroyed: Callable[[Connection], None],
        watchdog: Watchdog | None = None,
        owner_group: TaskGroup | None = None,
    ) -> None:
        super().__init__(config, log, Handlers())
        self._owner_group = owner_group  # the actor's: a close kept for after a reply starts there
        self._watchdog = watchdog  # keeps time for the heartbeats
        self.id = target
        self._actor_id = actor_id
        self._transport = transport
        self._on_destroyed = on_destroyed
        self._channel: Channel | None = None
        self._up = Flag()  # set while connected: welcomed, and the server's input not ended
        self._was_up = False  # this connection was welcomed, and its input ended since
        self._up_at: float | None = None  # when the live connection was up (see _run)
        self._closing = False
        self._destroyed = Flag()
        self._scope = anyio.CancelScope()  # _run: serving and reconnecting
        # _connect: the first connect, in the caller's task; None once it is over.
        self._attempts: anyio.CancelScope | None = anyio.CancelScope()
        self._recovered = ""  # "after N failed attempts", for the next "connected" line
        # No handshake, and the last connection ended as it began: see _proving.
        self._unproven = False
        self._server_id: str | None = None
        self._gave_up: BaseException | None = None  # why it was destroyed, if not closed
        # The caller of its first connect was cancelled (nothing closed it): callers waiting
        # on it connect anew (_wait_as_connect).
        self._abandoned = False
        self._first_connect_over = anyio.Event()  # _connect returned or raised
        # A supervised child's connection to its supervisor: its incarnation's token, in
        # every hello (the supervisor admits that child's id with it only: Server._claims).
        self._token: str | None = None
        self._refused: IPCError | None = None  # the server refused our certificate: give up
        if config.acked != "off":
            self._acked = AckedSender(self._outbox, self._encoder.kept_frame)
        self._resume_last: int | None = None  # the welcome's "last" (acknowledged mode)
        self._peer_stream = ""  # the session of the server's events we receive, once known

    def __repr__(self) -> str:
        state = "connected" if self.connected else "destroyed" if self.destroyed else "connecting"
        return f"<Connection to {self.id!r} {self._transport.kind} {self.address!r} {state}>"

    @property
    def address(self) -> Address:
        return self._transport.address

    @property
    def server_id(self) -> str | None:
        """The id the server gave in its welcome (normally ``id``); ``None`` before the first."""
        return self._server_id

    @property
    def connected(self) -> bool:
        """Whether the handshake is done and the connection is up right now."""
        return self._channel is not None and self._up.is_set()

    @property
    def destroyed(self) -> bool:
        """Whether the connection was closed or gave up; it will not come back."""
        return self._destroyed.is_set()

    async def wait_connected(self) -> None:
        """Return once connected; raise :class:`ClosedError` if it is destroyed first."""
        while not self.connected:
            if self.destroyed:
                reason = self._gave_up
                if reason is None:
                    raise ClosedError(f"connection to {self.id!r} was closed")
                raise ClosedError(f"connection to {self.id!r} was given up: {reason}") from reason
            async with anyio.create_task_group() as task_group:

                async def wait_destroyed() -> None:
                    await self._destroyed.wait()
                    task_group.cancel_scope.cancel()

                task_group.start_soon(wait_destroyed)
                await self._up.wait()
                task_group.cancel_scope.cancel()

    async def _wait_as_connect(self, wait: bool) -> bool:
        """``connect_to``'s wait on a connection another call is opening: until it is
        connected, or with ``wait=False`` until that call's first connect is over (its socket
        is connected, at the latest once welcomed). Fails as that call did when the retries
        ran out (each caller its own copy of the error, chained to the same cause), where
        ``wait_connected`` says ClosedError caused by it. False if that call was cancelled
        instead: the caller is to connect anew."""
        try:
            if wait:
                await self.wait_connected()
            else:
                await self._first_connect_over.wait()
                if self.destroyed:
                    await self.wait_connected()  # (raises why)
        except ClosedError as closed:
            if self._abandoned:
                return False
            reason = self._gave_up
            if not isinstance(reason, IPCError) or closed.__cause__ is not reason:
                raise
            raise copy.copy(reason) from reason.__cause__
        return True

    @property
    def unacknowledged(self) -> list[tuple[int, str]]:
        """Acknowledged mode: ``(seq, event name)`` of every event emitted and not
        acknowledged, in order: those it reported (given up when it fell back to at most once,
        or when the connection was given up or closed: they may or may not have been
        handled), then those still waiting for an acknowledgement."""
        return [] if self._acked is None else self._acked.unacknowledged

    async def wait_acknowledged(self) -> None:
        """Acknowledged mode: return once every event emitted so far has been acknowledged by
        the server (its handlers returned). Waits through reconnects. Raises
        :class:`UnacknowledgedError` (listing the events) if some are given up instead: a
        report given up in part (a fallback to at most once, a server taking less) by the
        calls under way (or if none, the next one made), every report once the connection is
        given up or closed; and while the connection emits at most once (fallen back), listing
        none.
        :class:`ConfigError` without ``Config.acked``."""
        acked = self._acked
        if acked is None:
            raise ConfigError(
                f"wait_acknowledged() needs acknowledged events: connect to {self.id!r} with "
                "Config(acked='on') or acked='require'"
            )
        events = await acked.wait()
        if events:
            why = "was given up" if acked.final else "gave up on some (see unacknowledged)"
            raise UnacknowledgedError(
                f"connection to {self.id!r} {why}: {len(events)} event(s) never acknowledged "
                "(they may or may not have been handled)",
                events,
            )
        if not acked.active:
            raise UnacknowledgedError(
                f"{self.id!r} does not acknowledge events: this connection emits to it at most "
                "once (acked='on' fell back), so what it emits cannot be waited for",
                [],
            )

    # --- handlers -----------------------------------------------------------------------------

    # --- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Flush what is queued to the kernel and, in the acknowledged mode, wait for the
        server to acknowledge every event (together bounded by ``close_timeout``; a connection
        that is reconnecting keeps trying meanwhile), then close for good. No reconnect
        follows. Events still not acknowledged are reported
        (``unacknowledged``, a warning). From a handler of this connection's (an event's, a
        request's, a lifecycle handler): returns at once, and the close starts once the handler
        has returned (a request's reply is queued first, and flushed)."""
        if kept_until_handled(self._is, self._close_soon):
            return
        if self._closing:
            await self._destroyed.wait()
            return
        self._closing = True
        if self._attempts is not None:  # still connecting (anyio's cancel() is not free)
            self._attempts.cancel()
        acked = self._acked
        try:
            if not self._outbox.flushed or (acked is not None and acked.active and len(acked)):
                # Both through a reconnect in progress, if it comes in time.
                with anyio.move_on_after(self._config.close_timeout):
                    await self._outbox.wait_flushed()
                    if acked is not None and acked.active and len(acked):
                        await acked.wait()
        finally:
            if self._channel is not None:
                self._channel.closing()
            self._scope.cancel()  # (a close cancelled while it flushed closes at once)
        await self._destroyed.wait()

    def _close_soon(self) -> None:
        if self._owner_group is not None and not self._closing:
            self._owner_group.start_soon(self.aclose)

    async def _connect(self, pipelined: bool = False) -> Channel:
        """The first connection, made in ``connect_to``'s own task (no task to start and wait
        for): retried as ``stop_retrying`` says, raises when out of retries. Then ``_run``
        serves it, in a task. Raises :class:`ClosedError` if closed meanwhile. ``pipelined``
        (``connect_to(wait=False)``): returns once frames may follow the hello; the channel
        reads the welcome (not in the acknowledged mode, which resumes from the welcome)."""
        opened: tuple[ByteStream, Session] | None = None
        try:
            attempts = self._attempts
            assert attempts is not None  # _connect runs once per connection
            try:
                with attempts:
                    opened = (await self._open_retrying(self._config.stop_retrying, pipelined))[:2]
            finally:
                self._attempts = None  # nothing left to cancel
            if opened is None or self._closing:
                if opened is not None:
                    await close_now(opened[0])
                raise ClosedError(f"connection to {self.id!r} was closed while connecting")
        except BaseException as exc:
            reason = None if self._closing or not isinstance(exc, Exception) else exc
            self._abandoned = not self._closing and not isinstance(exc, Exception)
            await self._destroy(reason)
            raise
        finally:
            self._first_connect_over.set()
        stream, session = opened
        return self._up_with(stream, session)

    async def _run(self, channel: Channel) -> None:
        """Serve, reconnect, serve; until closed or out of retries."""
        error: BaseException | None = None
        spent = 0  # retries spent since a connection last lasted (see STABLE_AFTER)
        try:
            with self._scope:
                while True:
                    await self._serve(channel)
                    up_at, self._up_at = self._up_at, None
                    if self._closing:
                        break
                    if self._refused is not None:  # retrying would fail the same way
                        error = self._refused
                        break
                    # Lasted: up (welcomed, or proven) that long; waiting for the welcome or
                    # for the proof is part of the attempt.
                    if up_at is not None and anyio.current_time() - up_at >= STABLE_AFTER:
                        spent = 0
                        self._unproven = False
                    elif not self._codec.handshake:
                        # Lost as soon as it was up: a full server (node-ipc's takes connections
                        # and closes them). The next one is connected once it proves itself.
                        self._unproven = True
                    # A lost connection spends a retry, like a failed attempt.
                    retries = self._config.stop_retrying
                    if retries is not None and spent >= retries:
                        how = "lost" if not spent else f"lost again within {STABLE_AFTER:.0f} s"
                        error = ConnectionFailedError(
                            f"connection to {self.id!r} {how}, and stop_retrying={retries}: "
                            "not reconnecting"
                        )
                        break
                    await anyio.sleep(self._delay(spent))
                    spent += 1
                    try:
                        stream, session, failures = await self._open_retrying(
                            None if retries is None else retries - spent, backoff=spent
                        )
                    except Exception as exc:
                        error = exc
                        break
                    spent += failures
                    channel = self._up_with(stream, session)
        finally:
            await self._destroy(error)
        if error is not None:
            self._log.warning(f"gave up on {self.id!r}: {error}")

    async def _open_retrying(
        self, retries: int | None, pipelined: bool = False, backoff: int = 0
    ) -> tuple[ByteStream, Session, int]:
        """Connect and handshake; after a failure, at most ``retries`` more attempts (``None``:
        no limit), with backoff (its exponent from ``backoff``). Returns the stream, its
        session and how many attempts failed; raises the final error."""
        failures = 0
        first_failure = reminded = 0.0
        while True:
            try:
                opened = await self._open(pipelined)
            except Exception as exc:
                if not isinstance(exc, _CONNECT_FAILURES):
                    await self._call_lifecycle("error", exc)
                    raise  # not a failure to connect: a bug, that no retry fixes
                error = self._final_error(exc)
                await self._call_lifecycle("error", error)
                if _is_fatal(exc) or retries == 0:
                    if error is exc:
                        raise
                    raise error from error.__cause__  # (set by _final_error)
                failures += 1
                now = anyio.current_time()
                where = f"{self.id!r} at {self.address}"
                if failures == 1:
                    first_failure = reminded = now
                    plan = "until it works" if retries is None else f"at most {retries} more times"
                    reason = _reason(_own_error(exc))
                    self._log.warning(f"cannot connect to {where}: {reason}; retrying {plan}")
                elif now - reminded >= RETRY_REMINDER:
                    reminded = now
                    self._log.warning(
                        f"still cannot connect to {where} after {failures} attempts in "
                        f"{now - first_failure:.0f} s: {_reason(_own_error(exc))}; retrying"
                    )
                delay = self._delay(backoff)
                self._log.debug(f"connecting to {self.id!r} failed ({exc}); retry in {delay:.2f} s")
                backoff += 1
                if retries is not None:
                    retries -= 1
                await anyio.sleep(delay)
            else:
                if failures:
                    took = anyio.current_time() - first_failure
                    self._recovered = f" after {failures} failed attempts in {took:.1f} s"
                return (*opened, failures)

    async def _open(self, pipelined: bool = False) -> tuple[ByteStream, Session]:
        """Connect and complete the handshake (if the codec has one: else the connection is
        open at once; ``pipelined``: only up to where frames may follow, see ``_connect``).
        Raises on failure or refusal."""
        codec = self._codec
        acked = self._acked
        timeout = self._config.handshake_timeout
        # A bare scope and a check: anyio's fail_after wraps the same in a generator (~2x).
        deadline = anyio.CancelScope(deadline=anyio.current_time() + timeout)
        with deadline:
            stream = await self._transport.connect()
            self._outbox.rebatch(None)  # (until the welcome says what the server takes)
            settled = self._hello_extra(stream)
            batch_limit = codec.batch_limit(self._config.limits)
            # The largest frame we take and its objects (protocol.md 3.4), and the batches.
            hello_extra = {
                **(settled or {}),
                "frame": self._config.max_frame_size,
                "objects": self._config.max_decoded_objects,
            }
            if batch_limit:
                hello_extra["batch"] = batch_limit
            if self._token is not None:
                hello_extra["token"] = self._token
            session = Session(
                codec,
                self._config.limits,
                Role.CLIENT,
                self._encoder,
                self._actor_id,
                auth_key=self._config.auth_key_bytes,
                target=self.id,
                hello_extra=hello_extra,
            )
            if not codec.handshake:  # the session is open at once
                self._server_id = self.id  # nothing on the wire says otherwise
                return stream, session
            session.accept_batches(batch_limit)
            # Not when the hello offers what the welcome settles (acked mode, shared memory).
            pipelined = pipelined and settled is None
            try:
                await open_handshake(stream, session, pipelined=pipelined)
            except BaseException as exc:
                await close_now(stream)
                # TLS 1.3 reports a refused client certificate only now, on the first read.
                error = tls_error(exc)
                if error is not None:
                    raise error from exc
                raise
        if deadline.cancelled_caught:
            raise TimeoutError(f"not connected within handshake_timeout ({timeout} s)")
        welcome = session.welcome
        if welcome is None:  # pipelined: the channel reads it, see _welcomed
            return stream, session
        self._check_welcome(welcome)
        if acked is not None:
            try:
                self._negotiate(welcome.extra.get("acked"))
            except BaseException:
                await close_now(stream)
                raise
        return stream, session

    def _hello_extra(self, stream: ByteStream) -> dict[str, Any] | None:
        """What our hello offers that the welcome settles before anything else is sent."""
        acked = self._acked
        if acked is not None:  # (its resends and shared memory's places do not mix)
            return {"acked": self._offer(acked)}
        if self._config.max_shared_bytes and can_pass_fds(stream):
            return {"shm": self._config.max_shared_bytes}
        return None

    def _check_welcome(self, welcome: Welcome) -> None:
        if welcome.id != self.id:
            self._log.warning(
                f"connected to {self.id!r} at {self.address}, but that server says it is "
                f"{welcome.id!r}"
            )
        self._server_id = welcome.id
        self._keep_to_peer(welcome.extra.get("frame"), welcome.extra.get("objects"))
        batches = self._codec.event_batches(welcome.extra.get("batch"), self._config.limits)
        self._outbox.rebatch(batches)
        offered = self._config.max_shared_bytes and self._acked is None
        self._shared_accept = shared_offer(welcome.extra.get("shm")) if offered else None

    def _welcomed(self, welcome: Welcome) -> None:
        """A pipelined connection's channel read the welcome: the connection is up."""
        self._check_welcome(welcome)
        self._outbox.drop_kept()  # handled from here on: nothing goes again
        self._now_up()

    def _offer(self, acked: AckedSender) -> dict[str, Any]:
        """Our hello's ``acked``: our stream of events (session, sent), and how far we
        delivered the server's stream to us (peer, last): we acknowledge its events too."""
        receiver = self._receiver
        last = 0 if receiver is None else receiver.last
        return {**acked.hello(), "peer": self._peer_stream, "last": last}

    def _negotiate(self, offer: Any) -> None:
        """The welcome's answer to our acknowledged mode (``None``: the server lacks it)."""
        acked = self._acked
        assert acked is not None
        last = offer.get("last") if type(offer) is dict else None
        if type(last) is int and 0 <= last <= acked.seq:
            self._receive_from(offer)
            acked.active = True
            self._resume_last = last
            return
        if offer is not None:
            raise ProtocolError(f"{self.id!r} answered the acked mode with {offer!r:.80}")
        if self._config.acked == "require":
            raise RejectedError(
                f"{self.id!r} does not acknowledge events (its Config.acked is 'off', or it "
                "predates the mode) and this connection has acked='require': set acked on the "
                "server, or acked='on' here to fall back to at-most-once",
                "acked",
            )
        self._resume_last = None
        if acked.active:
            acked.active = False
            left = acked.report(final=False)  # reported as any given up
            given_up = f"; seq {left[0][0]}..{left[-1][0]}" if left else ""
            self._log.warning(
                f"{self.id!r} does not acknowledge events: emitting to it at most once "
                f"(acked='on'); {len(left)} event(s) not acknowledged are given up{given_up}, "
                "see Connection.unacknowledged"
            )

    def _receive_from(self, offer: dict[str, Any]) -> None:
        """The welcome's ``session`` and ``sent`` (the server's stream of events to us): the
        same stream as before resumes (what we delivered is not delivered again); a new one
        (the server restarted, or we did and it hands us our predecessor's events) starts a
        new record, flagging as redelivered every seq up to ``sent``."""
        stream = offer.get("session")
        sent = offer.get("sent", 0)
        if stream is None:  # the server does not sequence its events to us
            self._receiver = None
            self._peer_stream = ""
            return
        if type(stream) is not str or not 0 < len(stream) <= 64 or type(sent) is not int:
            raise ProtocolError(f"{self.id!r} answered the acked mode with {offer!r:.80}")
        if stream != self._peer_stream or self._receiver is None:
            self._receiver = AckedReceiver()
            self._receiver.redelivered_up_to = max(sent, 0)
            self._peer_stream = stream

    def _up_with(self, stream: ByteStream, session: Session) -> Channel:
        """The channel of a new connection; its ``connect`` handlers run once it runs."""
        if self._resume_last is not None and self._acked is not None:
            self._acked.resume(self._resume_last)
            self._resume_last = None
        # Pipelined, the connect handlers may be registered after connect_to returned: the
        # channel asks once the welcome came.
        if not session.is_open:
            self._outbox.keep_taken()  # what goes ahead of the welcome may have to go again
            channel = Channel(stream, session, self, self._opening, self._wants_opening)
        elif self._unproven:  # no handshake, and the last connection ended as it began
            channel = Channel(stream, session, self, self._proving, writes_after_opening=True)
            self._channel = channel
            return channel
        else:
            wanted = self._handlers.get("connect")
            channel = Channel(stream, session, self, self._opening if wanted else None)
        self._channel = channel
        if session.is_open:
            self._now_up()
        return channel

    def _now_up(self) -> None:
        """Connected (welcomed, or proven without a handshake): from now on it may last."""
        self._up.set()
        self._up_at = anyio.current_time()
        self._log.info(f"connected to {self.id!r} at {self.address}{self._recovered}")
        self._recovered = ""

    async def _proving(self) -> None:
        """The opening of a connection without a handshake after one that ended as it began:
        connected (the ``connect`` handlers, the "connected" line; ``disconnect`` when it ends)
        once the server sends something or the connection lasts ``STABLE_AFTER``. Ended
        sooner, it is one more failed attempt, and says nothing. Until then nothing is
        written (what is emitted waits in the outbox, for the next attempt if this one
        fails: a full server closes connections unread) and nothing the server sends is
        handled (it is what ends the wait)."""
        channel = self._channel
        assert channel is not None
        with anyio.move_on_after(STABLE_AFTER):
            await channel.wait_heard()
        self._unproven = False
        self._now_up()
        await self._handlers.call("connect", (), self._log)

    def _wants_opening(self) -> bool:
        return bool(self._handlers.get("connect"))

    async def _opening(self) -> None:
        if not (self._up.is_set() or self._was_up):  # pipelined: they run once welcomed
            await self._up.wait()
        await self._handlers.call("connect", (), self._log)

    async def _serve(self, channel: Channel) -> None:
        error: Exception | None = None
        try:
            await channel.run()
            error = channel.handshake_error  # pipelined: the welcome never came
            if error is not None:
                error = tls_error(error) or error
                self._log.warning(
                    f"cannot connect to {self.id!r} at {self.address}: {_reason(error)}"
                )
                final = self._final_error(error)
                await self._call_lifecycle("error", final)
                if _is_fatal(error):  # else retried, like any failed attempt
                    self._refused = final
            elif channel.refusal is not None:
                # Replaced by a newer connection with our id (another process has it, most
                # likely): reconnecting would replace that one in turn, and so on. Give up.
                self._refused = channel.refusal
                await self._call_lifecycle("error", self._refused)
            else:
                # Under TLS 1.3 a server refuses our certificate only after our side of the TLS
                # handshake; a codec with a handshake learns it there, one without on this read.
                self._refused = refused_certificate(channel.broken_by)
                if self._refused is not None:
                    await self._call_lifecycle("error", self._refused)
        except ProtocolError as exc:
            self._log.warning(f"closing connection to {self.id!r}: {exc}")
            await self._call_lifecycle("error", exc)
        finally:
            self._channel = None
            welcomed = self._was_up or self._up.is_set()
            self._was_up = False
            if self._up.is_set():  # (else it is still unset: who waits for it waits on)
                self._up = Flag()
            if self._outbox.kept is not None:  # pipelined, and never welcomed
                self._settle_sent_ahead(error)
            self._requests.fail(self._lost(error), sent_up_to=self._outbox.taken)
            if welcomed:  # a pipelined connection never welcomed was never up
                if not self._closing:
                    self._log.info(f"connection to {self.id!r} lost")
                await self._call_lifecycle("disconnect", shielded=True)

    def _input_ended(self) -> None:
        # Not connected from now on, before the requests the channel leaves fail (it goes on
        # until its dispatcher is done): who they wake and waits for the connection waits for
        # the next one, and does not send on this one.
        if self._up.is_set():
            self._up = Flag()
            self._was_up = True

    def _settle_sent_ahead(self, error: Exception | None) -> None:
        """A pipelined connection ended unwelcomed (``error``: why): what went ahead goes
        again, first, if the server handled none of it and we retry; else it counts as sent."""
        if _handled_nothing(error) and self._refused is None and not self._closing:
            self._outbox.requeue_kept()
        else:
            self._outbox.drop_kept()

    def _lost(self, error: Exception | None) -> Exception:
        """What the requests sent on a connection that ended fail with; ``error``: its
        handshake's, when the welcome never came."""
        if self._closing:
            return ClosedError(f"connection to {self.id!r} was closed")
        if isinstance(error, RejectedError):
            return error
        if error is not None:
            return ConnectionLostError(
                f"the connection with {self.id!r} was lost in its handshake, before the reply "
                f"({type(error).__name__}: {error})"
            )
        return ConnectionLostError(f"connection to {self.id!r} was lost before the reply")

    def _delay(self, backoff: int) -> float:
        nominal = min(self._config.retry_cap, self._config.retry * 2 ** min(backoff, 32))
        return random.uniform(nominal / 2, nominal)

    def _final_error(self, exc: BaseException) -> IPCError:
        """What a failed attempt ending with ``exc`` is to the ``error`` handlers, and to
        ``connect_to`` if it is the last: our own errors as they are; the rest (the socket's
        OSError, a timeout, a peer's protocol error: a server that is not an ipcactors one, or
        a broken one) a ConnectionFailedError caused by it."""
        if isinstance(exc, IPCError) and not isinstance(exc, ProtocolError):
            return exc
        exc = _own_error(exc)
        error = ConnectionFailedError(
            f"could not connect to {self.id!r} at {self.address}: {_reason(exc)}"
        )
        error.__cause__ = exc
        return error

    async def _destroy(self, error: BaseException | None) -> None:
        self._gave_up = error
        closed = f"connection to {self.id!r} is closed" + ("" if error is None else f": {error}")
        # The stream's events still queued are reported below, as never acknowledged; the
        # plain ones (queued while the mode was off: a fall back) are named here.
        kept = 0 if self._acked is None else self._acked.queued()
        left = self._outbox.close(ClosedError(closed)) - kept
        if left:
            self._log.warning(f"{left} message(s) queued for {self.id!r} were never sent")
        if self._acked is not None:
            events = self._acked.report()
            if events:
                self._log.warning(
                    f"{len(events)} event(s) to {self.id!r} were never acknowledged "
                    f"(seq {events[0][0]}..{events[-1][0]}); see Connection.unacknowledged"
                )
        self._requests.fail(ClosedError(closed))
        self._on_destroyed(self)
        self._destroyed.set()
        await self._call_lifecycle("destroy", shielded=True)
