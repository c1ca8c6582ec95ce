"""What a stream's writer drains, and how frames are joined into writes: shared by the writer in
``_streams`` and the asyncio fast path's own (``_asyncio``). No I/O here.

Invariant: this layer does not import the ones above: the writer drains a :class:`FrameQueue`
(``_core._outbox.Outbox`` is the one), and a large part of a frame (a payload out of band, a view
of the sender's memory) is never copied or joined to be written: writers hand it to the kernel
as it is, in slices if need be.
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Protocol

from .._proto._messages import BatchFrame, FdFrame, Frame, FramePart, SharedFrame

__all__ = [
    "COALESCE_LIMIT",
    "LARGE_PART",
    "MAX_PARTS",
    "FrameQueue",
    "coalesce",
    "widen_send_buffer",
]

COALESCE_LIMIT = 1024 * 1024  # join small frames into writes of at most about this many bytes
LARGE_PART = 64 * 1024  # a frame's part this long is written as it is, never joined
MAX_PARTS = 64  # parts written by one sendmsg (far below IOV_MAX)
# The kernel's send buffer of a Unix socket that writes a large part (the default, ~208 KiB,
# makes a 64 MiB array take hundreds of wake-ups on each side); a bound, not an allocation.
LARGE_SEND_BUFFER = 4 * 1024 * 1024
_WHOLE = frozenset({bytes, SharedFrame, BatchFrame})  # frames in one piece: joined as they are


def widen_send_buffer(sock: socket.socket) -> None:
    """Let the kernel take up to ``LARGE_SEND_BUFFER`` bytes of large payloads at once on a
    Unix socket (done once a connection writes a large part; TCP keeps its autotuning)."""
    if sock.family == socket.AF_UNIX:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE_SEND_BUFFER)
        except OSError:
            pass  # a limit of the system's: the default buffer works, in more wake-ups


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

    def give_back(self, handed: int = 0, *, unsent: int | None = None) -> None:
        """Of the write under way (the frames taken last, or the one written directly), the
        kernel has (or may have) the first ``handed`` bytes (all but the last ``unsent``, if
        given), and will never have more: the peer is gone, or the connection was given up
        (the writer stops)."""
        ...

    def wake(self) -> None:
        """Have the writer look again."""
        ...

    async def wait_frames(self) -> None:
        """Return once there are frames to take (or the queue closed)."""
        ...


def coalesce(frames: list[Frame]) -> Iterator[FramePart]:
    """Yield the bytes of ``frames`` in as few writes as is sensible: small frames and parts
    joined, each large part (``LARGE_PART`` bytes or more) alone and as it is, never copied;
    an :class:`FdFrame` is yielded as it is, in a write of its own."""
    if _WHOLE.issuperset(map(type, frames)):  # in C: small events, no part to keep apart
        yield from _joined(frames)
        return
    small: list[FramePart] = []
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
        else:
            for part in frame:
                if len(part) >= LARGE_PART:
                    if small:
                        yield small[0] if len(small) == 1 else b"".join(small)
                        small, size = [], 0
                    yield part
                else:
                    small.append(part)
                    size += len(part)
        if size >= COALESCE_LIMIT:
            yield b"".join(small)
            small, size = [], 0
    if small:
        yield small[0] if len(small) == 1 else b"".join(small)


def _joined(frames: list[Frame]) -> Iterator[FramePart]:
    """:func:`coalesce` for frames that are all whole ``bytes``: joined into writes that end
    at the first frame reaching ``COALESCE_LIMIT`` bytes, as the general loop does, with the
    cuts found by bisection (the frames are never looked at one by one in Python)."""
    if len(frames) == 1:
        yield frames[0]  # type: ignore[misc]  # (bytes: checked by the caller)
        return
    ends = list(accumulate(map(len, frames)))
    start = 0
    base = 0
    while start < len(frames):
        stop = bisect_left(ends, base + COALESCE_LIMIT, start) + 1
        yield b"".join(frames[start:stop])  # type: ignore[arg-type]
        base = ends[min(stop, len(ends)) - 1]
        start = stop
