"""W7 worker-pool roles: ``python -m benchmarks.pool_role ROLE CONFIG_JSON``.

``ipc``, ``ppe``, ``loky``: ``size`` workers (2) run ``tasks`` tasks per round, all submitted at
once and collected (``pool.map_unordered`` for ``ipcactors.Pool``, ``executor.map`` for
ProcessPoolExecutor and loky, chunksize 1: one task per message, as ``submit`` would),
after one warm-up round with the pool already started. ``kind`` is ``tiny`` (an int in, an int
out) or ``numpy`` (a 1 MiB float64 array in, one out). The figure is tasks per second.
ipcactors' pool runs ``per_worker=4`` tasks in flight per worker (its knob for tiny tasks);
ProcessPoolExecutor and loky queue tasks to their workers without a limit.

``ipc-retry``: a pool of 2; one task runs (its first attempt writes its pid and sleeps), its
worker is SIGKILLed, and the time from the kill until the task's result arrives (retried on the
least-loaded worker, where it answers at once) is one sample; ``samples`` times after one
warm-up. Reports ``unavailable`` for loky when it is not installed (``pip install loky``, or the
``bench`` extra).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio

from . import pool_tasks
from ._wire import backend_options, now, parse_args, say

SIZE = 2
PER_WORKER = 4


def _items(config: dict[str, Any]) -> list[Any]:
    if config["kind"] == "numpy":
        import numpy as np

        array = np.ones(1 << 17, dtype=np.float64)  # 1 MiB
        return [array] * config["tasks"]
    return list(range(config["tasks"]))


def _function(config: dict[str, Any]) -> Any:
    return pool_tasks.scale if config["kind"] == "numpy" else pool_tasks.tiny


async def pool_ipc(config: dict[str, Any]) -> None:
    import ipcactors

    items = _items(config)
    preload = ["numpy"] if config["kind"] == "numpy" else []
    rounds = []
    async with ipcactors.Pool(
        _function(config), SIZE, per_worker=PER_WORKER, preload=preload
    ) as pool:
        for index in range(config["rounds"] + 1):  # the first is the warm-up
            start = now()
            count = 0
            async for _ in pool.map_unordered(items):
                count += 1
            if index:
                rounds.append({"count": count, "seconds": now() - start})
    say("result", rounds=rounds)


def pool_executor(config: dict[str, Any], make: Any) -> None:
    items = _items(config)
    fn = _function(config)
    rounds = []
    with make(SIZE) as executor:
        for index in range(config["rounds"] + 1):
            start = now()
            count = sum(1 for _ in executor.map(fn, items))
            if index:
                rounds.append({"count": count, "seconds": now() - start})
    say("result", rounds=rounds)


async def pool_retry(config: dict[str, Any]) -> None:
    import ipcactors

    samples = []
    async with ipcactors.Pool(
        pool_tasks.first_attempt_hangs, SIZE, max_restarts=10 * config["samples"] + 10
    ) as pool:
        for index in range(config["samples"] + 1):  # the first is the warm-up
            path = os.path.join(config["dir"], f"retry{index}.pid")
            done = anyio.Event()

            async def run(index: int = index, path: str = path, done: anyio.Event = done) -> None:
                await pool.submit(index, path)
                done.set()

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(run)
                while not os.path.exists(path):
                    await anyio.sleep(0.001)
                with open(path) as file:
                    pid = int(file.read())
                killed_at = now()
                os.kill(pid, signal.SIGKILL)
                await done.wait()
                samples.append((now() - killed_at) * 1e3)
            os.unlink(path)
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples[1:]])


def main() -> None:
    role, config = parse_args()
    backend, options = backend_options(config)
    if role in ("ppe", "loky"):
        if role == "loky":
            try:
                import loky
            except ImportError:
                say("unavailable", reason="loky is not installed (pip install loky)")
                return
            make: Any = loky.ProcessPoolExecutor  # a fresh executor, not the reusable one
        else:
            from concurrent.futures import ProcessPoolExecutor

            make = ProcessPoolExecutor
        pool_executor(config, make)
        return
    role_fn = pool_retry if role == "ipc-retry" else pool_ipc

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"]):
            await role_fn(config)

    import ipcactors

    ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")


if __name__ == "__main__":
    main()
