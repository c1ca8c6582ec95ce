"""What both ends of a conversation share: emit and request towards a peer, and the handling of
what the peer sends. :class:`~ipcactors.Client` (a server's view of one client) and
:class:`~ipcactors.Connection` (an actor's link to a server) are peers.

Invariant: frames reach the wire only through the peer's outbox, in the order they were queued.
"""

from __future__ import annotations

import traceback
from typing import Any

import anyio

from ._config import Config
from ._errors import RequestTimeoutError, ReservedEventError
from ._handlers import Handlers
from ._log import ActorLog
from ._outbox import Outbox
from ._protocol import Event, Frame, FrameEncoder, Request, is_reserved
from ._requests import NO_HANDLER, Requests

__all__ = ["Peer", "answer", "check_event_name"]


def check_event_name(event: str) -> None:
    if type(event) is not str or not event:
        raise ReservedEventError(f"an event name must be a non-empty string, got {event!r}")
    if is_reserved(event):
        raise ReservedEventError(
            f"{event!r} is reserved for local lifecycle events (connect, disconnect, destroy, "
            "error) or for ipcactors itself (names starting with 'ipcactors.'); pick another name"
        )


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class Peer:
    """Base of :class:`Client` and :class:`Connection`; not instantiated directly."""

    def __init__(self, config: Config, log: ActorLog, handlers: Handlers) -> None:
        self._config = config
        self._log = log
        self._handlers = handlers
        self._encoder = FrameEncoder(config.limits)
        self._outbox = Outbox(config.max_outbox_bytes)
        self._requests = Requests()

    # --- sending ------------------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` with ``data`` (anything msgpack encodes) to the peer. At most once.

        Returns as soon as the frame is queued (without a loop pass while the outbox has room);
        waits while the outbox is full. Raises :class:`EncodeError` for data msgpack cannot
        encode, :class:`ClosedError` once this peer is gone for good.
        """
        check_event_name(event)
        await self._outbox.put(self._encoder.event(event, data))

    async def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send ``event`` and return what the peer's first handler for it returns.

        Raises :class:`RemoteError` (the handler raised; type, message and traceback attached),
        :class:`NoHandlerError`, :class:`RequestTimeoutError` after ``timeout`` seconds
        (default ``Config.request_timeout``), or :class:`ConnectionLostError` if the connection
        drops before the reply arrives.
        """
        check_event_name(event)
        if timeout is None:
            timeout = self._config.request_timeout
        request_id, pending = self._requests.open(event)
        try:
            frame = self._encoder.request(event, data, request_id)
            with anyio.move_on_after(timeout):
                pending.seq = await self._outbox.put(frame)
                await pending.done.wait()
        finally:
            self._requests.discard(request_id)
        if pending.error is not None:
            raise pending.error
        if not pending.done.is_set():
            raise RequestTimeoutError(
                f"no reply to request {event!r} within {timeout} s; a late reply is ignored"
            )
        return pending.result

    # --- receiving (called by the channel) ----------------------------------------------------

    def _handler_args(self, data: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    async def _on_event(self, message: Event) -> None:
        await self._handlers.call(message.event, self._handler_args(message.data), self._log)

    async def _answer(self, message: Request) -> None:
        args = self._handler_args(message.data)
        frame = await answer(self._handlers, message, args, self._encoder, self._log)
        try:
            await self._outbox.put(frame)
        except Exception as exc:  # closed: the requester learns of the lost connection itself
            self._log.debug(f"reply to {message.event!r} not sent: {exc}")


async def answer(
    handlers: Handlers,
    message: Request,
    args: tuple[Any, ...],
    encoder: FrameEncoder,
    log: ActorLog,
) -> Frame:
    """Run the handlers of a request; return the reply (or error reply) frame."""
    if not handlers.get(message.event):
        return encoder.error_reply(message.id, NO_HANDLER, f"no handler for {message.event!r}", "")
    try:
        result = await handlers.answer(message.event, args, log)
        return encoder.reply(message.id, result)
    except Exception as exc:
        return encoder.error_reply(message.id, _type_name(exc), str(exc), traceback.format_exc())
