"""W6 spawn-to-ready roles: ``python -m benchmarks.spawn_role ROLE CONFIG_JSON``.

``ipc``: ``async with ipcactors.Supervisor() as sup: await sup.spawn(worker, id=...)``, timed
until ``spawn`` returns (the child has connected back): the figure is the median of warm spawns
(the supervisor running), the cold one (entering the supervisor + the first spawn) is reported
beside it. Reports ``unavailable`` while ``ipcactors.Supervisor`` does not exist.

``ipc-live``: the same spawn with ``live`` children already running (W6 at 1, 100, 500 live):
the supervisor is filled to ``live`` children one spawn after another (each fill spawn is timed
too: the report keeps the medians of the first and the last ten, the curve of spawn time against
children alive), then one more child is spawned, timed, and stopped, ``samples`` times (after
one warm-up): the figure is their median.

``ipc-restart``: one child; SIGKILL it and time until a request is answered by its next process
(the supervisor sees the exit, forks the new one, which connects back and is ready, and the
request, queued meanwhile, reaches it), ``samples`` times after one warm-up: the median. With
``slow_sibling`` (``w6-restart-slow``), another child is stuck in its start the whole time
(its function blocks before its first ``await``): no restart may wait for it.

``ipc-remote`` (``w6-remote``, ``w6-remote-restart``): the same on another host over SSH
(docs/remote.md), here asyncssh's own server on loopback (tests/_sshserver.py, keys made for the
run): the cold figure is entering the supervisor + the first spawn there (the SSH connection,
the remote forkserver's start, the child), the figure the median of warm spawns; with
``restart``, the median of SIGKILL-to-answered restarts as ``ipc-restart`` times them. Reports
``unavailable`` without asyncssh.

``raw``: the floor, a fresh interpreter that imports anyio and msgpack and connects back over a
Unix socket.
"""

from __future__ import annotations

import os
import signal
import statistics
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


_MAX_KILL_TRIES = 1000  # requests per restart sample (each bounded): the loop always ends


async def spawn_live(config: dict[str, Any]) -> None:
    import ipcactors

    from .w6_worker import worker

    live = config["live"]
    fill = []
    async with ipcactors.Supervisor(max_children=live + 1, start_timeout=30.0) as sup:
        for index in range(live):
            start = now()
            await sup.spawn(worker, id=f"live{index}")
            fill.append((now() - start) * 1e3)
        samples = []
        for index in range(config["samples"] + 1):  # the first is the warm-up
            start = now()
            await sup.spawn(worker, id=f"extra{index}")
            elapsed = (now() - start) * 1e3
            await sup.stop(f"extra{index}")
            if index:
                samples.append(elapsed)
    curve = {}
    if live > 20:  # the first fill spawn also starts the forkserver: it is the cold one
        curve = {
            "fill_first_ms": statistics.median(fill[1:11]),
            "fill_last_ms": statistics.median(fill[-10:]),
        }
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples], live=live, **curve)


async def spawn_restart(config: dict[str, Any]) -> None:
    import ipcactors

    from .w6_worker import stuck, worker

    samples = []

    async def spawn_stuck(sup: ipcactors.Supervisor) -> None:
        try:
            await sup.spawn(stuck, id="stuck")
        except ipcactors.ClosedError:
            return  # ended with the supervisor, still starting: as meant
        raise RuntimeError("the stuck child became ready")

    # Restarts are what is measured: the intensity limit must not end the run.
    async with (
        anyio.create_task_group() as task_group,
        ipcactors.Supervisor(
            max_restarts=10 * config["samples"] + 10,
            start_timeout=3600.0,
            shutdown_timeout=0.2,
            terminate_timeout=0.5,
        ) as sup,
    ):
        await sup.spawn(worker, id="r")
        if config.get("slow_sibling"):
            task_group.start_soon(spawn_stuck, sup)
            while (info := sup.children.get("stuck")) is None or info.pid is None:
                await anyio.sleep(0.01)
        for index in range(config["samples"] + 1):  # the first is the warm-up
            pid = sup.children["r"].pid
            assert pid is not None
            start = now()
            os.kill(pid, signal.SIGKILL)
            for _ in range(_MAX_KILL_TRIES):
                try:
                    answer = await sup.request("r", "pid", timeout=10)
                except (ipcactors.ChildExitedError, ipcactors.ConnectionLostError):
                    continue  # asked the process that was killed: ask again
                if answer != pid:
                    break
                await anyio.sleep(0)  # its exit is not reported yet
            else:
                raise RuntimeError("the killed child was not restarted")
            if index:
                samples.append((now() - start) * 1e3)
        if config.get("slow_sibling") and sup.children["stuck"].state != "starting":
            raise RuntimeError("the stuck child is no longer starting")
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples])


async def spawn_remote(config: dict[str, Any]) -> None:
    import ipcactors

    from .w6_worker import worker

    try:
        import asyncssh
    except ImportError:
        say("unavailable", reason="asyncssh is not installed (ipcactors[ssh])")
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keys = {}
    for name in ("host", "client"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        keys[name] = key
        key.write_private_key(os.path.join(config["dir"], f"{name}_key"))
    keys["client"].write_public_key(os.path.join(config["dir"], "client_key.pub"))
    user = os.environ.get("USER") or "bench"
    server = await anyio.open_process(
        [
            sys.executable,
            os.path.join(root, "tests", "_sshserver.py"),
            "127.0.0.1",
            os.path.join(config["dir"], "host_key"),
            os.path.join(config["dir"], "client_key.pub"),
            user,
        ],
        stdin=subprocess.DEVNULL,
        stderr=None,
    )
    async with server:
        try:
            assert server.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await server.stdout.receive()
            port = int(line)
            known_hosts = os.path.join(config["dir"], "known_hosts")
            with open(known_hosts, "w") as file:
                public = keys["host"].export_public_key("openssh").decode().strip()
                file.write(f"[127.0.0.1]:{port} {public}\n")
            host = ipcactors.SSHHost(
                "127.0.0.1",
                port,
                user=user,
                client_keys=(os.path.join(config["dir"], "client_key"),),
                known_hosts=known_hosts,
                python=sys.executable,
                cwd=root,
                env={"PYTHONPATH": root},
            )
            await _remote_rounds(config, host, worker)
        finally:
            server.terminate()


async def _remote_rounds(config: dict[str, Any], host: Any, worker: Any) -> None:
    import ipcactors

    samples = []
    start = now()
    async with ipcactors.Supervisor(
        hosts={"h": host},
        auth_key=os.urandom(16),
        max_restarts=10 * config["samples"] + 10,
        shutdown_timeout=0.5,
    ) as sup:
        await sup.spawn(worker, id="w0", host="h")
        cold = (now() - start) * 1e3
        if not config.get("restart"):
            for index in range(1, config["rounds"] + 1):
                await sup.stop(f"w{index - 1}")
                start = now()
                await sup.spawn(worker, id=f"w{index}", host="h")
                samples.append((now() - start) * 1e3)
            say("result", rounds=[{"samples_ms": [sample]} for sample in samples], cold_ms=cold)
            return
        for index in range(config["samples"] + 1):  # the first is the warm-up
            pid = sup.children["w0"].pid
            assert pid is not None
            start = now()
            os.kill(pid, signal.SIGKILL)  # the "host" is this machine
            for _ in range(_MAX_KILL_TRIES):
                try:
                    answer = await sup.request("w0", "pid", timeout=10)
                except (ipcactors.ChildExitedError, ipcactors.ConnectionLostError):
                    continue
                if answer != pid:
                    break
                await anyio.sleep(0)
            else:
                raise RuntimeError("the killed child was not restarted")
            if index:
                samples.append((now() - start) * 1e3)
    say("result", rounds=[{"samples_ms": [sample]} for sample in samples])


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


ROLES = {
    "ipc": spawn_ipc,
    "ipc-live": spawn_live,
    "ipc-restart": spawn_restart,
    "ipc-remote": spawn_remote,
    "raw": spawn_raw,
}


def main() -> None:
    role, config = parse_args()
    backend, options = backend_options(config)

    async def bounded() -> None:
        with anyio.fail_after(config["deadline"]):
            await ROLES[role](config)

    if role.startswith("ipc"):
        import ipcactors

        ipcactors.run(bounded, backend=backend, backend_options=options, log_level="WARNING")
    else:
        anyio.run(bounded, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
