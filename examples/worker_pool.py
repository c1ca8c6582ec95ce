"""A pool of four worker processes takes 40 tasks; one worker is killed in the middle of a task,
restarted by the pool's supervisor, and its task retried on another worker: every result comes
back, correct.

    python examples/worker_pool.py            # or: ... --backend trio, --delay 0.5 (per task)

Ctrl-C stops it gracefully once ``ipcactors.run()`` runs (in the first ~0.2 s Python is still
importing, and Ctrl-C ends it as it ends any Python program): the tasks in flight are answered,
the workers stop, and the process exits with 130 (128 + SIGINT), without a traceback.

``work`` is a plain function of this script: the workers import it by name (this script runs in
each of them as ``__mp_main__``, as with multiprocessing's spawn), and arguments and results
travel as msgpack, never pickle.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import anyio

import ipcactors

WORKERS = 4
TASKS = 40


def work(n: int, delay: float) -> dict[str, Any]:
    """Runs in a worker process."""
    time.sleep(delay)  # pretend to compute
    return {"n": n, "square": n * n, "pid": os.getpid()}


async def main(delay: float = 0.05) -> None:
    results: list[dict[str, Any]] = []
    async with ipcactors.Pool(work, WORKERS, max_retries=2) as pool:
        children = pool.supervisor.children
        print("started", ", ".join(f"{id} (pid {children[id].pid})" for id in pool.workers))
        victim = pool.workers[1]

        async def kill_one_mid_task() -> None:
            while len(results) < TASKS // 4 or pool.statistics().in_flight < WORKERS:
                await anyio.sleep(0.005)
            pid = pool.supervisor.children[victim].pid
            assert pid is not None
            print(f"killing {victim} (pid {pid}) in the middle of a task")
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(5):
                while not (
                    pool.supervisor.children[victim].running
                    and pool.supervisor.children[victim].pid != pid
                ):
                    await anyio.sleep(0.01)
            print(f"{victim} restarted (pid {pool.supervisor.children[victim].pid})")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(kill_one_mid_task)
                async for result in pool.map(range(TASKS), [delay] * TASKS):
                    results.append(result)
        stats = pool.statistics()

    wrong = [n for n, result in enumerate(results) if result["square"] != n * n]
    if len(results) != TASKS or wrong or not stats.retried:
        raise SystemExit(f"FAILED: {len(results)}/{TASKS} results, wrong: {wrong}, {stats}")
    by_pid: dict[int, int] = {}
    for result in results:
        by_pid[result["pid"]] = by_pid.get(result["pid"], 0) + 1
    print("tasks per worker pid:", ", ".join(f"{k}={v}" for k, v in sorted(by_pid.items())))
    print(f"{TASKS}/{TASKS} tasks done, all results correct ({stats.retried} retried)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each task takes")
    options = parser.parse_args()
    ipcactors.run(main, options.delay, backend=options.backend, log_level="WARNING")
