"""Target functions for supervised children in the tests (importable by name in a child: the
child gets the parent's sys.path, and pytest puts tests/ on it)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import resource
import signal
import sys
import time
from typing import Any

import anyio

import ipcactors
from ipcactors._log import ActorLog


async def echo(actor: ipcactors.Actor, tag: Any = None) -> None:
    """Answers requests until stopped: echo, pid, tag, slow (sleeps), exit (exits at once),
    ask (asks a sibling), collect (a full garbage collection: the pages it wrote)."""
    parent = actor.parent
    assert parent is not None
    parent.on("echo", lambda data: data)
    parent.on("pid", lambda data: os.getpid())
    parent.on("tag", lambda data: tag)
    parent.on("backend", lambda data: _backend())
    parent.on("config", lambda data: dataclasses.asdict(actor.config))

    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    parent.on("slow", slow)
    parent.on("exit", lambda code: os._exit(code))
    parent.on("ping", lambda data: parent.emit("pong", data))  # an event answered by an event
    parent.on("collect", lambda data: _collect())
    parent.on("log as", lambda name: ActorLog(name, False).info("a line of another actor's"))

    async def ask(data: dict[str, Any]) -> Any:
        sibling = await actor.connect_to(data["id"])
        return await sibling.request(data["event"], data.get("data"), timeout=5)

    parent.on("ask", ask)
    await anyio.sleep_forever()


def _collect() -> dict[str, int]:
    """A full collection, and the page faults it caused (each a page it wrote for the first
    time: copied from the forkserver, if the page was inherited) and the objects it saw."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    gc.collect()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {"faults": faults, "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}


def _backend() -> str:
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
            return "trio"
        except RuntimeError:
            pass
    return "asyncio"


async def sibling_echo(actor: ipcactors.Actor) -> None:
    """Like echo, but serving siblings: handlers on its own server."""
    assert actor.server is not None
    actor.server.on("echo", lambda data, client: [actor.id, data])
    await echo(actor)


async def forwards(actor: ipcactors.Actor, next_id: str) -> None:
    """A pipeline stage: ``forward`` waits a little ("computes"), then asks its sibling
    ``next_id`` (a ``sibling_echo``) and answers with what it said."""
    parent = actor.parent
    assert parent is not None

    async def forward(data: Any) -> Any:
        await anyio.sleep(0.5)
        downstream = await actor.connect_to(next_id)
        return await downstream.request("echo", data, timeout=10)

    parent.on("forward", forward)
    await anyio.sleep_forever()


async def crash_after(actor: ipcactors.Actor, delay: float, code: int = 1) -> None:
    await anyio.sleep(delay)
    os._exit(code)


async def fail(actor: ipcactors.Actor, message: str) -> None:
    raise RuntimeError(message)


class _NotAnException(BaseException):
    pass


async def fail_hard(actor: ipcactors.Actor, kind: str) -> None:
    """Raises, before its first suspension, what is not an Exception."""
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "BaseException":
        raise _NotAnException("not an Exception")
    if kind == "SystemExit(9) in a group":
        raise BaseExceptionGroup("leaving", [SystemExit(9)])
    raise AssertionError(kind)


async def finish(actor: ipcactors.Actor, delay: float = 0.0) -> None:
    await anyio.sleep(delay)


async def stubborn(actor: ipcactors.Actor, ignore_sigterm: bool) -> None:
    """Ignores the stop message (and SIGTERM if asked): must be terminated or killed."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = actor.parent
    assert parent is not None
    parent.on("pid", lambda data: os.getpid())
    with anyio.CancelScope(shield=True):
        await anyio.sleep(60)


async def works_slowly(actor: ipcactors.Actor, forks: bool = False) -> None:
    """Each ``work`` event takes 50 ms: a backlog of them outlasts a short shutdown_timeout.
    ``forks``: the first one forks a process (in the child's group) that only waits."""

    async def work(n: int) -> None:
        if forks and n == 0 and os.fork() == 0:
            time.sleep(30)  # (the group's SIGTERM or SIGKILL ends it)
            os._exit(0)
        await anyio.sleep(0.05)

    parent = actor.parent
    assert parent is not None
    parent.on("work", work)
    await anyio.sleep_forever()


async def emits_blobs(actor: ipcactors.Actor) -> None:
    """Answers ``blobs`` (a count) by emitting that many ``blob`` events of 64 KiB to its
    parent, then never: a parent that does not read them holds the request open behind
    them."""
    parent = actor.parent
    assert parent is not None

    async def blobs(count: int) -> None:
        for _ in range(count):
            await parent.emit("blob", b"x" * 65536)
        await anyio.sleep_forever()

    parent.on("blobs", blobs)
    await anyio.sleep_forever()


async def blocks_before_ready(actor: ipcactors.Actor, seconds: float) -> None:
    """Blocks its event loop before its first ``await``: not ready, and deaf to the stop
    message, for ``seconds``."""
    import time

    time.sleep(seconds)
    await anyio.sleep_forever()


async def chatty(actor: ipcactors.Actor) -> None:
    print("hello on stdout")
    print("hello on stderr", file=sys.stderr)
    await echo(actor)


async def arrays(actor: ipcactors.Actor, weights: Any) -> None:
    parent = actor.parent
    assert parent is not None
    parent.on("matmul", lambda x: x @ weights)
    await anyio.sleep_forever()


async def nested(actor: ipcactors.Actor, max_restarts: int, crash: bool) -> None:
    """A supervisor inside a child: asks its own child; gives up if its child keeps crashing."""
    parent = actor.parent
    assert parent is not None
    inner: dict[str, ipcactors.Supervisor] = {}
    inner_ready = anyio.Event()

    async def via_inner(data: Any) -> Any:
        await inner_ready.wait()
        return [os.getpid(), await inner["sup"].request("inner", "pid", timeout=5), data]

    # Handlers registered before the first await are in place when the spawn returns.
    parent.on("via_inner", via_inner)
    async with ipcactors.Supervisor(
        max_restarts=max_restarts, max_seconds=5.0, id=f"{actor.id}-sup"
    ) as sup:
        inner["sup"] = sup
        if crash:
            await sup.spawn(crash_after, 0.05, id="inner")
        else:
            await sup.spawn(echo, "inner", id="inner")
        inner_ready.set()
        await anyio.sleep_forever()


async def marks_its_end(actor: ipcactors.Actor, path: str) -> None:
    """Waits; appends how it ended to ``path``: "<id> ended" as its function is cancelled (a
    graceful stop), "<id> SIGTERM" if it gets SIGTERM first."""

    def on_sigterm(signum: int, frame: Any) -> None:
        with open(path, "a") as file:
            file.write(f"{actor.id} SIGTERM\n")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    parent = actor.parent
    assert parent is not None
    parent.on("pid", lambda data: os.getpid())
    try:
        await anyio.sleep_forever()
    finally:
        with open(path, "a") as file:
            file.write(f"{actor.id} ended\n")


async def nested_marking(actor: ipcactors.Actor, path: str) -> None:
    """A supervisor inside a child, its one child ``marks_its_end``; ``leaf_pid`` asks it."""
    parent = actor.parent
    assert parent is not None
    inner: dict[str, ipcactors.Supervisor] = {}
    started = anyio.Event()

    async def leaf_pid(data: Any) -> Any:
        await started.wait()
        return await inner["sup"].request("leaf", "pid", timeout=5)

    parent.on("leaf_pid", leaf_pid)
    async with ipcactors.Supervisor(id=f"{actor.id}-sup") as sup:
        inner["sup"] = sup
        await sup.spawn(marks_its_end, path, id="leaf")
        started.set()
        await anyio.sleep_forever()


async def leave(actor: ipcactors.Actor, how: str, delay: float = 0.1) -> None:
    """Ends itself after ``delay``: ``return``, or ``sys.exit(...)`` with ``how``'s argument."""
    await anyio.sleep(delay)
    if how == "return":
        return
    if how == "sys.exit()":
        sys.exit()
    if how == "sys.exit(None)":
        sys.exit(None)
    if how == "sys.exit(0)":
        sys.exit(0)
    if how == "sys.exit(1)":
        sys.exit(1)
    if how == "sys.exit('text')":
        sys.exit("leaving with a message")
    if how == "raise CancelledError":  # as awaiting a future someone cancelled does
        raise asyncio.CancelledError
    raise AssertionError(how)


async def flood(actor: ipcactors.Actor, total: int, line: int = 100) -> None:
    """Writes ``total`` bytes of numbered lines of ``line`` bytes to stdout, then returns."""
    await anyio.sleep(0.05)  # "ready" goes out before stdout may block this process
    count = total // line
    block = 10_000
    for start in range(0, count, block):
        sys.stdout.write(
            "".join(f"{n:0{line - 1}d}\n" for n in range(start, min(start + block, count)))
        )
        await anyio.sleep(0)


async def quits(actor: ipcactors.Actor, handler: str = "plain") -> None:
    """Calls ``sys.exit(code)`` in a handler (``"plain"`` or ``"async"``), on request "quit";
    another request is in flight then (its handler sleeps), as in a busy child."""
    parent = actor.parent
    assert parent is not None

    async def quit_async(code: object) -> None:
        sys.exit(code)

    parent.on("quit", quit_async if handler == "async" else lambda code: sys.exit(code))
    parent.on("sleep", lambda _: anyio.sleep(60))
    await anyio.sleep_forever()


async def leaves_a_holder(actor: ipcactors.Actor) -> None:
    """On request "holder": starts ``sleep 30`` in a session of its own (out of its group,
    so its end does not end it) holding its stdout and stderr; answers its pid."""
    import subprocess

    parent = actor.parent
    assert parent is not None
    parent.on("holder", lambda data: subprocess.Popen(["sleep", "30"], start_new_session=True).pid)
    await anyio.sleep_forever()


async def queues_for(actor: ipcactors.Actor, sibling: str) -> None:
    """Connected to ``sibling``; ``queue`` (from the supervisor) emits ``count`` events to it
    and answers whether the connection was up."""
    parent = actor.parent
    assert parent is not None
    connected = anyio.Event()
    links: list[ipcactors.Connection] = []

    async def queue(count: int) -> bool:
        await connected.wait()
        for i in range(count):
            await links[0].emit("e", i)
        return links[0].connected

    parent.on("queue", queue)  # (before the first await: in place once we are ready)
    links.append(await actor.connect_to(sibling))
    connected.set()
    await anyio.sleep_forever()


async def starts_a_child(actor: ipcactors.Actor) -> None:
    """A supervisor inside a child, with one child: a stop that comes as soon as this child is
    ready finds its supervisor starting (its forkserver, then the spawn)."""
    async with ipcactors.Supervisor(id=f"{actor.id}-sup") as sup:
        await sup.spawn(echo, "inner", id=f"{actor.id}-inner")
        await anyio.sleep_forever()
