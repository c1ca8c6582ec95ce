"""The forkserver's rehearsal (``_supervision/_rehearsal``): before it forks anything it walks a
child's way to ready on the children's backend, so that they inherit that code warm.

What must hold: the walk goes through (a rehearsal that silently fails costs every spawn its
warmth), it leaves nothing behind (no file, thread or descriptor in the process that then forks),
and a rehearsal that cannot run costs nothing else: the supervisor spawns as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import _workers
import anyio
import psutil
import pytest
from _supervising import supervisor

BACKENDS = [("asyncio", False), ("asyncio", True), ("trio", False)]

# Run in a fresh interpreter, as in a forkserver: TMPDIR is the test's folder.
_REHEARSE = """
import json, os, sys, threading
from ipcactors._supervision._rehearsal import rehearse

backend, uvloop = sys.argv[1], sys.argv[2] == "1"
rehearse(backend, uvloop, rounds=1)  # what a backend's first loop keeps is not the rehearsal's
threads, fds = threading.active_count(), sorted(os.listdir("/proc/self/fd"))
ok = rehearse(backend, uvloop)
print(json.dumps({
    "ok": ok,
    "threads": [threads, threading.active_count()],
    "fds": [fds, sorted(os.listdir("/proc/self/fd"))],
}))
"""


def _rehearse(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _REHEARSE, *args],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize(("backend", "uvloop"), BACKENDS, ids=["asyncio", "uvloop", "trio"])
def test_a_rehearsal_walks_the_childs_way_and_leaves_nothing(
    backend: str, uvloop: bool, short_tmp_path: Path
) -> None:
    report = _rehearse(short_tmp_path, backend, "1" if uvloop else "0")
    assert report["ok"], "the child's way went through to ready, every round"
    assert list(short_tmp_path.iterdir()) == [], "its folder and sockets are gone"
    before, after = report["threads"]
    assert before == after == 1
    before, after = report["fds"]
    assert before == after


# The parent's death (SIGTERM) or, for a remote forkserver, its session's end (SIGHUP) at
# every moment of a rehearsal, one after the other: the forkserver's handler raises SystemExit.
# (A forkserver has no other thread; the signals come from another process, as they do.)
_SIGNALLED = """
import json, os, signal, subprocess, sys, threading, time
from ipcactors._supervision._forkserver import _parent_gone
from ipcactors._supervision._rehearsal import rehearse

backend, uvloop = sys.argv[1], sys.argv[2] == "1"
signal.signal(signal.SIGTERM, _parent_gone)
signal.signal(signal.SIGHUP, _parent_gone)
rehearse(backend, uvloop, rounds=1)
began = time.monotonic()
rehearse(backend, uvloop)
took = time.monotonic() - began  # a whole rehearsal: the signals land all along it
sender = subprocess.Popen(
    [sys.executable, "-c", (
        "import os, sys, time\\n"
        "for line in sys.stdin:\\n"
        "    delay, signum = line.split()\\n"
        "    time.sleep(float(delay))\\n"
        "    os.kill(os.getppid(), int(signum))\\n"
    )],
    stdin=subprocess.PIPE, text=True, bufsize=1,
)
outcomes = []

def hung():
    time.sleep(60)
    print(json.dumps({"hung": outcomes}), flush=True)
    sender.kill()
    os._exit(0)

mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})  # (not ours)
threading.Thread(target=hung, daemon=True).start()
signal.pthread_sigmask(signal.SIG_SETMASK, mask)
for n in range(40):
    signum = signal.SIGTERM if n % 2 else signal.SIGHUP
    began = time.monotonic()
    try:
        sender.stdin.write(f"{took * n / 40} {int(signum)}\\n")
        rehearse(backend, uvloop)
        outcome = "returned"  # (the signal came after it: raised below)
        time.sleep(took + 0.1)
    except SystemExit as exc:
        outcome = f"SystemExit {exc.code}"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    outcomes.append([outcome, round(time.monotonic() - began, 3)])
sender.stdin.close()
sender.wait()
print(json.dumps({"outcomes": outcomes, "took": took}))
"""


@pytest.mark.parametrize(("backend", "uvloop"), BACKENDS, ids=["asyncio", "uvloop", "trio"])
def test_the_signal_of_the_parents_death_waits_for_the_rehearsal_to_end(
    backend: str, uvloop: bool, short_tmp_path: Path
) -> None:
    """Its handler raises SystemExit: raised inside the rehearsal's event loop, it came out as
    an exception group, or was lost and left the loop waiting for ever (its deadline gone with
    it): the forkserver of a supervisor SIGKILLed as it started stayed, orphaned, for good."""
    result = subprocess.run(
        [sys.executable, "-c", _SIGNALLED, backend, "1" if uvloop else "0"],
        env={**os.environ, "TMPDIR": str(short_tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert "hung" not in report, report
    outcomes = report["outcomes"]
    assert {outcome for outcome, _ in outcomes} <= {"SystemExit 70", "returned"}, outcomes
    assert all(seconds < 5 for _, seconds in outcomes), outcomes
    assert list(short_tmp_path.iterdir()) == [], "its folder and sockets are gone"


def _too_long(tmp_path: Path) -> Path:
    """A folder whose sockets' paths would be too long to bind (Unix: 107 bytes)."""
    folder = tmp_path / ("x" * 60) / ("y" * 60)
    folder.mkdir(parents=True)
    return folder


def test_a_rehearsal_that_fails_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    folder = _too_long(tmp_path)
    report = _rehearse(folder, "asyncio", "0")
    assert not report["ok"]
    assert list(folder.iterdir()) == []


def _forkserver() -> psutil.Process:
    (process,) = (
        child
        for child in psutil.Process().children()
        if any("_forkserver" in part for part in child.cmdline())
    )
    return process


@pytest.mark.parametrize("tmpdir", ["usable", "too long"])
async def test_the_forkserver_rehearses_the_childrens_backend_then_forks_quietly(
    socket_dir: str,
    anyio_backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmpdir: str,
) -> None:
    """Its temporary folder is ``TMPDIR``: one too deep for a socket's path makes the
    rehearsal fail, and the children are spawned all the same."""
    folder = tmp_path / "tmp" if tmpdir == "usable" else _too_long(tmp_path)
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(folder))
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            await sup.spawn(_workers.echo, id="w1")
            assert await sup.request("w1", "echo", 1) == 1
            forkserver = _forkserver()
            assert forkserver.cmdline()[-3:] == [anyio_backend, "0", sup.socket_dir]
            assert forkserver.num_threads() == 1
            assert list(folder.iterdir()) == []
