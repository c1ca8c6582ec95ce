"""The outbox: frames on their way to one peer, bounded in bytes.

It is the write buffer while connected and the reconnect queue while not: one ordered queue of
events and requests, so frames emitted while a connection is down go out first, in order, once
it is back; and a priority lane for replies, which the writer takes before anything queued.

Invariants:
- ``put`` returns without a loop pass while there is room; that is what lets many small events
  share one write. When full, ``put`` waits (backpressure); nothing is ever dropped silently.
- A producer that emits without yielding does not hold its peer (or its own loop) up: when
  ``WRITE_EARLY_AT`` bytes are queued and no write is in flight, the put that reaches them
  writes them all at once through the writer's :attr:`direct` (one write); and each
  ``WRITE_EARLY_AT`` bytes queued by ``put``, the next put gives the loop a pass first (see
  :meth:`wait_room`), in which the writer and every other task get their turn.
- Replies (and error replies) never wait: :meth:`put_reply` queues them in the priority lane,
  regardless of the bound, and the writer takes them first. They belong to no event order: a
  reply may overtake events its sender emitted before it. Whoever answers requests keeps the
  reply backlog in check (see :meth:`reply_backlog_full`; the channel stops starting requests).
- The bound covers queued frames of both lanes and those the writer took but the kernel does
  not have yet, so a slow peer costs at most ``max_bytes`` (plus one larger frame, accepted
  when the outbox is empty so that it can be sent at all, plus the replies of requests that
  were already running).
- Counters ``enqueued`` and ``taken`` only grow (``taken`` goes back only when frames are queued
  again, see :meth:`requeue`) and count the ordered queue only: a frame with sequence number
  ``n`` has been handed to a writer (and may be lost with the connection) once ``taken >= n``.
- In the acknowledged mode, frames kept until the peer acknowledges them (:attr:`held`) count
  against the bound as well: queue, writer and that store together hold at most ``max_bytes``.
  So do the frames a pipelined handshake sent ahead of its welcome (:meth:`keep_taken`): kept
  in order until the welcome (:meth:`drop_kept`) or a failure after which they go again
  (:meth:`requeue_kept`: first in the queue, ``taken`` back as if never taken).
- Batches (:attr:`batches`, set while the connection negotiated them): events put as items
  (:meth:`put_item_if_room`) join the open batch, the last thing queued, which takes its
  place in the order when it opens; anything else queued, or the writer taking frames, closes
  it into one frame. A batch has one sequence number, like the frame it becomes. A batch never
  goes out on a connection that did not negotiate it: :meth:`rebatch` splits those queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice, repeat
from operator import call

import anyio

from .._proto._codec import EventBatches
from .._proto._messages import BatchFrame, FdFrame, Frame, SharedFrame, SplitBatch, frame_size

__all__ = ["Outbox"]

_BLOCK = 256  # frames taken at once while they fit the writer's budget
WRITE_EARLY_AT = 64 * 1024  # queued bytes written by the put that reaches them (see above)
_WHOLE = frozenset({bytes, SharedFrame, BatchFrame})  # frames in one piece (len is their size)


class Outbox:
    __slots__ = (
        "_batch",
        "_batch_count",
        "_batch_seq",
        "_bytes",
        "_closed",
        "_frames",
        "_has_frames",
        "_has_room",
        "_in_flight",
        "_in_flight_bytes",
        "_in_flight_frames",
        "_is_flushed",
        "_kept_bytes",
        "_last_taken",
        "_replies",
        "_since_turn",
        "batches",
        "direct",
        "enqueued",
        "held",
        "kept",
        "max_bytes",
        "on_frames",
        "on_lost",
        "on_sent",
        "taken",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[Frame] = deque()
        self._replies: deque[Frame] = deque()  # the priority lane
        self._bytes = 0  # queued in either lane
        self._in_flight = False
        self._in_flight_bytes = 0
        # The write under way: the writer's last take (replies first, then the last
        # _last_taken frames of the ordered queue), or a frame written directly.
        self._in_flight_frames: list[Frame] | None = None
        self._last_taken = 0  # frames of the ordered queue in the write under way
        self._since_turn = 0  # bytes queued since the loop last had a pass in put
        self._batch: bytearray | None = None  # the open batch (see the invariants)
        self._batch_count = 0  # the events in it
        self._batch_seq = 0  # the sequence number of its first event (0: not sequenced)
        #: How to batch events for the peer of the current connection, if it negotiated it.
        self.batches: EventBatches | None = None
        self._closed: BaseException | None = None
        self._has_frames: anyio.Event | None = None
        self._has_room: anyio.Event | None = None
        self._is_flushed: anyio.Event | None = None
        self.enqueued = 0
        self.taken = 0
        #: Bytes of frames kept after they are queued until the peer acknowledges them (the
        #: acknowledged mode, ``_acks``): they count against the bound too.
        self.held = 0
        #: Frames of the ordered queue taken since :meth:`keep_taken`, in order (a pipelined
        #: handshake's: sent ahead of the welcome, see :meth:`requeue_kept`); they count in
        #: :attr:`held` while kept.
        self.kept: list[Frame] | None = None
        self._kept_bytes = 0
        #: Called (from put) when frames arrive: a writer that is a loop callback, not a task,
        #: sets it instead of waiting in :meth:`wait_frames`.
        self.on_frames: Callable[[], None] | None = None
        #: Set by the writer: writes one frame now, without blocking; True when the kernel has
        #: all of it, False when the writer finishes it (and then calls :meth:`sent`).
        self.direct: Callable[[Frame], bool] | None = None
        #: Called when the writer reports frames written (:meth:`sent`): the channel waits
        #: for that while the reply backlog is full.
        self.on_sent: Callable[[], None] | None = None
        #: Called by a writer that finds the connection lost (the reader may not be reading).
        self.on_lost: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._frames) + len(self._replies) + (self._batch is not None)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def used(self) -> int:
        """Bytes queued or taken by the writer and not yet in the kernel."""
        return self._bytes + self._in_flight_bytes

    def has_room(self, size: int) -> bool:
        # Frames taken by the writer count until the kernel has them: queued plus in flight
        # stays within max_bytes (one larger frame may go alone).
        used = self._bytes + self._in_flight_bytes + self.held
        return not used or used + size <= self.max_bytes

    async def put(self, frame: Frame) -> int:
        """Queue ``frame``; wait while full. Returns its sequence number."""
        if self._closed is not None:
            raise self._closed
        size = frame_size(frame)
        await self.wait_room(size)
        return self.put_nowait(frame, size)

    @property
    def turn_due(self) -> bool:
        """Whether the loop is due a pass before more is queued (see the invariants):
        :meth:`put_if_room` queues nothing then, and :meth:`wait_room` gives it."""
        return self._since_turn >= WRITE_EARLY_AT

    def turn_given(self) -> None:
        """The caller gives the loop a pass now (:meth:`wait_room` does; so does a broadcast,
        which queues with :meth:`put_nowait`)."""
        self._since_turn = 0

    async def wait_room(self, size: int) -> None:
        """Wait until a frame of ``size`` bytes fits, after giving the writer the loop pass it
        is due. Raises the error the outbox was closed with."""
        if self._closed is not None:
            raise self._closed
        if self._since_turn >= WRITE_EARLY_AT:
            self.turn_given()
            await anyio.lowlevel.checkpoint()
            if self._closed is not None:
                raise self._closed
        while not self.has_room(size):
            if self._has_room is None:
                self._has_room = anyio.Event()
            await self._has_room.wait()
            if self._closed is not None:
                raise self._closed

    def put_if_room(self, frame: Frame, size: int) -> int:
        """Queue ``frame`` (of ``size`` bytes) if it fits and the outbox is open: the common
        case of :meth:`put`, without a coroutine. Returns its sequence number, 0 if it was not
        queued."""
        used = self._bytes + self._in_flight_bytes + self.held
        if (
            (used and used + size > self.max_bytes)
            or self._closed is not None
            or self._since_turn >= WRITE_EARLY_AT
        ):
            return 0
        return self._queue(frame, size)

    def put_item_if_room(self, item: bytes, seq: int = 0) -> int:
        """Add an event to the open batch (or a new one), as :meth:`put_if_room` queues a
        frame: ``item`` is the event as :attr:`batches` wants it; ``seq`` its sequence number
        in the acknowledged mode (a batch holds consecutive ones, or none). Returns the batch's
        number; 0 if the item was not added (no room, a turn due, closed, no batches, or too
        large for one), and the caller queues the event as a frame instead."""
        size = len(item)
        used = self._bytes + self._in_flight_bytes + self.held
        batches = self.batches
        if (
            (used and used + size > self.max_bytes)
            or self._closed is not None
            or self._since_turn >= WRITE_EARLY_AT
            or batches is None
        ):
            return 0
        batch = self._batch
        if (
            batch is None
            or len(batch) + size > batches.max_bytes
            or seq != (self._batch_seq + self._batch_count if self._batch_seq else 0)
        ):
            prefix = batches.prefix
            if len(prefix) + size > batches.max_bytes:
                return 0  # too large for a batch: a frame of its own
            if batch is not None:
                self._close_batch()
            batch = self._batch = bytearray(prefix)
            self._batch_count = 0
            self._batch_seq = seq
            size += len(prefix)
            self.enqueued += 1
            if self.on_frames is not None:
                self.on_frames()
            elif self._has_frames is not None:
                self._has_frames.set()
                self._has_frames = None
        batch += item
        self._batch_count += 1
        self._bytes += size
        self._since_turn += size
        if (
            self._bytes >= WRITE_EARLY_AT > self._bytes - size
            and not self._in_flight
            and self.direct is not None
        ):
            self._write_early()
        return self.enqueued

    def _close_batch(self) -> None:
        """Close the open batch into its frame, in its place at the end of the queue."""
        batch = self._batch
        assert batch is not None
        assert self.batches is not None
        self._batch = None
        self._frames.append(self.batches.close(batch, self._batch_count, self._batch_seq))

    def rebatch(self, batches: EventBatches | None) -> None:
        """Batch for a new connection's peer as ``batches`` says (``None``: it takes none):
        the open batch is closed, and each queued batch it would not take is split into the
        frames of its events, which keep the batch's place and sequence number."""
        if self._batch is not None:
            self._close_batch()
        limit = 0 if batches is None else batches.max_bytes
        frames = self._frames
        for number, frame in enumerate(frames):
            if type(frame) is BatchFrame and len(frame) > limit:
                assert self.batches is not None  # (it made them)
                split = SplitBatch(self.batches.split(frame))
                frames[number] = split
                self._bytes += sum(map(len, split)) - len(frame)
        self.batches = batches

    def put_nowait(self, frame: Frame, size: int | None = None) -> int:
        """Queue ``frame`` regardless of the bound."""
        if self._closed is not None:
            raise self._closed
        return self._queue(frame, frame_size(frame) if size is None else size)

    def _queue(self, frame: Frame, size: int) -> int:
        if self._batch is not None:  # (closed first: it was queued before this frame)
            self._close_batch()
        self._frames.append(frame)
        self._bytes += size
        self._since_turn += size
        self.enqueued += 1
        if self.on_frames is not None:
            self.on_frames()
        elif self._has_frames is not None:
            self._has_frames.set()
            self._has_frames = None
        if (
            self._bytes >= WRITE_EARLY_AT > self._bytes - size
            and not self._in_flight
            and self.direct is not None
        ):
            self._write_early()  # (once per crossing: a frame it leaves is not looked at again)
        return self.enqueued

    def _write_early(self) -> None:
        """Write everything queued now, joined, through :attr:`direct` (see the invariants);
        frames in more than one piece are left to the writer's turn, which keeps them apart."""
        queued = self._frames
        if self._replies or not _WHOLE.issuperset(map(type, queued)):
            return
        direct = self.direct
        frames = self.take()
        if direct(b"".join(frames)):  # type: ignore[misc,arg-type]  # (direct: checked; bytes)
            self.sent()

    def release(self, size: int) -> None:
        """``size`` bytes of :attr:`held` were acknowledged (or given up): room for more."""
        self.held -= size
        if self._has_room is not None:
            self._has_room.set()
            self._has_room = None

    def requeue(self, frames: list[Frame]) -> int:
        """Queue ``frames`` again, in front of everything, as if never taken (the writer had
        taken them; their connection is gone). Returns the sequence number of the first. Only
        while no writer runs."""
        self._frames.extendleft(reversed(frames))
        self._bytes += sum(map(frame_size, frames))
        self.taken -= len(frames)
        return self.taken + 1

    def keep_taken(self) -> None:
        """Keep the frames the writer takes from now on until :meth:`requeue_kept` or
        :meth:`drop_kept` (a pipelined handshake's: the server handles none of them before it
        welcomes the client, so they may have to go again)."""
        self.kept = []

    def _keep(self, frames: Iterable[Frame]) -> None:
        assert self.kept is not None
        size = 0
        for frame in frames:
            self.kept.append(frame)
            size += frame_size(frame)
        self._kept_bytes += size
        self.held += size

    def drop_kept(self) -> None:
        """Stop keeping and forget what was kept (it was delivered, or may have been)."""
        self.kept = None
        self.release(self._kept_bytes)
        self._kept_bytes = 0

    def requeue_kept(self) -> None:
        """Queue what was kept again, in front of everything, and stop keeping (the peer
        handled none of it). Only while no writer runs."""
        kept = self.kept or []
        self.drop_kept()
        if kept:
            self.requeue(kept)

    # --- the writer's side ----------------------------------------------------------------------

    async def wait_frames(self) -> None:
        """Wait until there may be something to write: frames queued, a :meth:`wake`, or the
        outbox closed. The writer checks again."""
        if not self._frames and self._batch is None and self._closed is None:
            if self._has_frames is None:
                self._has_frames = anyio.Event()
            await self._has_frames.wait()

    def wake(self) -> None:
        """Wake a writer waiting in :meth:`wait_frames`."""
        if self._has_frames is not None:
            self._has_frames.set()
            self._has_frames = None

    def put_urgent(self, frame: Frame, size: int) -> int:
        """Queue a request, writing it at once (through :attr:`direct`, skipping the writer's
        turn) when nothing is queued or in flight. Returns its sequence number."""
        direct = self.direct
        if direct is None or self._bytes or self._in_flight or self._closed is not None:
            return self.put_nowait(frame, size)
        self.enqueued += 1
        self.taken += 1
        if self.kept is not None:
            self._keep((frame,))
        self._in_flight = True
        self._in_flight_bytes += size
        self._in_flight_frames = [frame]
        self._last_taken = 1
        if direct(frame):
            self.sent()
        return self.enqueued

    def put_reply(self, frame: Frame, size: int | None = None) -> None:
        """Queue a reply or error reply in the priority lane, regardless of the bound; written
        at once (as :meth:`put_urgent`) when nothing is queued or in flight."""
        if self._closed is not None:
            raise self._closed
        if size is None:
            size = frame_size(frame)
        direct = self.direct
        if direct is not None and not self._bytes and not self._in_flight:
            self._in_flight = True
            self._in_flight_bytes += size
            self._in_flight_frames = [frame]
            self._last_taken = 0  # (a reply: never queued again)
            if direct(frame):
                self.sent()
            return
        self._replies.append(frame)
        self._bytes += size
        if self.on_frames is not None:
            self.on_frames()
        elif self._has_frames is not None:
            self._has_frames.set()
            self._has_frames = None

    def reply_backlog_full(self) -> bool:
        """Whether replies wait in the priority lane while the outbox is over its bound: then
        no request should start (its reply would only add to the backlog)."""
        return bool(self._replies) and self._bytes + self._in_flight_bytes > self.max_bytes

    def drop_replies(self) -> int:
        """Forget the replies not yet taken (their connection is gone: request ids are per
        connection, so they must not go out on the next one). Returns how many."""
        left = len(self._replies)
        for frame in self._replies:
            self._bytes -= frame_size(frame)
        self._replies.clear()
        if not self._bytes and not self._in_flight and self._is_flushed is not None:
            self._is_flushed.set()
            self._is_flushed = None
        return left

    def drop_shared(self) -> set[int]:
        """Their connection is gone: forget the frames that name places in its shared memory,
        or pass its segments (each in the ordered queue becomes an empty frame, so sequence
        numbers hold). Returns the sequence numbers of those in the ordered queue."""
        dropped: set[int] = set()
        frames = self._frames
        for number in [n for n, f in enumerate(frames) if isinstance(f, SharedFrame | FdFrame)]:
            self._bytes -= frame_size(frames[number])
            frames[number] = b""
            dropped.add(self.taken + 1 + number)
        kept = [f for f in self._replies if not isinstance(f, SharedFrame | FdFrame)]
        if len(kept) != len(self._replies):
            self._bytes -= sum(map(frame_size, self._replies)) - sum(map(frame_size, kept))
            self._replies = deque(kept)
        return dropped

    def withdraw(self, number: int) -> bool:
        """Forget frame ``number`` of the ordered queue (a request whose caller stopped waiting
        for its reply) if no writer took it yet, or if it went ahead of a welcome and is kept
        to go again (:meth:`keep_taken`); it becomes an empty frame, so sequence numbers hold.
        A frame naming shared memory goes all the same: its slots come back only through the
        peer. Returns whether it was forgotten."""
        index = number - self.taken - 1
        frames = self._frames
        if 0 <= index < len(frames):
            frame = frames[index]
            if isinstance(frame, SharedFrame | FdFrame):
                return False
            self._bytes -= frame_size(frame)
            frames[index] = b""
            if self._has_room is not None:
                self._has_room.set()
                self._has_room = None
            return True
        kept = self.kept
        if kept is not None:
            index += len(kept)  # (kept[i] was taken as number taken - len(kept) + i + 1)
            if 0 <= index < len(kept) and not isinstance(kept[index], SharedFrame | FdFrame):
                size = frame_size(kept[index])
                kept[index] = b""
                self._kept_bytes -= size
                self.release(size)
                return True
        return False

    def drop_refused(
        self, refusal: Callable[[Frame], Exception | None]
    ) -> tuple[dict[int, Exception], int]:
        """The peer takes less than what is queued for it (its handshake said so, see
        ``Encoder.refusal``): forget the frames it would refuse, each becoming an empty frame
        so that sequence numbers hold; a batch it would refuse is split into its events'
        frames, and only those it would refuse are forgotten. Call it before :meth:`rebatch`
        (the batches are those this outbox made). Returns why each frame dropped whole was
        refused, by sequence number, and how many frames were dropped in all."""
        dropped: dict[int, Exception] = {}
        lost = 0
        frames = self._frames
        for number, frame in enumerate(frames):
            if type(frame) is SplitBatch:  # (frames, each judged alone)
                parts: tuple[bytes, ...] = frame
            else:
                refused = refusal(frame)
                if refused is None:
                    continue
                if type(frame) is not BatchFrame or self.batches is None:
                    self._bytes -= frame_size(frame)
                    frames[number] = b""
                    dropped[self.taken + 1 + number] = refused
                    lost += 1
                    continue
                parts = self.batches.split(frame)
            kept = SplitBatch(part for part in parts if refusal(part) is None)
            frames[number] = kept or b""
            self._bytes += sum(map(len, kept)) - frame_size(frame)
            lost += len(parts) - len(kept)
        return dropped, lost

    def take(self, budget: int | None = None) -> list[Frame]:
        """Hand queued frames to the writer, which calls :meth:`sent` when they are written:
        all of them, or the first ones up to ``budget`` bytes (at least one); replies first."""
        if self._batch is not None:
            self._close_batch()
        queue = self._frames
        replies = self._replies
        if budget is None or self._bytes <= budget:
            if replies:
                frames = list(replies)
                frames.extend(queue)
                replies.clear()
            else:
                frames = list(queue)
            if self.kept is not None:
                self._keep(queue)
            self._last_taken = len(queue)
            self.taken += len(queue)
            queue.clear()
            size = self._bytes
        else:
            frames = []
            size = 0
            while replies and (not frames or size < budget):
                frame = replies.popleft()
                frames.append(frame)
                size += frame_size(frame)
            first = len(frames)
            count = 0
            # Whole blocks of frames in one bite while they fit (sized and popped in C: a
            # broadcast's small frames are taken thousands at a time), then frame by frame.
            while len(queue) >= _BLOCK and size < budget:
                block = list(islice(queue, _BLOCK))
                if _WHOLE.issuperset(map(type, block)):
                    block_size = sum(map(len, block))
                else:
                    block_size = sum(map(frame_size, block))
                if size + block_size >= budget:
                    break  # the last bite, frame by frame: what that loop would take
                deque(map(call, repeat(queue.popleft, _BLOCK)), 0)  # drop them, in C
                frames.extend(block)
                size += block_size
                count += _BLOCK
            while queue and (not frames or size < budget):
                frame = queue.popleft()
                frames.append(frame)
                size += frame_size(frame)
                count += 1
            if self.kept is not None:
                self._keep(frames[first:])
            self._last_taken = count
            self.taken += count
        self._bytes -= size
        self._in_flight_bytes += size
        self._in_flight = bool(frames)
        self._in_flight_frames = frames
        return frames

    def sent(self) -> None:
        """The frames last taken were written to the kernel (or lost with the connection)."""
        self._in_flight = False
        self._in_flight_bytes = 0
        self._in_flight_frames = None
        if self._has_room is not None:
            self._has_room.set()
            self._has_room = None
        if not self._bytes and self._is_flushed is not None:
            self._is_flushed.set()
            self._is_flushed = None
        if self.on_sent is not None:
            self.on_sent()

    def give_back(self, handed: int = 0, *, unsent: int | None = None) -> None:
        """Of the write under way (the writer's last take, or the frame written directly), the
        kernel has, or may have, the first ``handed`` bytes (all but the last ``unsent``, if
        given), and will never have more: a write was refused (the peer is gone, and the
        reader has not seen it yet), or the connection was given up while they waited for room
        (a heartbeat's deadline, a close past ``close_timeout``). The frames it has no whole
        copy of (a frame it has part of among them: the peer never reads that one whole) are
        events and requests queued again, first, as if never taken, for the next connection,
        as anything sent once the loss is seen; replies are dropped (they answer this
        connection's requests). Frames kept for a pipelined handshake go again with the rest of
        what is kept, if the welcome never comes (not twice). The writer stops here."""
        frames = self._in_flight_frames
        count = self._last_taken
        if frames and count and self.kept is None:
            if unsent is not None:
                handed = sum(map(frame_size, frames)) - unsent
            whole = 0  # the first frames, which the kernel may have whole
            for frame in frames:
                handed -= frame_size(frame)
                if handed < 0:
                    break
                whole += 1
            start = max(whole, len(frames) - count)  # (replies first: never again)
            if start < len(frames):
                self.requeue(frames[start:])
        self.sent()

    @property
    def written_up_to(self) -> int:
        """The sequence number up to which the ordered queue's frames are written to the
        kernel, or lost with their connection: :attr:`taken`, less the frames of a write
        under way, which may yet go again (:meth:`give_back`)."""
        return self.taken - self._last_taken if self._in_flight else self.taken

    @property
    def flushed(self) -> bool:
        """Whether :meth:`wait_flushed` would return at once."""
        return not (self._bytes or self._in_flight) or self._closed is not None

    async def wait_flushed(self) -> None:
        """Wait until every queued frame has been written to the kernel."""
        while (self._bytes or self._in_flight) and self._closed is None:
            if self._is_flushed is None:
                self._is_flushed = anyio.Event()
            await self._is_flushed.wait()

    def close(self, error: BaseException, *, events_kept: bool = False) -> int:
        """Refuse further frames with ``error``; wake every waiter. Returns the messages left
        unsent: each event of a batch, not the empty frames that stand for ones dropped or
        withdrawn. ``events_kept``: the events are kept elsewhere, and told of there if given
        up (the acknowledged mode's store), so only the reply lane's count."""
        if self._closed is None:
            self._closed = error
        left = len(self._replies)
        if not events_kept:
            left += self._batch_count if self._batch is not None else 0
            for frame in self._frames:
                if type(frame) is BatchFrame and self.batches is not None:
                    left += len(self.batches.split(frame))
                elif type(frame) is SplitBatch:
                    left += len(frame)
                elif frame != b"":
                    left += 1
        self._batch = None
        self._frames.clear()
        self._replies.clear()
        self._bytes = self._in_flight_bytes = 0
        for event in (self._has_room, self._is_flushed, self._has_frames):
            if event is not None:
                event.set()
        self._has_room = self._is_flushed = self._has_frames = None
        return left
