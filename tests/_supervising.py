"""What the supervisor tests share: a supervisor with test timings, polling, process liveness,
a script whose output floods a stdout nobody reads."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import anyio
import psutil

from ipcactors import Supervisor


def supervisor(socket_dir: str, **options: Any) -> Supervisor:
    """A supervisor in ``socket_dir`` with short stop timeouts and fast retries."""
    options.setdefault("shutdown_timeout", 2.0)
    options.setdefault("terminate_timeout", 0.5)
    return Supervisor(socket_root=socket_dir, retry=0.05, retry_cap=0.2, **options)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def output_of_an_unread_flood(
    argv: list[str], env: dict[str, str], *, answered_within: float, ended_within: float
) -> bytes:
    """Run ``argv``, a script whose children flood its stdout, which nobody reads until the
    script says "IPC OK" on stderr (its requests were answered meanwhile); then read it all
    to the script's end, which must be a success. The script is killed and reaped however
    this ends."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.fail_after(answered_within):
            err = b""
            while b"IPC OK" not in err:
                chunk = await anyio.to_thread.run_sync(process.stderr.read1, abandon_on_cancel=True)
                assert chunk, f"the script ended early: {err.decode(errors='replace')}"
                err += chunk
        with anyio.fail_after(ended_within):
            out, rest = await anyio.to_thread.run_sync(process.communicate, abandon_on_cancel=True)
        assert process.returncode == 0, (err + rest).decode(errors="replace")
        return out
    finally:
        kill_and_reap(process)


def kill_and_reap(process: subprocess.Popen[Any]) -> None:
    """``process`` ended (SIGKILL if it still runs), reaped, its pipes closed."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
