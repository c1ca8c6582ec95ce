"""Starting anything with the process out of file descriptors, or nearly: a typed error
(:class:`ResourceError` or :class:`SpawnError`, both :class:`IPCError`), never a bare
``OSError`` nor the standard library's misleading one, and nothing left behind (descriptors,
threads, directories); with descriptors free again, the same start works.

Each case runs in a script of its own (it lowers its limit and fills it); both backends.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

_SCRIPT = """
import json, os, resource, sys, threading
import anyio, ipcactors, _pool_tasks
from _descriptors import take_all_but

backend, root, kind = sys.argv[1], sys.argv[2], sys.argv[3]
root = None if root == "-" else root  # "-": the default root (TMPDIR is the test's)

async def enter_async():
    if kind == "actor":
        async with ipcactors.Actor("a", socket_root=root, silent=True) as actor:
            await actor.serve()
    elif kind == "supervisor":
        async with ipcactors.Supervisor(socket_root=root, silent=True):
            pass
    else:
        async with ipcactors.Pool("_pool_tasks:square", 1, socket_root=root, silent=True) as pool:
            assert await pool.submit(3) == 9

def enter():
    if kind == "blocking":
        with ipcactors.BlockingActor("b", backend=backend, socket_root=root, silent=True) as b:
            b.serve()
    else:
        with ipcactors.PoolExecutor(1, backend=backend, socket_root=root, silent=True) as e:
            assert e.submit(_pool_tasks.square, 3).result(timeout=30) == 9

def open_fds():
    return len(os.listdir("/proc/self/fd"))

async def attempt_async(free):
    fillers = take_all_but(free)
    try:
        await enter_async()
    finally:
        for fd in fillers:
            os.close(fd)

def attempt(free):
    fillers = take_all_but(free)
    try:
        enter()
    finally:
        for fd in fillers:
            os.close(fd)

def outcome(exc):  # what an attempt came to: ok, an IPCError's name, or what else it raised
    if exc is None:
        return "ok"
    if isinstance(exc, ipcactors.IPCError):
        return type(exc).__name__
    return f"bare {type(exc).__name__}: {exc}"

async def attempts_async(outcomes):
    for free in range(14):
        try:
            await attempt_async(free)
        except Exception as exc:
            outcomes[free] = outcome(exc)
        else:
            outcomes[free] = outcome(None)
    await enter_async()  # with descriptors to spare

resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
outcomes = {}
if kind in ("blocking", "executor"):
    enter()  # (what is made once per process: imports, the loop's thread pool)
    start, threads = open_fds(), threading.active_count()
    for free in range(14):
        try:
            attempt(free)
        except Exception as exc:
            outcomes[free] = outcome(exc)
        else:
            outcomes[free] = outcome(None)
    enter()  # with descriptors to spare
else:
    anyio.run(anyio.sleep, 0, backend=backend)  # (the backend's own imports, made once)
    start, threads = open_fds(), threading.active_count()
    anyio.run(attempts_async, outcomes, backend=backend)
print(json.dumps({
    "outcomes": outcomes,
    "leaked": open_fds() - start,
    "threads": threading.active_count() - threads,
}))
"""


@pytest.mark.parametrize("kind", ["actor", "supervisor", "pool", "blocking", "executor"])
async def test_starting_short_of_descriptors_is_a_typed_error_and_leaves_nothing(
    kind: str, anyio_backend: str, socket_dir: str, tmp_path: Path
) -> None:
    """Short by a few, a supervisor's start (its forkserver's socket pair), a blocking actor's
    or an executor's (their loop thread's) raised a bare OSError; with none free at all, the
    default socket root was the standard library's FileNotFoundError, "No usable temporary
    directory found", as it probed the temporary directories with files it could not open."""
    script = tmp_path / "short.py"
    script.write_text(_SCRIPT)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    env["TMPDIR"] = str(tmpdir)
    # The actor on the default root (under TMPDIR): the only start that asks for it first.
    root = "-" if kind == "actor" else socket_dir
    with anyio.fail_after(240):
        result = await anyio.run_process(
            [sys.executable, str(script), anyio_backend, root, kind], env=env, check=False
        )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(result.stdout.decode().splitlines()[-1])
    outcomes = report["outcomes"]
    bare = {free: outcome for free, outcome in outcomes.items() if outcome.startswith("bare")}
    assert not bare, outcomes
    assert outcomes["0"] != "ok", outcomes  # (the script did run short)
    assert report["leaked"] == 0, report
    assert report["threads"] == 0, report
    left = [path.name for path in Path(socket_dir).iterdir()]
    assert not left, left
    assert [path.name for path in tmpdir.rglob("*") if not path.is_dir()] == []
