"""Closing from a request handler: the close waits until the handler has answered.

A request handler that awaits the close of something it runs under (its connection or client,
its server, its actor) would be cancelled by that close before it returned: its reply lost, and
the close, running in the handler's own task, cut short with it.

Invariants:
- While a request handler runs in a task (``Peer._answer``, ``Peer._answer_later``),
  :func:`kept_until_answered` sees that request's :class:`Answering`, which names the peer it
  answers.
- A close that would cancel the handler (the closer decides, from the peer) is not run there:
  its start is kept, and the close returns at once, so the code after it runs. Once the
  handler has returned or raised and its reply is queued, the kept closes start, each in a
  task of a group that close does not cancel: the close then flushes the reply.
- Tasks the handler starts inherit its context. Once the handler is done its
  :class:`Answering` keeps nothing more (``closes`` is ``None``): a close awaited later in such
  a task runs there, as it would anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["Answering", "kept_until_answered"]


class Answering:
    """The request a task's handler is answering: its peer, and the closes kept meanwhile."""

    __slots__ = ("_token", "closes", "peer")

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.closes: list[Callable[[], None]] | None = []
        self._token = _current.set(self)

    def answered(self) -> None:
        """The reply is queued (or none will be): start the closes kept, keep no more."""
        _current.reset(self._token)
        closes, self.closes = self.closes, None
        for start in closes or ():
            start()


_current: ContextVar[Answering | None] = ContextVar("ipcactors_answering", default=None)


def kept_until_answered(would_cancel: Callable[[Any], bool], start: Callable[[], None]) -> bool:
    """In a request handler whose peer ``would_cancel`` says a close would cancel: keep
    ``start`` (which starts that close elsewhere) for when it has answered. Whether it was
    kept (else the caller closes now)."""
    answering = _current.get()
    if answering is None or answering.closes is None or not would_cancel(answering.peer):
        return False
    answering.closes.append(start)
    return True
