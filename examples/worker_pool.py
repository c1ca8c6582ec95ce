"""A pool of worker processes under a supervisor: tasks go out with request(), one worker is
killed in the middle of a task, restarted by the supervisor, and its task retried.

    python examples/worker_pool.py            # or: ... --backend trio, --delay 0.5 (per task)

Ctrl-C stops it gracefully: the tasks in flight are answered, the workers stop, and the process
exits with 130 (128 + SIGINT), without a traceback.

The workers are plain async functions in this script: the supervisor's children import them by
name (this script runs in each child as ``__mp_main__``, as with multiprocessing's spawn), and
everything between the processes travels as msgpack.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import anyio

import ipcactors

WORKERS = 4
TASKS = 40


async def worker(actor: ipcactors.Actor, delay: float) -> None:
    """Runs in a child process: answers "work" requests from the supervisor."""

    async def work(task: dict[str, Any]) -> dict[str, Any]:
        if task.get("hold"):  # the demo's victim: say so, then work until killed
            await parent.emit("holding", task["n"])
            await anyio.sleep(30)
        await anyio.sleep(delay)  # pretend to work
        n = task["n"]
        return {"n": n, "square": n * n, "worker": actor.id, "pid": os.getpid()}

    parent = actor.parent
    assert parent is not None
    parent.on("work", work)  # registered before the first await: in place at "ready"
    await anyio.sleep_forever()


async def main(delay: float = 0.02) -> None:
    async with ipcactors.Supervisor(
        strategy="one_for_one", max_restarts=3, max_seconds=10.0, retry=0.05
    ) as sup:
        ids = [f"worker-{i}" for i in range(WORKERS)]
        for id in ids:
            await sup.spawn(worker, delay, id=id)
        print("started", ", ".join(f"{id} (pid {sup.children[id].pid})" for id in ids))

        send, receive = anyio.create_memory_object_stream[int](TASKS)
        for n in range(TASKS):
            send.send_nowait(n)
        send.close()
        results: dict[int, dict[str, Any]] = {}
        retried: list[int] = []
        victim = ids[1]
        holding = anyio.Event()
        sup.on("holding", lambda n, client: holding.set())
        hold = {"pending": True}

        async def dispatch(id: str) -> None:
            async for n in receive:
                for _attempt in range(3):
                    task: dict[str, Any] = {"n": n}
                    if id == victim and hold["pending"] and len(results) >= TASKS // 4:
                        hold["pending"] = False
                        task["hold"] = True  # this one is in the worker when it is killed
                    try:
                        results[n] = await sup.request(id, "work", task, timeout=10)
                        break
                    except ipcactors.ChildExitedError as exc:
                        print(f"task {n} failed: {exc}; retrying")
                        retried.append(n)
                else:
                    raise RuntimeError(f"task {n} failed three times")

        async def kill_one_mid_task() -> None:
            await holding.wait()
            pid = sup.children[victim].pid
            assert pid is not None
            print(f"killing {victim} (pid {pid}) in the middle of a task")
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(5):
                while not (sup.children[victim].running and sup.children[victim].pid != pid):
                    await anyio.sleep(0.01)
            print(f"{victim} restarted (pid {sup.children[victim].pid})")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(kill_one_mid_task)
                async with anyio.create_task_group() as dispatchers:
                    for id in ids:
                        dispatchers.start_soon(dispatch, id)

    wrong = [n for n in range(TASKS) if results.get(n, {}).get("square") != n * n]
    if len(results) != TASKS or wrong or not retried:
        raise SystemExit(f"FAILED: {len(results)}/{TASKS} results, wrong: {wrong}")
    by_worker: dict[str, int] = {}
    for result in results.values():
        by_worker[result["worker"]] = by_worker.get(result["worker"], 0) + 1
    print("tasks per worker:", ", ".join(f"{k}={v}" for k, v in sorted(by_worker.items())))
    print(f"{TASKS}/{TASKS} tasks done, all results correct ({len(retried)} retried)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds each task takes")
    options = parser.parse_args()
    ipcactors.run(main, options.delay, backend=options.backend, log_level="WARNING")
