"""The outbox's bound covers what is queued and what the writer has not handed to the kernel."""

from __future__ import annotations

import anyio
import pytest

from ipcactors import ClosedError
from ipcactors._core._outbox import Outbox

pytestmark = pytest.mark.anyio


async def test_bound_covers_frames_in_flight() -> None:
    outbox = Outbox(max_bytes=1000)
    for _ in range(10):
        await outbox.put(b"x" * 100)
    assert not outbox.has_room(100)
    frames = outbox.take(budget=250)
    assert len(frames) == 3  # up to the budget, at least one
    assert len(outbox) == 7
    assert not outbox.has_room(100), "taken but unsent frames still count"
    outbox.sent()
    assert outbox.has_room(100)
    assert not outbox.has_room(400)
    assert (outbox.enqueued, outbox.taken) == (10, 3)


async def test_put_waits_until_the_writer_has_sent() -> None:
    outbox = Outbox(max_bytes=300)
    for _ in range(3):
        await outbox.put(b"x" * 100)
    done = anyio.Event()

    async def put_one_more() -> None:
        await outbox.put(b"y" * 100)
        done.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(put_one_more)
        await anyio.sleep(0.05)
        outbox.take()
        await anyio.sleep(0.05)
        assert not done.is_set(), "room comes back only once the kernel has the bytes"
        outbox.sent()
        with anyio.fail_after(5):
            await done.wait()
    assert len(outbox) == 1


async def test_a_frame_larger_than_the_bound_goes_alone() -> None:
    outbox = Outbox(max_bytes=100)
    await outbox.put(b"x" * 500)  # the outbox is empty: it may go
    assert not outbox.has_room(1)
    outbox.take()
    outbox.sent()
    assert outbox.has_room(100)


async def test_close_wakes_waiters_with_the_error() -> None:
    outbox = Outbox(max_bytes=100)
    await outbox.put(b"x" * 100)
    failures: list[BaseException] = []

    async def blocked_put() -> None:
        try:
            await outbox.put(b"y")
        except ClosedError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(blocked_put)
        await anyio.sleep(0.05)
        assert outbox.close(ClosedError("gone")) == 1
    assert len(failures) == 1


@pytest.mark.parametrize("sizes", [[7] * 1000, [1, 300, 2, 5000, 3] * 200, [20_000] * 3])
def test_take_in_blocks_keeps_order_and_budget(sizes: list[int]) -> None:
    """Blocks of small frames taken at once give what taking them one by one gives: the
    frames in order, up to the budget (at least one), counted in bytes and in ``taken``."""
    outbox = Outbox(max_bytes=1 << 30)
    frames = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    for frame in frames:
        outbox.put_nowait(frame)
    taken: list[bytes] = []
    while len(outbox):
        bite = outbox.take(budget=4096)
        assert bite
        total = sum(map(len, bite))
        assert total < 4096 + max(map(len, bite)), "past the budget by more than a frame"
        assert total - len(bite[-1]) < 4096, "one frame past the budget at most"
        assert outbox.used == sum(map(len, frames)) - sum(map(len, taken))
        outbox.sent()
        taken.extend(bite)  # type: ignore[arg-type]
        assert outbox.taken == len(taken)
    assert taken == frames


@pytest.mark.parametrize("sizes", [[7] * 3000, [100_000, 5] * 30, [1 << 20], [3, 1 << 20, 3]])
def test_coalesce_joins_whole_frames_as_the_general_loop_does(sizes: list[int]) -> None:
    """All-bytes frames take a joined path; its writes end where the frame by frame loop
    ends them (at the first frame that reaches COALESCE_LIMIT), with every byte in order."""
    from ipcactors._transports._writing import COALESCE_LIMIT, coalesce

    frames = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    writes = list(coalesce(list(frames)))  # type: ignore[arg-type]
    assert b"".join(writes) == b"".join(frames)
    expected, size = [], 0  # the cuts of the general loop
    for frame in frames:
        size += len(frame)
        if size >= COALESCE_LIMIT:
            expected.append(size)
            size = 0
    if size:
        expected.append(size)
    assert [len(w) for w in writes] == expected
