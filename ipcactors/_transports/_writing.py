"""What a stream's writer drains, and how frames are joined into writes: shared by the writer in
``_streams`` and the asyncio fast path's own (``_asyncio``). No I/O here.

Invariant: this layer does not import the ones above: the writer drains a :class:`FrameQueue`
(``_core._outbox.Outbox`` is the one), and a large body is never copied to be written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from .._proto._messages import FdFrame, Frame

__all__ = ["COALESCE_LIMIT", "FrameQueue", "coalesce"]

COALESCE_LIMIT = 1024 * 1024  # join small frames into writes of at most about this many bytes


class FrameQueue(Protocol):
    """What a stream's writer drains: the frames for one peer, in order. ``_core._outbox``'s
    ``Outbox`` is the one; this names what the writer uses of it, so that this layer does not
    import the one above."""

    #: Called by the queue when frames arrive while the writer waits (set by the writer).
    on_frames: Callable[[], None] | None
    #: Set by the writer while it idles: writes a request or reply at once, returns whether
    #: all of it went (else the writer finishes it before anything else).
    direct: Callable[[Frame], bool] | None
    #: Called by the writer when it finds the connection broken.
    on_lost: Callable[[], None] | None

    @property
    def closed(self) -> bool: ...

    def __len__(self) -> int: ...

    def take(self, budget: int | None = None) -> list[Frame]:
        """Frames to write now, up to about ``budget`` bytes."""
        ...

    def sent(self) -> None:
        """The frames taken last are all in the kernel."""
        ...

    def wake(self) -> None:
        """Have the writer look again."""
        ...

    async def wait_frames(self) -> None:
        """Return once there are frames to take (or the queue closed)."""
        ...


def coalesce(frames: list[Frame]) -> Iterator[bytes]:
    """Yield the bytes of ``frames`` in as few writes as is sensible, copying large bodies never;
    an :class:`FdFrame` is yielded as it is, in a write of its own."""
    small: list[bytes] = []
    size = 0
    for frame in frames:
        if isinstance(frame, FdFrame):  # its descriptors go with its own first byte
            if small:
                yield b"".join(small)
                small, size = [], 0
            yield frame
        elif isinstance(frame, bytes):
            small.append(frame)
            size += len(frame)
            if size >= COALESCE_LIMIT:
                yield b"".join(small)
                small, size = [], 0
        else:
            header, body = frame
            small.append(header)
            yield b"".join(small)
            small, size = [], 0
            yield body
    if small:
        yield small[0] if len(small) == 1 else b"".join(small)
