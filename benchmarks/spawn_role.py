"""W6 spawn-to-ready roles: ``python -m benchmarks.spawn_role ROLE CONFIG_JSON``.

``ipc``: ``async with ipcactors.Supervisor() as sup: await sup.spawn(worker, id=...)``, timed
until ``spawn`` returns (the child has connected back): the figure is the median of warm spawns
(the supervisor running), the cold one (entering the supervisor + the first spawn) is reported
beside it. Reports ``unavailable`` while ``ipcactors.Supervisor`` does not exist.

``raw``: the floor, a fresh interpreter that imports anyio and msgpack and connects back over a
Unix socket.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio

from ._wire import FrameBuffer, backend_options, now, parse_args, say


async def spawn_ipc(config: dict[str, Any]) -> None:
    import ipcactors

    from .w6_worker import worker

    supervisor = getattr(ipcactors, "Supervisor", None)
    if supervisor is None:
        say("unavailable", reason="ipcactors.Supervisor does not exist yet")
        return
    # Cold: entering the supervisor (it starts its forkserver) until the first child is ready.
    # Warm: each further spawn, one child alive at a time (the previous one is stopped first).
    start = now()
    async with supervisor() as sup:
        await sup.spawn(worker, id="w0")
        cold = (now() - start) * 1e3
        stop = getattr(sup, "stop", None)
        samples = []
        for index in range(1, config["rounds"] + 1):
            if stop is not None:
                await stop(f"w{index - 1}")
            start = now()
            await sup.spawn(worker, id=f"w{index}")
            samples.append((now() - start) * 1e3)
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples], cold_ms=cold)


async def spawn_raw(config: dict[str, Any]) -> None:
    path = f"{config['dir']}/raw.spawn"
    listener = await anyio.create_unix_listener(path)
    samples = []
    async with listener:
        for index in range(config["rounds"] + 1):
            start = now()
            process = await anyio.open_process(
                [sys.executable, "-m", "benchmarks.w6_worker", path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
            )
            async with process:
                stream = await listener.accept()
                buffer = FrameBuffer()
                while not buffer.feed(await stream.receive()):
                    pass
                stop = now()
                await stream.aclose()
                await process.wait()
            if index:
                samples.append((stop - start) * 1e3)
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples])


ROLES = {"ipc": spawn_ipc, "raw": spawn_raw}


def main() -> None:
    role, config = parse_args()
    backend, options = backend_options(config)

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"]):
            await ROLES[role](config)

    if role == "ipc":
        import ipcactors

        ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")
    else:
        anyio.run(bounded, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
