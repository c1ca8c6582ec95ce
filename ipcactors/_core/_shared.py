"""Shared memory on one connection: large numpy arrays through sealed memfd segments.

Negotiated in hello/welcome (``shm``: the bytes of segments each side accepts) on a Unix socket
whose stream passes descriptors, when both sides set ``Config.max_shared_bytes`` (docs/protocol.md
5.4, docs/guide.md "Large arrays and shared memory"). One :class:`SharedMemory` per channel plays
both roles:

- Sending: a pool of segments (``_transports._memfd``), each announced once (a ``Share`` frame
  carrying its descriptor, in the outbox's priority lane, so it precedes every frame that uses
  it). An array of at least ``threshold`` bytes is copied into a free slot (page-aligned, first
  fit) and the frame names (segment, offset, dtype, shape); an array made by :meth:`empty` is
  named where it is, without a copy. A slot is reused only once the peer released every array
  it got from it, and (for :meth:`empty`) the producer dropped its array. Segments are made
  while their total stays within the budget (ours and the peer's ``max_shared_bytes``, the
  smaller): past it an array takes the socket path. Never a new segment per message.
- Receiving: each announced descriptor is checked (``check_segment``: a regular file, the
  announced size, within our limit, sealed against shrink and grow), mapped read-only (and
  privately, for copy-on-write arrays) and closed at once. An array is a view of the mapping;
  when the last view of it is garbage-collected (``weakref.finalize``, in any thread), its place
  is released back to the sender in a ``Release`` frame sent from the loop.

Invariants:
- Descriptors: every one the peer passes is claimed by a ``Share`` of the read that brought it,
  or the peer is dropped (:class:`DecodeError`); at most :data:`MAX_SEGMENTS` per connection.
- A frame naming our segments (``SharedFrame``) goes out only on this channel: when it ends,
  those still queued are dropped (counted in ``shared_dropped``; at most once, like every
  frame the connection lost) and the pool is closed. Mappings live on while arrays use them:
  the peer's death, or ours closing the connection, never invalidates an array.
"""

from __future__ import annotations

import os
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._errors import DecodeError, IPCError
from .._proto._messages import FdFrame
from .._transports._backend import threadsafe_caller
from .._transports._memfd import (
    PAGE,
    Mapping,
    Segment,
    check_segment,
    drop_pages,
    map_segment,
)

if TYPE_CHECKING:
    import numpy as np

    from .._proto._codec import Encoder
    from ._outbox import Outbox
    from ._stats import PeerCounters

__all__ = ["MAX_SEGMENTS", "SEGMENT_SIZE", "SharedMemory", "close_fds", "shared_offer"]

#: The smallest segment made: slots for several arrays per descriptor passed.
SEGMENT_SIZE: Final = 16 * 1024 * 1024
#: Segments per connection and direction; also the cap on descriptors a peer may pass.
MAX_SEGMENTS: Final = 64


def shared_offer(value: Any) -> int | None:
    """The ``shm`` of a hello or welcome: the bytes of segments that side accepts, if valid."""
    return value if type(value) is int and value > 0 else None


def close_fds(fds: deque[int] | list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _pages(offset: int, nbytes: int) -> tuple[int, int]:
    """The pages ``[start, end)`` that bytes ``[offset, offset + nbytes)`` touch."""
    return offset - offset % PAGE, -(-(offset + nbytes) // PAGE) * PAGE


def _pages_only_of(
    offset: int, nbytes: int, others: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The page ranges of ``[offset, offset + nbytes)`` that none of ``others`` (offset,
    nbytes) touches."""
    start, end = _pages(offset, nbytes)
    ranges = []
    for other_start, other_end in sorted(_pages(o, n) for o, n in others):
        if other_start >= end:
            break
        if other_end <= start:
            continue
        if other_start > start:
            ranges.append((start, other_start))
        start = other_end
        if start >= end:
            return ranges
    if start < end:
        ranges.append((start, end))
    return ranges


class _Pool:
    """One of our segments: its mapping as bytes, and its free extents (offset, size)."""

    __slots__ = ("base", "bytes", "free", "segment")

    def __init__(self, segment: Segment) -> None:
        import numpy as np

        self.segment = segment
        self.bytes = np.frombuffer(segment.map, np.uint8)
        self.base: int = self.bytes.ctypes.data
        self.free: list[tuple[int, int]] = [(0, segment.size)]

    def take(self, size: int) -> int | None:
        for index, (offset, length) in enumerate(self.free):
            if length >= size:
                if length == size:
                    del self.free[index]
                else:
                    self.free[index] = (offset + size, length - size)
                return offset
        return None

    def give(self, offset: int, size: int) -> None:
        free = self.free
        index = bisect_right(free, (offset, size))
        free.insert(index, (offset, size))
        # Merge with the neighbours.
        if index + 1 < len(free) and offset + size == free[index + 1][0]:
            free[index] = (offset, size + free[index + 1][1])
            del free[index + 1]
        if index > 0 and free[index - 1][0] + free[index - 1][1] == offset:
            free[index - 1] = (free[index - 1][0], free[index - 1][1] + free[index][1])
            del free[index]


class _Mapped:
    """One of the peer's segments, mapped."""

    __slots__ = ("private", "shared", "size")

    def __init__(self, shared: Mapping, private: Mapping | None, size: int) -> None:
        self.shared = shared
        self.private = private
        self.size = size


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` (bound) called while its object lives, without keeping it alive."""
    reference = weakref.WeakMethod(method)

    def call() -> None:
        bound = reference()
        if bound is not None:
            bound()

    return call


class SharedMemory:
    """One channel's shared memory (see the module's doc)."""

    def __init__(
        self,
        *,
        budget: int,
        accept: int,
        threshold: int,
        copy_on_write: bool,
        encoder: Encoder,
        outbox: Outbox,
        counters: PeerCounters,
    ) -> None:
        self.threshold = threshold
        self._budget = budget  # bytes of segments we may make
        self._accept = accept  # bytes of the peer's segments we map
        self._copy_on_write = copy_on_write
        self._encoder = encoder
        self._outbox = outbox
        self.closed = False
        # Sending side.
        self._pools: list[_Pool] = []
        self._made = 0
        #: Slots in use: (segment, start) -> [size, references]; references are arrays the
        #: peer holds, plus one while the producer holds an array from `empty`.
        self._slots: dict[tuple[int, int], list[int]] = {}
        #: What the peer holds: (segment, offset named) -> [slot start, count].
        self._lent: dict[tuple[int, int], list[int]] = {}
        # Receiving side.
        self._mapped: dict[int, _Mapped] = {}
        self._mapped_bytes = 0
        #: Copy-on-write arrays alive, per segment: (offset, bytes) each. Their private pages
        #: are dropped when the last array over them goes (the same place may be sent twice).
        self._private_live: dict[int, list[tuple[int, int]]] = {}
        #: Descriptors passed by the peer, waiting for their Share (see the channel).
        self.fds: deque[int] = deque()
        # Garbage collection may happen in any thread: places go through this deque, and the
        # loop sends them (one Release per loop pass).
        self._released: deque[tuple[int, int, Any]] = deque()
        self._returned: deque[tuple[int, int]] = deque()  # producers' arrays from `empty`
        self._scheduled = False
        self._call_soon = threadsafe_caller(_weakly(self._flush))  # (no cycle through it)
        self._counters = counters

    # --- sending ----------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Bytes of our slots in use."""
        return sum(size for size, _ in self._slots.values())

    def _allocate(self, nbytes: int) -> tuple[int, int] | None:
        size = max(PAGE, -(-nbytes // PAGE) * PAGE)
        for number, pool in enumerate(self._pools):
            offset = pool.take(size)
            if offset is not None:
                return number, offset
        segment_size = max(size, SEGMENT_SIZE)
        if self._made + segment_size > self._budget:
            segment_size = size  # the rest of the budget may still hold this one
        if self._made + segment_size > self._budget or len(self._pools) >= MAX_SEGMENTS:
            return None
        try:
            segment = Segment(segment_size)
        except OSError:
            return None  # out of memory or descriptors: the socket path
        pool = _Pool(segment)
        number = len(self._pools)
        self._pools.append(pool)
        self._made += segment_size
        # Before any frame that names it: the priority lane is taken first.
        self._outbox.put_reply(FdFrame(self._encoder.share(number, segment_size), (segment.fd,)))
        offset = pool.take(size)
        assert offset == 0
        return number, offset

    def _find(self, array: Any) -> tuple[int, int, int] | None:
        """(segment, offset, slot start) of an array inside a live slot of ours."""
        if not array.flags.c_contiguous:
            return None
        address = array.__array_interface__["data"][0]
        for number, pool in enumerate(self._pools):
            offset = address - pool.base
            if 0 <= offset < pool.segment.size:
                for (segment, start), (size, _) in self._slots.items():
                    if (
                        segment == number
                        and start <= offset
                        and offset + array.nbytes <= start + size
                    ):
                        return number, offset, start
                return None
        return None

    def place(self, array: Any) -> tuple[int, int] | None:
        if self.closed:
            return None
        found = self._find(array) if self._pools else None
        if found is not None:  # made by `empty`: named where it is
            number, offset, start = found
            self._slots[number, start][1] += 1
        else:
            place = self._allocate(array.nbytes)
            if place is None:
                self._counters.shared_fallbacks += 1
                return None
            number, offset = start_offset = place
            start = offset
            pool = self._pools[number]
            size = max(PAGE, -(-array.nbytes // PAGE) * PAGE)
            self._slots[start_offset] = [size, 1]
            target = pool.bytes[offset : offset + array.nbytes].view(array.dtype)
            target.reshape(array.shape)[...] = array  # the one copy (any layout)
        lent = self._lent.get((number, offset))
        if lent is None:
            self._lent[number, offset] = [start, 1]
        else:
            lent[1] += 1
        self._counters.shared_sent += 1
        return number, offset

    def unplace(self, place: tuple[int, int]) -> None:
        self._counters.shared_sent -= 1
        self._forget(place)

    def _forget(self, place: tuple[int, int]) -> None:
        lent = self._lent.get(place)
        if lent is None:
            raise DecodeError(f"the peer released {place}, which it was not given")
        lent[1] -= 1
        if not lent[1]:
            del self._lent[place]
        self._unref(place[0], lent[0])

    def _unref(self, number: int, start: int) -> None:
        slot = self._slots[number, start]
        slot[1] -= 1
        if not slot[1]:
            del self._slots[number, start]
            self._pools[number].give(start, slot[0])

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray[Any, Any] | None:
        """A writable array in a free slot, that frames name without a copy; ``None`` if the
        pool has no room (the caller makes an ordinary one)."""
        import numpy as np

        dtype = np.dtype(dtype)
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * dtype.itemsize
        if self.closed or nbytes < 1:
            return None
        place = self._allocate(nbytes)
        if place is None:
            return None
        number, start = place
        self._slots[place] = [max(PAGE, -(-nbytes // PAGE) * PAGE), 1]
        pool = self._pools[number]
        base = np.frombuffer(pool.segment.map, dtype, count, start)
        weakref.finalize(base, self._returned_from_producer, number, start)
        return base.reshape(shape)

    def _returned_from_producer(self, number: int, start: int) -> None:
        self._returned.append((number, start))  # any thread: handled in the loop
        self._schedule()

    def released(self, places: list[tuple[int, int]]) -> None:
        for place in places:
            self._forget(place)

    # --- receiving --------------------------------------------------------------------------

    def segment(self, segment: int, size: int) -> None:
        if not self.fds:
            raise DecodeError(f"segment {segment} was announced without its descriptor")
        fd = self.fds.popleft()
        try:
            if segment != len(self._mapped):  # (none is ever unmapped while the channel lives)
                raise DecodeError(
                    f"segment {segment} was announced twice"
                    if segment in self._mapped
                    else f"segment {segment} was announced where segment {len(self._mapped)} "
                    "comes next (they are numbered 0, 1, 2, ...)"
                )
            if len(self._mapped) >= MAX_SEGMENTS:
                raise DecodeError(f"the peer shared more than {MAX_SEGMENTS} segments")
            room = self._accept - self._mapped_bytes
            check_segment(fd, size, room)
            try:
                shared = map_segment(fd, size)
                private = map_segment(fd, size, private=True) if self._copy_on_write else None
            except OSError as exc:  # (not opened for reading; or we are short of memory)
                raise DecodeError(f"cannot map segment {segment} ({size} bytes): {exc}") from exc
        finally:
            os.close(fd)
        self._mapped[segment] = _Mapped(shared, private, size)
        self._mapped_bytes += size

    def array(self, segment: int, offset: int, dtype: Any, shape: tuple[int, ...]) -> Any:
        import numpy as np

        mapped = self._mapped.get(segment)
        if mapped is None:
            raise DecodeError(f"an array names segment {segment}, which was not shared")
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * dtype.itemsize
        if offset + nbytes > mapped.size:
            raise DecodeError(
                f"an array of {nbytes} bytes at {offset} is beyond segment {segment} "
                f"({mapped.size} bytes)"
            )
        view = mapped.shared.view if mapped.private is None else mapped.private.view
        # `base` is what every view of the array refers to: it dies with the last of them.
        base = np.frombuffer(view, dtype, count, offset)
        if mapped.private is not None:
            self._private_live.setdefault(segment, []).append((offset, nbytes))
        weakref.finalize(base, self._release, segment, offset, nbytes, mapped.private)
        self._counters.shared_received += 1
        return base.reshape(shape)

    def _release(self, segment: int, offset: int, nbytes: int, private: Any) -> None:
        self._released.append((segment, offset, (nbytes, private)))  # any thread
        self._schedule()

    # --- the loop's side ----------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._call_soon()

    def release_now(self) -> None:
        """Send the releases the loop has not sent yet, now (before a reply: see
        ``Peer._reply``); the scheduled flush then finds nothing left."""
        if self._released or self._returned:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        while self._returned:
            self._unref(*self._returned.popleft())
        places = []
        while self._released:
            segment, offset, (nbytes, private) = self._released.popleft()
            if private is not None:
                live = self._private_live.get(segment, [])
                live.remove((offset, nbytes))
                # The next array there must read the segment, not our old private pages: those
                # no other array still uses go now, the others with the last array over them.
                for start, end in _pages_only_of(offset, nbytes, live):
                    drop_pages(private, start, end - start)
            places.append((segment, offset))
        if places:
            try:
                for frame in self._encoder.release(places):
                    self._outbox.put_reply(frame)
            except IPCError:
                pass  # the outbox is closed: the connection ends, and its segments with it

    def close(self) -> None:
        """The channel ended: stop sending and receiving; close our descriptors (mappings live
        on while arrays use them)."""
        self.closed = True
        close_fds(self.fds)
        # Ours and the peer's mappings go now, not when this object does (a channel's parts
        # refer to each other: the collector's to free), except under arrays still alive.
        self._mapped.clear()
        for pool in self._pools:
            pool.segment.close()
        self._pools.clear()
        self._slots.clear()
        self._lent.clear()
