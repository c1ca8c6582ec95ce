"""A task group that a cancellation from outside does not reach: what an actor runs (its
server, its connections' readers and writers, its timers) must outlive the cancellation of the
block that owns it long enough to flush, as leaving the block does.

    hosting = Hosting()
    group = await hosting.__aenter__()    # in the owner's task, as its block starts
    ...                                   # the block's body: cancelled from outside or not
    group.cancel_scope.cancel()           # the owner's close, once it has flushed
    await hosting.__aexit__(...)          # as the block ends

Invariants:
- The group lives in one host task, inside a shielded scope, started in an outer task group
  that the owner enters in its own task: a cancellation of the owner's enclosing scopes
  cancels the block's body, never the group's tasks. Only ``group.cancel_scope.cancel()`` (the
  owner's close) ends them; ``__aexit__`` waits for that.
- What the group's tasks raise (a handler's ``SystemExit``, a bug) ends the block as when the
  group was the block's own: the outer group is cancelled (the body with it), and
  ``__aexit__`` raises it, as the group raised it (not wrapped once more).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

__all__ = ["Hosting"]


class Hosting:
    __slots__ = ("_failure", "_outer", "_shield", "group")

    def __init__(self) -> None:
        self.group: TaskGroup | None = None
        self._outer: TaskGroup | None = None
        self._failure: BaseException | None = None
        self._shield = anyio.CancelScope(shield=True)  # the host's (see _host)

    async def __aenter__(self) -> TaskGroup:
        outer = anyio.create_task_group()
        await outer.__aenter__()
        self._outer = outer
        started = anyio.Event()
        outer.start_soon(self._host, started)
        # Shielded (one loop pass): anyio's start(), cancelled here, would wait for a host
        # that its shield keeps running.
        with anyio.CancelScope(shield=True):
            await started.wait()
        if self.group is None:  # the host was cancelled before it could shield itself
            outer.cancel_scope.cancel()
            await outer.__aexit__(None, None, None)
            await anyio.lowlevel.checkpoint()  # raises the cancellation that did it
            raise RuntimeError("the hosting task ended before it started")  # pragma: no cover
        return self.group

    async def _host(self, started: anyio.Event) -> None:
        try:
            with self._shield:
                try:
                    async with anyio.create_task_group() as group:
                        self.group = group
                        started.set()
                        await anyio.sleep_forever()
                except BaseException as exc:  # a task's: the block ends, and says why
                    self._failure = exc
                    assert self._outer is not None
                    self._outer.cancel_scope.cancel()
        finally:
            started.set()  # (also if cancelled before it was shielded)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        """Leave the outer group (the host task ends once the group is cancelled); raise
        what the group's tasks raised, if they did."""
        assert self._outer is not None
        try:
            suppress = await self._outer.__aexit__(exc_type, exc, tb)
        finally:
            failure, self._failure = self._failure, None
            if failure is not None:
                try:
                    raise failure
                finally:
                    del failure
        return suppress
