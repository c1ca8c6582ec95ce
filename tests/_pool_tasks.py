"""Functions the pool tests run in worker processes (importable by name, as a pool needs)."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

import anyio
from _cancellation import stray_cancellation

_state: dict[str, Any] = {}


def square(n: int) -> int:
    return n * n


def fail(message: str) -> None:
    raise ValueError(message)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def fail_unprintably() -> None:
    raise Unprintable


def scale(array: Any, factor: float) -> Any:
    return array * factor


def setup(value: str) -> None:
    _state["loaded"] = value


def loaded() -> Any:
    return _state.get("loaded"), os.getpid()


def pid() -> int:
    return os.getpid()


async def first_attempt_hangs(path: str, n: int) -> int:
    """The first attempt writes its pid to ``path`` and waits to be killed; a retry answers."""
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        await anyio.sleep(30)
    return n * n


async def always_hangs(path: str) -> None:
    with open(path + ".tmp", "w") as file:
        file.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    await anyio.sleep(30)


def blocks_counting(seconds: float, path: str) -> str:
    """:func:`blocks`, appending a line to ``path`` first (one per start)."""
    with open(path, "a") as file:
        file.write("started\n")
    return blocks(seconds)


def blocks(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def blocks_noting_start(seconds: float, marker: str) -> str:
    """:func:`blocks` (a plain function), writing ``marker`` first."""
    with open(marker, "w") as file:
        file.write("started")
    return blocks(seconds)


async def sleeps(seconds: float, marker: str) -> str:
    """Sleeps; writes ``marker`` if it was cancelled."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with open(marker, "w") as file:
            file.write("cancelled")
        raise
    return "slept"


def square_or_hang(n: int, path: str, hang_at: int) -> int:
    """``n * n``; the first attempt at ``hang_at`` writes its pid to ``path`` and blocks (a
    plain function: the tasks queued behind it in its worker wait too)."""
    if n == hang_at and not os.path.exists(path):
        with open(path + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(30)
    return n * n


async def sleeps_noting_start(seconds: float, marker: str) -> str:
    """:func:`sleeps`, writing ``marker + ".started"`` first."""
    with open(marker + ".started", "w") as file:
        file.write("started")
    return await sleeps(seconds, marker)


async def exits_async(code: int) -> None:
    """An async task that ends its worker process, as sys.exit() does."""
    await anyio.sleep(0)
    raise SystemExit(code)


async def naps_or_exits(item: int | str) -> int | str:
    """Naps a moment and returns ``item``; given "die", ends its worker in the middle of the
    others' naps (a poison task)."""
    await anyio.sleep(0.05)
    if item == "die":
        raise SystemExit(3)
    await anyio.sleep(0.05)
    return item


async def sleeps_or_dies_once(seconds: float, path: str | None = None) -> float:
    """Sleeps ``seconds`` and returns them; given ``path``, the first attempt (no file there)
    ends its worker half a second in, once its neighbours are sent (a poison task that a retry
    gets through)."""
    if path is not None:
        await anyio.sleep(0.5)
        if not os.path.exists(path):
            open(path, "w").close()
            raise SystemExit(3)
    await anyio.sleep(seconds)
    return seconds


async def hangs_then_sleeps(path: str, seconds: float) -> float:
    """The first attempt writes its pid to ``path`` and waits to be killed; a retry sleeps
    ``seconds`` (a long task that goes again alone)."""
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        await anyio.sleep(30)
    await anyio.sleep(seconds)
    return seconds


async def raises_cancelled_error(code: int) -> None:
    """An async task that raises asyncio's CancelledError itself, nobody having cancelled it
    (as awaiting a future someone else cancelled does): a BaseException of its own, as
    SystemExit is, on asyncio as on Trio (where it is no cancellation at all)."""
    await anyio.sleep(0)
    raise asyncio.CancelledError("raised by the task")


async def raises_a_stray_cancellation(code: int) -> None:
    """An async task that raises its backend's cancellation exception again once the cancel
    scope that caught it is over: nobody is cancelling the task (on Trio too)."""
    raise await stray_cancellation()


async def raises_a_group_of_stray_cancellations(code: int) -> None:
    """The same, in a group (a task group of its own that a task's stray one ended)."""
    raise BaseExceptionGroup("the task's own", [await stray_cancellation()])


def blocks_or_dies(seconds: float | str) -> float | str:
    """Blocks ``seconds``; given "die", ends its worker (os._exit) a moment later."""
    if seconds == "die":
        time.sleep(0.1)
        os._exit(3)
    assert isinstance(seconds, float)
    time.sleep(seconds)
    return seconds


def exits_plain(code: int) -> None:
    raise SystemExit(code)


class Unreadable:
    """An object whose attributes are looked up in a mapping that raises KeyError (a
    dict-backed config object, say): reading one it lacks is not an AttributeError."""

    def __getattr__(self, name: str) -> Any:
        raise KeyError(name)


def returns_unreadable() -> Unreadable:
    return Unreadable()


_out: dict[int, Any] = {}


def fill_reused(value: int, size: int, kind: str) -> Any:
    """Return one buffer of this process's, refilled with ``value`` on every call (a
    preallocated output, as numpy code keeps one): ``kind`` 'ndarray', 'bytearray', or 'nested'
    (the array inside a dict inside a list)."""
    import numpy as np

    out = _out.get(size)
    if out is None:
        out = _out[size] = np.zeros(size, dtype=np.uint8)
    out[...] = value % 256
    if kind == "bytearray":
        buffer = _out.get(-size)
        if buffer is None:
            buffer = _out[-size] = bytearray(size)
        buffer[:] = bytes([value % 256]) * size
        return buffer
    if kind == "nested":
        return [{"out": out}]
    if kind == "subclasses":  # containers that are not exactly list, tuple or dict
        return _Listed([collections.OrderedDict(out=_Pair(out, 1))])
    return out


class _Listed(list):  # type: ignore[type-arg]
    pass


_Pair = collections.namedtuple("_Pair", "out n")


async def fill_reused_async(value: int, size: int, kind: str) -> Any:
    """``fill_reused`` as an ``async def`` (several run side by side in a worker)."""
    return fill_reused(value, size, kind)


def too_large(kind: str, size: int) -> bytes:
    """Returns ``size`` bytes, or raises a ValueError whose message holds them."""
    if kind == "raise":
        raise ValueError("bad input " + "x" * size)
    if kind == "raise-wide":
        raise ValueError("bad input " + "€" * size)
    if kind == "raise-surrogate":  # os.fsdecode of a Latin-1 file name: no UTF-8 form
        raise ValueError("bad input caf\udce9" + "x" * size)
    return b"x" * size


async def nested_buffer(depth: int) -> Any:
    """A buffer of this process's, ``depth`` lists deep."""
    import numpy as np

    value: Any = _out.setdefault(-1, np.zeros(4))
    for _ in range(depth):
        value = [value]
    return value


def size_of(array: Any) -> int:
    return int(array.nbytes)
