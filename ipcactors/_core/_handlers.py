"""Event handler registries: ``on``/``off``, sync or async handlers, errors contained.

Invariant: an exception raised by an event or lifecycle handler is logged and goes no further;
the connection it came from lives on.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from .._errors import EventNameError, IPCError
from .._log import ActorLog

__all__ = ["MAX_UNHANDLED_NAMES", "UNHANDLED", "Handler", "HandlerMethods", "Handlers", "unhandled"]

MAX_UNHANDLED_NAMES = 256  # event names without a handler logged per server or connection

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


class _Missing(enum.Enum):
    UNHANDLED = "unhandled"


#: What :meth:`Handlers.call_plain` returns for an event nobody handles.
UNHANDLED = _Missing.UNHANDLED


class Handlers:
    """Handlers by event name, called in the order they were registered."""

    __slots__ = ("_by_event", "_lone_plain")

    def __init__(self) -> None:
        self._by_event: dict[str, list[Handler]] = {}
        # Events whose only handler is a plain function: a request for one is answered inline.
        self._lone_plain: dict[str, Handler] = {}

    def _changed(self, event: str) -> None:
        handlers = self._by_event.get(event)
        if handlers and len(handlers) == 1 and not inspect.iscoroutinefunction(handlers[0]):
            self._lone_plain[event] = handlers[0]
        else:
            self._lone_plain.pop(event, None)

    def lone_plain(self, event: str) -> Handler | None:
        """The handler of ``event`` if it is its only one and not an ``async def``."""
        return self._lone_plain.get(event)

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
        handlers = self._by_event.get(event)
        if not handlers:
            return UNHANDLED
        if len(handlers) == 1:
            handler = handlers[0]
            try:
                result = handler(*args)
            except Exception as exc:
                log.exception(f"handler {_name(handler)} for {event!r} raised", exc)
                return None
            if result is not None and inspect.isawaitable(result):
                return self._finish(event, handler, result, log)
            return None
        return self.call(event, args, log)

    async def _finish(
        self, event: str, handler: Handler, result: Awaitable[Any], log: ActorLog
    ) -> None:
        try:
            await result
        except Exception as exc:
            log.exception(f"handler {_name(handler)} for {event!r} raised", exc)

    async def call(self, event: str, args: tuple[Any, ...], log: ActorLog) -> None:
        """Run every handler of ``event`` in order; log and swallow their exceptions."""
        handlers = self._by_event.get(event)
        if not handlers:
            return
        for handler in tuple(handlers):
            try:
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.exception(f"handler {_name(handler)} for {event!r} raised", exc)

    async def answer(self, event: str, args: tuple[Any, ...], log: ActorLog) -> Any:
        """Run every handler of a request; the first one's result (or exception) is the answer.

        The caller has checked that ``event`` has a handler.
        """
        first, *rest = tuple(self._by_event[event])
        result = first(*args)
        if inspect.isawaitable(result):
            result = await result
        for handler in rest:
            try:
                extra = handler(*args)
                if inspect.isawaitable(extra):
                    await extra
            except Exception as exc:
                log.exception(f"handler {_name(handler)} for {event!r} raised", exc)
        return result


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
    return getattr(handler, "__qualname__", None) or repr(handler)


class HandlerMethods:
    """``on`` and ``off`` for the classes users register handlers with: servers (handlers get
    ``(data, client)``), connections (``(data)``) and UDP servers (``(data, peer)``)."""

    _handlers: Handlers

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``event``, or use ``on(event)`` as a decorator. Handlers may
        be plain functions or ``async def``; all of an event's handlers run, in order."""
        return self._handlers.on(event, handler)

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` from ``event``, or all of its handlers when ``None``."""
        self._handlers.off(event, handler)
