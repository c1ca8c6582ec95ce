"""ipcactors.PoolExecutor: a real concurrent.futures.Executor on a Pool (run_in_executor works
unchanged); shutdown waits for the tasks in flight, or cancels them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import _pool_tasks
import pytest

import ipcactors
from ipcactors import (
    ClosedError,
    ConfigError,
    PoolExecutor,
    RemoteError,
    RestartIntensityError,
    UnsupportedError,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_script(script: Path, socket_dir: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python script socket_dir`` to its end (bounded), the tests' modules importable."""
    return subprocess.run(
        [sys.executable, str(script), socket_dir],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.path.dirname(TESTS_DIR)}"},
    )


@pytest.fixture(params=["asyncio", "trio"])
def executor(request: pytest.FixtureRequest, socket_dir: str) -> PoolExecutor:
    return PoolExecutor(
        2,
        backend=request.param,
        socket_root=socket_dir,
        shutdown_timeout=2.0,
        terminate_timeout=0.5,
    )


def test_an_unknown_backend_is_a_config_error(socket_dir: str) -> None:
    """Checked before anything starts (anyio's LookupError, after a thread had started)."""
    with pytest.raises(ConfigError, match="asyncio"):
        PoolExecutor(1, backend="curio", socket_root=socket_dir)  # type: ignore[arg-type]


def test_submit_map_and_errors(executor: PoolExecutor) -> None:
    with executor:
        assert isinstance(executor, concurrent.futures.Executor)
        assert executor.submit(_pool_tasks.square, 9).result(timeout=10) == 81
        assert list(executor.map(_pool_tasks.square, range(20), timeout=10)) == [
            n * n for n in range(20)
        ]
        with pytest.raises(RemoteError, match="ValueError: nope"):
            executor.submit(_pool_tasks.fail, "nope").result(timeout=10)
        # Every error is an IPCError (reference.md): this was a plain TypeError.
        with pytest.raises(UnsupportedError, match="positional arguments only") as caught:
            executor.submit(_pool_tasks.square, n=1)
        assert isinstance(caught.value, TypeError)  # (what a call with wrong arguments raises)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(_pool_tasks.square, 1)


def test_run_in_executor(executor: PoolExecutor) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(executor, _pool_tasks.square, n) for n in range(5))
            )
        )

    try:
        assert asyncio.run(asyncio.wait_for(main(), 10)) == [0, 1, 4, 9, 16]
    finally:
        executor.shutdown()


def test_shutdown_waits_for_tasks_in_flight(executor: PoolExecutor) -> None:
    futures = [executor.submit(_pool_tasks.blocks, 0.2) for _ in range(3)]
    executor.shutdown(wait=True)
    assert [future.result(timeout=0) for future in futures] == ["done"] * 3


def test_shutdown_cancel_futures_cancels_them(executor: PoolExecutor, tmp_path: object) -> None:
    futures = [executor.submit(_pool_tasks.sleeps, 30.0, f"{tmp_path}/m{n}") for n in range(4)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(future.cancelled() for future in futures)


def _leave_by(
    error: BaseException, executor: PoolExecutor, seconds: float
) -> list[concurrent.futures.Future[str]]:
    """Submit three tasks of ``seconds``, then leave the executor's block raising ``error``;
    return the futures (``error`` is caught here, once the block is left)."""
    futures: list[concurrent.futures.Future[str]] = []
    try:
        with executor:
            futures += [executor.submit(_pool_tasks.blocks, seconds) for _ in range(3)]
            time.sleep(0.5)  # in the workers by now
            raise error
    except type(error):
        return futures
    raise AssertionError("the block did not raise")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("leaving", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_leaving_the_block_does_not_wait_for_running_tasks(
    backend: str, leaving: type[BaseException], socket_dir: str
) -> None:
    # The workers lead process groups of their own: the terminal's SIGINT reaches only the
    # caller, whose KeyboardInterrupt (as Ctrl-C in future.result() raises it) leaves the
    # block. Waiting there for tasks that run on (shutdown(wait=True)) made Ctrl-C take as
    # long as the longest task; then as long as shutdown_timeout, the workers' plain
    # functions (cancelled, but not interruptible) keeping them from stopping politely.
    executor = PoolExecutor(2, backend=backend, socket_root=socket_dir, shutdown_timeout=30.0)
    started = time.monotonic()
    futures = _leave_by(leaving(), executor, 60.0)
    assert time.monotonic() - started < 10
    assert all(future.cancelled() for future in futures)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_while_the_block_waits_for_its_tasks_does_not_wait_either(
    backend: str, socket_dir: str, tmp_path: Path
) -> None:
    """Ctrl-C as the block is left normally, while shutdown(wait=True) waits for long tasks:
    the KeyboardInterrupt came out, but the futures were not cancelled nor the workers killed,
    so the program ran on until the tasks ended (20 s here, at the interpreter's exit)."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(f"""
            import os, signal, sys, threading, time
            import _pool_tasks
            from ipcactors import PoolExecutor

            if __name__ == "__main__":
                started = time.monotonic()
                futures = []
                try:
                    with PoolExecutor(2, backend={backend!r}, socket_root=sys.argv[1]) as pool:
                        futures += [pool.submit(_pool_tasks.blocks, 20.0) for _ in range(2)]
                        time.sleep(0.5)  # in the workers by now
                        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
                except KeyboardInterrupt:
                    print([future.cancelled() for future in futures], flush=True)
        """)
    )
    started = time.monotonic()
    done = run_script(script, socket_dir, timeout=60)
    assert done.stdout.split("\n")[0] == "[True, True]", (done.stdout, done.stderr)
    assert time.monotonic() - started < 12, done.stderr
    assert os.listdir(socket_dir) == []


def test_an_error_leaving_the_block_still_waits_for_the_tasks(executor: PoolExecutor) -> None:
    # As the standard executors do: an ordinary exception is the code's own; its tasks finish.
    futures = _leave_by(ValueError("the caller's own error"), executor, 0.2)
    assert [future.result(timeout=0) for future in futures] == ["done"] * 3


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_program_that_never_shuts_its_executor_down_still_exits(
    backend: str, socket_dir: str, tmp_path: Path
) -> None:
    """As with the standard executors, a program may end without shutdown(): its tasks in
    flight finish, the workers stop, and the program exits. It hung at exit for ever: the
    pool's event loop thread is one the interpreter waits for."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(f"""
            import sys
            import _pool_tasks
            from ipcactors import PoolExecutor

            if __name__ == "__main__":
                executor = PoolExecutor(1, backend={backend!r}, socket_root=sys.argv[1])
                print(executor.submit(_pool_tasks.square, 7).result(), flush=True)
                slow = executor.submit(_pool_tasks.blocks, 0.3)  # in flight at exit: finishes
                slow.add_done_callback(lambda f: print(f.result(), flush=True))
        """)
    )
    done = run_script(script, socket_dir, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["49", _pool_tasks.blocks(0)]
    assert os.listdir(socket_dir) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_pool_that_gives_up_says_why_to_its_futures_and_shutdown(
    backend: str, socket_dir: str
) -> None:
    """Past its restart intensity the pool stops: the futures still waiting fail with a
    ClosedError that names why (RestartIntensityError, as its cause), and shutdown() raises
    it. They said only "pool 'pool' was closed", and the RestartIntensityError went to a
    background thread's traceback on stderr."""
    executor = PoolExecutor(
        1,
        backend=backend,
        socket_root=socket_dir,
        max_restarts=1,
        max_retries=5,
        shutdown_timeout=2.0,
        terminate_timeout=0.5,
    )
    futures = [executor.submit(_pool_tasks.exits_plain, 3) for _ in range(3)]
    for future in futures:
        error = future.exception(timeout=30)
        assert isinstance(error, ClosedError)
        assert isinstance(error.__cause__, RestartIntensityError)
        assert "max_restarts=1" in str(error)
    with pytest.raises(RestartIntensityError):
        executor.shutdown(wait=True)
    executor.shutdown(wait=True)  # (said once)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("callers_loop", ["asyncio", "trio"])
def test_inside_a_running_event_loop(
    backend: str, callers_loop: str, socket_dir: str, tmp_path: Path
) -> None:
    """Blocking code in an async program (a notebook cell, a pool task of another pool): the
    executor runs whatever loop runs in the caller's thread. A Trio loop there made the
    executor's start fail with a RuntimeError (its locks were made for the caller's library)
    or, with a Trio executor, hang for ever; an asyncio loop there with a Trio executor failed
    too."""
    script = tmp_path / "in_a_loop.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            import anyio
            import _pool_tasks
            from ipcactors import PoolExecutor

            async def cell():
                with PoolExecutor(1, backend={backend!r}, socket_root=sys.argv[1]) as executor:
                    print(executor.submit(_pool_tasks.square, 7).result(timeout=10))
                    print(list(executor.map(_pool_tasks.square, [1, 2], timeout=10)))

            if __name__ == "__main__":
                anyio.run(cell, backend={callers_loop!r})
            """
        )
    )
    done = run_script(script, socket_dir, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["49", "[1, 4]"]


def test_done_callbacks_may_submit_and_shut_down(executor: PoolExecutor) -> None:
    """A future's done callbacks run in the executor's loop thread (where its tasks settle).
    From there, submit chains a task, as with the standard executors; it raised RuntimeError
    ("cannot be called from the event loop thread"), which concurrent.futures only logs, so
    the chain stopped silently. shutdown(wait=True) there, which would wait for itself, is an
    IPCError saying so; it deadlocked the loop, and every later shutdown with it."""
    chained: list[concurrent.futures.Future[Any]] = []
    refused: list[BaseException] = []

    def chain(future: concurrent.futures.Future[Any]) -> None:
        chained.append(executor.submit(_pool_tasks.square, len(future.result())))
        chained.append(executor.submit(_pool_tasks.blocks, 30.0))
        try:
            executor.shutdown(wait=True)
        except ipcactors.IPCError as exc:
            refused.append(exc)

    first = executor.submit(_pool_tasks.blocks, 0.2)
    first.add_done_callback(chain)
    assert first.result(timeout=10) == "done"
    deadline = time.monotonic() + 10
    while len(chained) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chained[0].result(timeout=10) == 16
    assert chained[1].cancel()  # cancelled in the worker too: shutdown does not wait 30 s
    assert refused
    assert "wait" in str(refused[0])
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 10


def test_a_done_callback_that_raises_anything_leaves_the_executor_working(
    executor: PoolExecutor,
) -> None:
    """Done callbacks run in the executor's loop thread. One that raises SystemExit (or any
    BaseException, which concurrent.futures does not catch) is logged there, and the executor
    goes on: it ended the pool's loop, and every later future waited for ever."""

    def leave(future: concurrent.futures.Future[Any]) -> None:
        raise SystemExit(3)

    with executor:
        first = executor.submit(_pool_tasks.blocks, 0.3)
        first.add_done_callback(leave)
        assert first.result(timeout=10) == "done"
        assert executor.submit(_pool_tasks.square, 3).result(timeout=10) == 9
        waiting = [executor.submit(_pool_tasks.blocks, 30.0) for _ in range(4)]
        assert all(future.cancel() for future in waiting)
        done, _ = concurrent.futures.wait(waiting, timeout=10)
        assert done == set(waiting)


def test_a_cancelled_future_is_done_whatever_the_callbacks_before_do(
    executor: PoolExecutor,
) -> None:
    """cancel() runs the done callbacks in the caller's thread, in order, and one that raises
    SystemExit stops those after it: the executor's own comes first, so the future is still
    told done to wait() (it stayed CANCELLED for ever) and its task is cancelled (it ran)."""

    def leave(future: concurrent.futures.Future[Any]) -> None:
        raise SystemExit(3)

    with executor:
        future = executor.submit(_pool_tasks.blocks, 30.0)
        future.add_done_callback(leave)
        time.sleep(0.3)  # in the worker by now
        with pytest.raises(SystemExit):
            future.cancel()
        done, _ = concurrent.futures.wait([future], timeout=10)
        assert done == {future}
        started = time.monotonic()
    assert time.monotonic() - started < 10  # not the 30 s task
    statistics = executor.pool.statistics()
    assert (statistics.cancelled, statistics.completed) == (1, 0)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("where", ["submits", "block"])
def test_ctrl_c_anywhere_leaves_the_executor_sound(
    backend: str, where: str, socket_dir: str, tmp_path: Path
) -> None:
    """Ctrl-C at any moment: inside submit() (a caller that catches it and goes on, as a REPL
    does: later tasks ran no more, and shutdown hung), or twice as the block is left with
    many futures (the second cut the cancels short: the process hung with its workers)."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(f"""
            import os, signal, sys, threading, time
            import _pool_tasks
            from ipcactors import PoolExecutor

            def pester(stop, count, gap):
                for _ in range(count):
                    if stop.wait(gap):
                        return
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

            if __name__ == "__main__":
                options = dict(backend={backend!r}, socket_root=sys.argv[1], per_worker=8)
                stop = threading.Event()
                if {where!r} == "submits":
                    # Interrupted only inside the submits (a Ctrl-C elsewhere would end this
                    # script, not test the executor): the handler raises as Python's own does.
                    armed = [False]

                    def on_sigint(signum, frame):
                        if armed[0]:
                            armed[0] = False
                            raise KeyboardInterrupt

                    signal.signal(signal.SIGINT, on_sigint)
                    executor = PoolExecutor(1, **options)
                    pesterer = threading.Thread(target=pester, args=(stop, 300, 0.002))
                    pesterer.start()
                    deadline = time.monotonic() + 20
                    submitted = 0  # bounded: the last task waits behind them all
                    while pesterer.is_alive() and time.monotonic() < deadline:
                        try:
                            armed[0] = True
                            while submitted < 20000:
                                executor.submit(_pool_tasks.square, 2)
                                submitted += 1
                            armed[0] = False
                            time.sleep(0.01)
                        except KeyboardInterrupt:
                            pass
                    armed[0] = False
                    print(executor.submit(_pool_tasks.square, 4).result(timeout=30), flush=True)
                    executor.shutdown(wait=True, cancel_futures=True)
                    print("shut down", flush=True)
                else:
                    with PoolExecutor(2, **options) as executor:
                        futures = [executor.submit(_pool_tasks.blocks, 30.0) for _ in range(20000)]
                        time.sleep(0.5)
                        os.kill(os.getpid(), signal.SIGINT)
                        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
                        futures[0].result()
        """)
    )
    started = time.monotonic()
    done = run_script(script, socket_dir, timeout=60)
    assert time.monotonic() - started < 40, done.stderr[-3000:]
    if where == "submits":
        assert done.stdout.split("\n")[:2] == ["16", "shut down"], done.stderr[-3000:]
    else:
        assert "KeyboardInterrupt" in done.stderr
    assert "unexpected state" not in done.stderr
    assert os.listdir(socket_dir) == []
