"""One large numpy array, round trip, through shared memory (``Config.max_shared_bytes``) beside
the socket path and a memcpy in the same run: ``python -m benchmarks.shm_arrays [--sizes 1,16,64]``.

Each figure is the median of ``--repeat`` round trips of ``request`` (the receiver's handler
returns at once without touching the data) on one Unix socket, both actors in this process:
- ``memcpy``: ``np.copyto`` into a warm array of the same size (the memory limit);
- ``socket``: shared memory off (the socket path);
- ``shm copy``: shared memory on; the sender's array is copied once into a warm slot;
- ``shm zero-copy``: the array comes from ``conn.empty()`` (no copy at all);
- ``zero-copy emit``: ``emit`` of that array, the sender's side only.
Compare figures within one run (the machine's load moves them all).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np

from ipcactors import Actor

MiB = 1024 * 1024


async def _median(repeat: int, step: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(sizes: list[int], repeat: int) -> list[tuple[int, str, float]]:
    rows: list[tuple[int, str, float]] = []
    root = tempfile.mkdtemp(prefix="ia-bench-", dir="/tmp")
    options = {"socket_root": root, "silent": True, "max_frame_size": 300 * MiB}
    for shared in (0, 1 << 30):
        async with (
            Actor("world", max_shared_bytes=shared, **options) as world,
            Actor("hello", max_shared_bytes=shared, **options) as hello,
        ):
            server = await world.serve()
            server.on("array", lambda batch, client: batch.shape[0])
            conn = await hello.connect_to("world")
            for mib in sizes:
                array = np.ones(mib * MiB // 4, np.float32)
                if not shared:
                    warm = np.empty_like(array)

                    async def copy(array: Any = array, warm: Any = warm) -> None:
                        np.copyto(warm, array)

                    rows.append((mib, "memcpy", await _median(repeat, copy)))
                    rows.append(
                        (
                            mib,
                            "socket",
                            await _median(repeat, lambda a=array, c=conn: c.request("array", a)),
                        )
                    )
                    continue
                rows.append(
                    (
                        mib,
                        "shm copy",
                        await _median(repeat, lambda a=array, c=conn: c.request("array", a)),
                    )
                )
                out = conn.empty(array.shape, np.float32)
                out[...] = 1
                rows.append(
                    (
                        mib,
                        "shm zero-copy",
                        await _median(repeat, lambda o=out, c=conn: c.request("array", o)),
                    )
                )
                rows.append(
                    (
                        mib,
                        "zero-copy emit",
                        await _median(repeat, lambda o=out, c=conn: c.emit("array", o)),
                    )
                )
                del out
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,64", help="MiB per array, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = anyio.run(measure, sizes, args.repeat, backend=args.backend)
    for mib, what, seconds in sorted(rows, key=lambda row: row[0]):
        print(f"{mib:5d} MiB  {what:16s} {seconds * 1000:9.2f} ms")


if __name__ == "__main__":
    main()
