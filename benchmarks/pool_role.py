"""W7 worker-pool roles: ``python -m benchmarks.pool_role ROLE CONFIG_JSON``.

``ipc``, ``ppe``, ``loky``: ``size`` workers (2) run ``tasks`` tasks per round, results in
order, after one warm-up round with the pool already started: ``pool.map(items)`` for
``ipcactors.Pool``, ``executor.map(fn, items, chunksize=...)`` for ProcessPoolExecutor and
loky. ``kind`` is ``tiny`` (an int in, an int out) or ``numpy`` (a 1 MiB float64 array in, one
out). The figure is tasks per second.

The same task shape on both sides: with ``chunksize`` 1 (``w7-tiny``, ``w7-numpy``),
``executor.map`` submits one task (one future, one work item) per item, exactly as a loop of
``submit`` would, and ``pool.map`` starts one pool task per item (each scheduled, retried and
cancellable on its own). ipcactors' pool runs ``per_worker=16`` tiny tasks in flight per worker
(its knob for tiny tasks) and sends them in batches of up to 8 per message, and 2 numpy tasks
(one per message); ProcessPoolExecutor and loky queue tasks to their workers without a limit.
``w7-tiny-chunked`` gives ProcessPoolExecutor and loky ``chunksize=8``, the pool's batch: 8
items per message for them too, but one future and one work item per chunk (a chunk fails, and
would be lost, as one).

``w7-executor`` is ``w7-tiny`` with ipcactors' pool behind its ``concurrent.futures`` face:
``PoolExecutor.map`` (one ``submit``, one future per item, from the caller's thread), as
theirs.

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
#: The pool's tasks in flight per worker, by kind: its knob for tiny tasks (batches of up to
#: ``per_worker // 2`` per message); 2 for 1 MiB arrays (one per message, the next one queued).
PER_WORKER = {"tiny": 16, "numpy": 2}
#: ProcessPoolExecutor's and loky's chunksize in ``w7-tiny-chunked``: the pool's batch.
CHUNKSIZE = PER_WORKER["tiny"] // 2


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
        _function(config), SIZE, per_worker=PER_WORKER[config["kind"]], preload=preload
    ) as pool:
        for index in range(config["rounds"] + 1):  # the first is the warm-up
            start = now()
            count = 0
            async for _ in pool.map(items):
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
            count = sum(1 for _ in executor.map(fn, items, chunksize=config["chunksize"]))
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
    if config.get("executor"):
        import ipcactors

        def make(size: int) -> Any:
            per_worker = PER_WORKER[config["kind"]]
            return ipcactors.PoolExecutor(
                size, backend=backend, per_worker=per_worker, log_level="WARNING"
            )

        pool_executor(config, make)  # (bounded as theirs: the runner's deadline kills it)
        return
    role_fn = pool_retry if role == "ipc-retry" else pool_ipc

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"]):
            await role_fn(config)

    import ipcactors

    ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")


if __name__ == "__main__":
    main()
