"""Event handler registries: ``on``/``off`` and the catch-alls ``on_any``/``on_any_request``,
sync or async handlers, errors contained.

Invariants:
- An exception raised by an event or lifecycle handler is logged and goes no further; the
  connection it came from lives on.
- Catch-alls are called with the event name first, after the event's own handlers: ``on_any``
  handlers for every event a peer sends, ``on_any_request`` handlers for every request; never
  for a lifecycle event (connect, disconnect, destroy, error). A request is answered by its
  event's first own handler, or by the first request catch-all when it has none.
- With no catch-all registered, dispatch costs what it did without them (one truthiness test).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, overload

import anyio

from .._errors import EventNameError, IPCError, ReservedEventError
from .._log import ActorLog
from .._proto._codec import Codec
from .._proto._messages import RESERVED_EVENTS, RESERVED_PREFIX
from .._transports._backend import being_cancelled, cancelled_here

__all__ = [
    "MAX_UNHANDLED_NAMES",
    "UNHANDLED",
    "Handler",
    "HandlerMethods",
    "Handlers",
    "PlainCancellation",
    "raised_by_the_call",
    "raised_by_the_handler",
    "unhandled",
]

MAX_UNHANDLED_NAMES = 256  # event names without a handler logged per server or connection

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


class _Missing(enum.Enum):
    UNHANDLED = "unhandled"


def raised_by_the_call() -> tuple[type[BaseException], ...]:
    """What a handler's call raises as an error of its own, before anything was awaited: any
    Exception, and the backend's cancellation exception, which nothing can have cancelled it
    with (on asyncio ``CancelledError``, raised by hand, or by a future someone cancelled).
    Left to propagate, it would read as the cancellation of the task that called the handler
    (anyio's rule): on asyncio a server's, which would stop serving everyone. Evaluated only
    as an ``except`` clause is matched, at no cost on the way that raises nothing."""
    return (Exception, anyio.get_cancelled_exc_class())


def raised_by_the_handler(exc: BaseException) -> bool:
    """Whether ``exc``, not an Exception, out of awaiting a handler is that handler's error
    all the same: the backend's cancellation exception while nothing cancels the task that
    awaits it (see ``being_cancelled``), alone or in a group with errors (a nursery or task
    group of the handler's own); a group holding anything else (``KeyboardInterrupt``) is
    not. Left to propagate, it would end that task, and with it the connection (anyio's
    rule, as in :func:`raised_by_the_call`). Called only as such an exception is caught, at
    no cost on the way that raises nothing."""
    return errors_or_cancellations(exc) and not being_cancelled()


def errors_or_cancellations(exc: BaseException) -> bool:
    """Whether ``exc`` is an Exception, the backend's cancellation exception, or a group of
    nothing else: what a handler may raise and still be answered or logged, where anything
    else it raises (``KeyboardInterrupt``, ``SystemExit``) ends the program."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((Exception, cancelled))[1] is None
    return isinstance(exc, (Exception, cancelled))


def _cancellation_behind(exc: BaseException) -> BaseException | None:
    """The backend's cancellation in the context chain of ``exc`` or of an exception grouped
    in it (a task group's member that failed as the group was cancelled): the one it replaced."""
    cancelled = anyio.get_cancelled_exc_class()
    pending = [exc]
    for _ in range(64):  # (a chain can be long; a cycle, hand-made, endless)
        if not pending:
            return None
        current = pending.pop()
        context = current.__context__
        if isinstance(context, cancelled):
            return context
        if context is not None:
            pending.append(context)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
    return None


class PlainCancellation(Exception):
    """A handler raised the backend's cancellation exception itself (see
    :func:`raised_by_the_call` and :func:`raised_by_the_handler`): ``error``, carried as an
    error to where it is answered."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


#: What :meth:`Handlers.call_plain` returns for an event nobody handles.
UNHANDLED = _Missing.UNHANDLED


class Handlers:
    """Handlers by event name, called in the order they were registered."""

    __slots__ = ("_any", "_any_requests", "_by_event", "_lone_plain")

    def __init__(self) -> None:
        self._by_event: dict[str, list[Handler]] = {}
        # Catch-alls, called as handler(event, *args): of events, of requests.
        self._any: list[Handler] = []
        self._any_requests: list[Handler] = []
        # Events whose only handler is a plain function: a request for one is answered inline.
        self._lone_plain: dict[str, Handler] = {}

    def _changed(self, event: str) -> None:
        handlers = self._by_event.get(event)
        if handlers and len(handlers) == 1 and not inspect.iscoroutinefunction(handlers[0]):
            self._lone_plain[event] = handlers[0]
        else:
            self._lone_plain.pop(event, None)

    def event_tables(self) -> tuple[dict[str, Handler], list[Handler]]:
        """For a dispatcher's tight loop: the live tables (changed in place, never replaced) of
        the events whose only handler is a plain function, and of the ``on_any`` catch-alls
        (while there are any, every event takes :meth:`call_plain`)."""
        return self._lone_plain, self._any

    def failed(self, event: str, handler: Handler, exc: BaseException, log: ActorLog) -> None:
        """Log what a handler of ``event`` raised (it goes no further)."""
        log.exception(f"handler {_name(handler)} for {event!r} raised", exc)

    def awaited_failed(self, event: str, handler: Handler, exc: Exception, log: ActorLog) -> None:
        """Awaiting a handler of ``event`` raised ``exc``: cut short if it was raised as a
        cancellation went through it (see :meth:`cut_short`), else logged (it goes no
        further)."""
        self.cut_short(event, handler, exc, log)
        self.failed(event, handler, exc, log)

    def cut_short(self, event: str, handler: Handler, exc: Exception, log: ActorLog) -> None:
        """If a handler of ``event`` raised ``exc`` as a cancellation that reaches its task went
        through it (its cleanup failed, say): log it, and raise that cancellation again, so
        that it is cut short as one that let the cancellation through is (counted and named
        by the close that cut it); its error would otherwise go into a reply that cannot be
        sent, or be taken for the whole of what happened to an event. An error it raised on
        its own (a plain handler in a thread, which nothing cancels) is its error."""
        cancellation = _cancellation_behind(exc)
        if cancellation is None or not cancelled_here():
            return
        log.exception(f"handler {_name(handler)} for {event!r} raised as it was cancelled", exc)
        raise cancellation

    def lone_plain(self, event: str) -> Handler | None:
        """The handler of ``event`` if it is its only one and not an ``async def``."""
        if self._any_requests:
            return None
        return self._lone_plain.get(event)

    def _targets(self, event: str, catch_alls: list[Handler]) -> list[Handler] | None:
        """Every handler ``event`` runs: its own, then ``catch_alls`` (bound to the event's
        name) unless it is a lifecycle event."""
        own = self._by_event.get(event)
        if not catch_alls or event in RESERVED_EVENTS:
            return own
        return [*(own or ()), *(partial(handler, event) for handler in catch_alls)]

    def handles(self, event: str, *, request: bool) -> bool:
        """Whether an event (or a request, if ``request``) named ``event`` has a handler."""
        catch_alls = self._any_requests if request else self._any
        return event in self._by_event or bool(catch_alls and event not in RESERVED_EVENTS)

    def on_any(self, handler: H, *, requests: bool = False) -> H:
        if not callable(handler):
            raise IPCError(f"catch-all handler is not callable: {handler!r}")
        (self._any_requests if requests else self._any).append(handler)
        return handler

    def off_any(self, handler: Handler | None = None, *, requests: bool = False) -> None:
        catch_alls = self._any_requests if requests else self._any
        if handler is None:
            catch_alls.clear()
        elif handler in catch_alls:
            catch_alls.remove(handler)

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        if type(event) is not str or not event:
            raise EventNameError(f"an event name must be a non-empty str, got {event!r:.80}")
        if handler is None:

            def register(function: H) -> H:
                return self.on(event, function)

            return register
        if not callable(handler):
            raise IPCError(f"handler for {event!r} is not callable: {handler!r}")
        self._by_event.setdefault(event, []).append(handler)
        self._changed(event)
        return handler

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` from ``event``, or every handler of ``event`` when ``None``."""
        if type(event) is not str or not event:
            raise EventNameError(f"an event name must be a non-empty str, got {event!r:.80}")
        if handler is None:
            self._by_event.pop(event, None)
        else:
            handlers = self._by_event.get(event)
            if handlers and handler in handlers:
                handlers.remove(handler)
                if not handlers:
                    del self._by_event[event]
        self._changed(event)

    def get(self, event: str) -> list[Handler] | None:
        return self._by_event.get(event)

    def call_plain(
        self, event: str, args: tuple[Any, ...], log: ActorLog
    ) -> Awaitable[None] | _Missing | None:
        """Run the handlers of ``event``; return an awaitable for the rest only once one of
        them turns out to need awaiting (most handlers of events are plain functions), and
        :data:`UNHANDLED` if ``event`` has no handler."""
        handlers = self._targets(event, self._any) if self._any else self._by_event.get(event)
        if not handlers:
            return UNHANDLED
        if len(handlers) == 1:
            handler = handlers[0]
            try:
                result = handler(*args)
            except raised_by_the_call() as exc:
                self.failed(event, handler, exc, log)
                return None
            if result is not None and inspect.isawaitable(result):
                return self.finish(event, handler, result, log)
            return None
        return self.call(event, args, log)

    async def finish(
        self, event: str, handler: Handler, result: Awaitable[Any], log: ActorLog
    ) -> None:
        """Await a handler's awaitable ``result``, its errors logged."""
        try:
            await result
        except Exception as exc:
            self.awaited_failed(event, handler, exc, log)
        except BaseException as exc:
            if not raised_by_the_handler(exc):
                raise
            self.failed(event, handler, exc, log)

    async def call(self, event: str, args: tuple[Any, ...], log: ActorLog) -> None:
        """Run every handler of ``event`` in order; log and swallow their exceptions."""
        handlers = self._targets(event, self._any) if self._any else self._by_event.get(event)
        if not handlers:
            return
        for handler in tuple(handlers):
            try:
                result = handler(*args)
            except raised_by_the_call() as exc:
                self.failed(event, handler, exc, log)
                continue
            try:
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.awaited_failed(event, handler, exc, log)
            except BaseException as exc:
                if not raised_by_the_handler(exc):
                    raise
                self.failed(event, handler, exc, log)

    async def call_shielded(
        self, event: str, args: tuple[Any, ...], log: ActorLog, timeout: float
    ) -> None:
        """:meth:`call` for a lifecycle event, which runs while its connection is torn down:
        shielded from cancellation, bounded by ``timeout``. Without handlers, no scope."""
        if self._by_event.get(event):
            with anyio.move_on_after(timeout, shield=True):
                await self.call(event, args, log)

    async def answer(self, event: str, args: tuple[Any, ...], log: ActorLog) -> Any:
        """Run every handler of a request; the first one's result (or exception) is the answer,
        the others run after it whatever it did (a tracing catch-all sees every request).

        The caller has checked that ``event`` has a handler (:meth:`handles`).
        """
        first, *rest = tuple(self._targets(event, self._any_requests) or ())
        try:
            result = await self._answer_with(first, args)
        except Exception as exc:
            self.cut_short(event, first, exc, log)
            failure: Exception | None = exc
        else:
            failure = None
        # Outside the except: what the others raise is theirs, not chained to the answer's.
        await self._run_on(event, rest, args, log)
        if failure is not None:
            try:
                raise failure
            finally:
                del failure  # (no cycle through this frame)
        return result

    @staticmethod
    async def _answer_with(handler: Handler, args: tuple[Any, ...]) -> Any:
        """``handler``'s answer; a cancellation of its own is its PlainCancellation."""
        try:
            result = handler(*args)
        except Exception:
            raise
        except raised_by_the_call() as exc:
            raise PlainCancellation(exc) from None
        if inspect.isawaitable(result):
            try:
                result = await result
            except Exception:
                raise
            except BaseException as exc:
                if not raised_by_the_handler(exc):
                    raise
                raise PlainCancellation(exc) from None
        return result

    async def _run_on(
        self, event: str, rest: list[Handler], args: tuple[Any, ...], log: ActorLog
    ) -> None:
        """The handlers of a request after the one that answers: their failures are logged."""
        for handler in rest:
            try:
                extra = handler(*args)
            except raised_by_the_call() as exc:
                self.failed(event, handler, exc, log)
                continue
            try:
                if inspect.isawaitable(extra):
                    await extra
            except Exception as exc:
                self.awaited_failed(event, handler, exc, log)
            except BaseException as exc:
                if not raised_by_the_handler(exc):
                    raise
                self.failed(event, handler, exc, log)


def unhandled(seen: set[str], event: str, source: str, log: ActorLog) -> None:
    """Log, once per name, that ``event`` from ``source`` had no handler and was dropped.

    ``seen`` holds the names already logged; at most ``MAX_UNHANDLED_NAMES`` are remembered
    (a hostile peer can send a million distinct names), then one last line says so."""
    if event in seen or len(seen) > MAX_UNHANDLED_NAMES:
        return
    if len(seen) == MAX_UNHANDLED_NAMES:
        seen.add("")  # no event is named "": it marks "the last word was said"
        log.warning(
            f"{MAX_UNHANDLED_NAMES} event names arrived from {source} and others with no "
            "handler; more are counted (statistics().events_unhandled) but not logged"
        )
        return
    seen.add(event)
    shown = repr(event) if len(event) <= 80 else repr(event[:80]) + "..."
    log.warning(
        f"event {shown} from {source} has no handler and was dropped; register one "
        "with on() (logged once per event name)"
    )


def _name(handler: Handler) -> str:
    while isinstance(handler, partial):  # (a catch-all, bound to its event's name)
        handler = handler.func
    return getattr(handler, "__qualname__", None) or repr(handler)


class HandlerMethods:
    """``on`` and ``off`` for the classes users register handlers with: servers (handlers get
    ``(data, client)``), connections (``(data)``) and UDP servers (``(data, peer)``)."""

    _handlers: Handlers
    _codec: Codec
    #: The lifecycle events this kind of object fires (the others could never run a handler).
    _lifecycle: frozenset[str] = frozenset()

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``event``, or use ``on(event)`` as a decorator. Handlers may
        be plain functions or ``async def``; all of an event's handlers run, in order."""
        never = self._never_fired(event)
        if never is not None:
            raise ReservedEventError(f"{never}: the handler would never run; pick another name")
        return self._handlers.on(event, handler)

    def _never_fired(self, event: object) -> str | None:
        """Why a handler for ``event`` here could never run, if so: no peer can send a reserved
        name, and this kind of object fires only its own lifecycle events."""
        if type(event) is not str:
            return None  # (the registry says what an event name must be)
        if event.startswith(RESERVED_PREFIX):
            return f"{event!r} is reserved for ipcactors (names starting with {RESERVED_PREFIX!r})"
        if event in RESERVED_EVENTS and event not in self._lifecycle:
            fired = ", ".join(sorted(self._lifecycle)) or "none"
            return f"a {type(self).__name__} never fires {event!r} (its lifecycle events: {fired})"
        if event in self._codec.peer_reserved and event not in RESERVED_EVENTS:
            fired = ", ".join(sorted(self._lifecycle)) or "none"
            return (
                f"{event!r} is a lifecycle name of {self._codec.name}'s, which no peer can send "
                f"on its wire (this {type(self).__name__}'s lifecycle events: {fired})"
            )
        return None

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` from ``event``, or all of its handlers when ``None``."""
        self._handlers.off(event, handler)

    @overload
    def on_any(self, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on_any(self, handler: H) -> H: ...

    def on_any(self, handler: H | None = None) -> H | Callable[[H], H]:
        """Register a catch-all ``handler`` for every event a peer sends (also a decorator:
        ``@server.on_any()``), called after the event's own handlers with the event name
        first: ``handler(event, data, client)`` on a server, ``handler(event, data)`` on a
        connection, ``handler(event, data, peer)`` on a UDP server. Never called for lifecycle
        events or requests (see :meth:`on_any_request`). For logging, tracing and bridges."""
        if handler is None:
            return partial(self._handlers.on_any, requests=False)
        return self._handlers.on_any(handler)

    @overload
    def on_any_request(self, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on_any_request(self, handler: H) -> H: ...

    def on_any_request(self, handler: H | None = None) -> H | Callable[[H], H]:
        """Register a catch-all ``handler`` for every request a peer sends, called as
        :meth:`on_any`'s are. A request with no handler of its own is answered by the first
        catch-all's return value (or exception) instead of a
        :class:`~ipcactors.NoHandlerError`; one with handlers of its own is answered by them
        and the catch-alls run after them, their results ignored."""
        if handler is None:
            return partial(self._handlers.on_any, requests=True)
        return self._handlers.on_any(handler, requests=True)

    def off_any(self, handler: Handler | None = None, *, requests: bool = False) -> None:
        """Remove the catch-all ``handler`` of events (of requests if ``requests``), or every
        such catch-all when ``None``."""
        self._handlers.off_any(handler, requests=requests)
