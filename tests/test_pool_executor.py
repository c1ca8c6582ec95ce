"""ipcactors.PoolExecutor: a real concurrent.futures.Executor on a Pool (run_in_executor works
unchanged); shutdown waits for the tasks in flight, or cancels them."""

from __future__ import annotations

import asyncio
import concurrent.futures

import _pool_tasks
import pytest

from ipcactors import PoolExecutor, RemoteError


@pytest.fixture(params=["asyncio", "trio"])
def executor(request: pytest.FixtureRequest, socket_dir: str) -> PoolExecutor:
    return PoolExecutor(
        2,
        backend=request.param,
        socket_root=socket_dir,
        shutdown_timeout=2.0,
        terminate_timeout=0.5,
    )


def test_submit_map_and_errors(executor: PoolExecutor) -> None:
    with executor:
        assert isinstance(executor, concurrent.futures.Executor)
        assert executor.submit(_pool_tasks.square, 9).result(timeout=10) == 81
        assert list(executor.map(_pool_tasks.square, range(20), timeout=10)) == [
            n * n for n in range(20)
        ]
        with pytest.raises(RemoteError, match="ValueError: nope"):
            executor.submit(_pool_tasks.fail, "nope").result(timeout=10)
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
