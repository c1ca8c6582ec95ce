"""Closing from a handler: the close waits until the handler has returned.

A handler that awaits the close of something it runs under (its connection or client, its
server, its actor) would be cancelled by that close before it returned: a request's reply
lost, the code after the close never run, and the close, running in the handler's own task,
cut short with it (what it still had to do, such as reporting the events a client never
acknowledged, skipped). A ``disconnect`` handler, shielded as its connection is torn down,
would instead wait for the close, which waits for it: both until ``close_timeout``.

Invariants:
- While a handler of a peer runs in a task (a request's, in ``Peer._answer`` and
  ``Peer._answer_later``; an awaited event's and the ``connect`` handlers, in ``Channel``;
  ``disconnect``, ``destroy`` and ``error``, in ``Peer._call_lifecycle``; a UDP server's,
  in ``DatagramServer``, for a ``DatagramPeer``),
  :func:`kept_until_handled` sees its :class:`Handling`, which names that peer.
- A close that would cancel the handler, or wait for it (the closer decides, from the peer:
  the peer's own close, its server's, its actor's), is not run there:
  its start is kept, and the close returns at once, so the code after it runs. Once the
  handler has returned or raised (a request's reply queued), the kept closes start, each in
  a task of a group that close does not cancel: the close then flushes the reply.
- Waiting in the handler for a close it keeps would wait on itself: the closer's wait raises
  instead (:func:`keeps`).
- Tasks the handler starts inherit its context. Once the handler is done its
  :class:`Handling` keeps nothing more (``closes`` is ``None``): a close awaited later in such
  a task runs there, as it would anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["Handling", "keeps", "kept_until_handled"]


class Handling:
    """The peer whose handler the current task runs, and the closes kept meanwhile; used as
    ``with Handling(peer):`` around the handler (leaving it is :meth:`handled`)."""

    __slots__ = ("_token", "closes", "peer")

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.closes: list[Callable[[], None]] | None = []
        self._token = _current.set(self)

    def __enter__(self) -> Handling:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handled()

    def handled(self) -> None:
        """The handler is done (a request's reply queued, or none will be): start the closes
        kept, keep no more."""
        _current.reset(self._token)
        closes, self.closes = self.closes, None
        for start in closes or ():
            start()


_current: ContextVar[Handling | None] = ContextVar("ipcactors_handling", default=None)


def kept_until_handled(runs_under: Callable[[Any], bool], start: Callable[[], None]) -> bool:
    """In a handler that ``runs_under`` what closes (asked with the handler's peer; such a
    close would cancel the handler, or wait for it): keep ``start`` (which starts that close
    elsewhere) for when the handler is done. Whether it was kept (else the caller closes
    now)."""
    handling = _current.get()
    if handling is None or handling.closes is None or not runs_under(handling.peer):
        return False
    handling.closes.append(start)
    return True


def keeps(start: Callable[[], None]) -> bool:
    """Whether the current task's handler keeps ``start`` for when it is done: waiting there
    for what ``start`` starts would wait on the handler, which waits for it."""
    handling = _current.get()
    return handling is not None and start in (handling.closes or ())
