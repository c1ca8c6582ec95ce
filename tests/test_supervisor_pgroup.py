"""Each child runs in its own process group: stopping it stops what it started.

The processes a child starts (here ``sleep`` and a shell that ignores SIGTERM, with a child of
its own) are gone after a clean shutdown, a stop, an exit of the child, a one_for_one restart,
and a SIGKILL of the supervisor; one that left the group on purpose (``start_new_session``)
survives them, and the test kills it itself. Every test runs on asyncio and trio.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import _pgroup_workers
import anyio
import psutil
import pytest
from _supervising import alive, supervisor, wait_until

from ipcactors._supervision import _forkserver

pytestmark = pytest.mark.anyio

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def none_alive(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(alive(pid) for pid in pids)


@pytest.fixture
def strays() -> Iterator[list[psutil.Process]]:
    """Processes a test saw started outside the supervisor's reach (daemons, or grandchildren a
    failing test left): killed at the end whatever happened (they are not our children, so the
    leak check cannot see them)."""
    found: list[psutil.Process] = []
    yield found
    for process in found:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def track(strays: list[psutil.Process], pids: list[int]) -> None:
    for pid in pids:
        try:
            strays.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass


async def test_child_runs_in_its_own_process_group(socket_dir: str) -> None:
    with anyio.fail_after(15):
        async with supervisor(socket_dir) as sup:
            info = await sup.spawn(_pgroup_workers.starter, id="a")
            assert await sup.request("a", "pgid") == info.pid
            assert os.getpgid(0) != info.pid


@pytest.mark.parametrize("how", ["shutdown", "stop", "exit"])
async def test_what_a_child_started_is_gone_when_it_stops(
    socket_dir: str, strays: list[psutil.Process], how: str
) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            await sup.spawn(_pgroup_workers.starter, id="a", restart="transient")
            group = (await sup.request("a", "pids"))["group"]
            track(strays, group)
            assert len(group) == 3
            assert all(alive(pid) for pid in group)
            if how == "stop":
                await sup.stop("a")
            elif how == "exit":
                await sup.emit("a", "done")  # returns: a normal exit, not restarted
                await wait_until(lambda: "a" not in sup.children)
            if how != "shutdown":
                await wait_until(none_alive(group))
        await wait_until(none_alive(group))


async def test_sigterm_of_the_stop_sequence_reaches_the_group(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=0.2, terminate_timeout=30) as sup:
            info = await sup.spawn(_pgroup_workers.stubborn_starter, id="a")
            assert info.pid is not None
            group = (await sup.request("a", "pids"))["group"]
            track(strays, group)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(sup.stop, "a")
                await wait_until(none_alive(group))  # SIGTERM, after the ignored stop message
                assert alive(info.pid)  # it ignores SIGTERM: SIGKILL only after 30 s
                os.kill(info.pid, signal.SIGKILL)  # do not wait for them
            assert "a" not in sup.children


async def test_grandchildren_gone_after_one_for_one_restart(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir, strategy="one_for_one") as sup:
            await sup.spawn(_pgroup_workers.starter, id="a")
            await sup.spawn(_pgroup_workers.starter, id="b")
            before = {id: (await sup.request(id, "pids"))["group"] for id in ("a", "b")}
            track(strays, [*before["a"], *before["b"]])
            old_pid = sup.children["a"].pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            await wait_until(lambda: sup.children["a"].running and sup.children["a"].pid != old_pid)
            after = (await sup.request("a", "pids"))["group"]
            track(strays, after)
            await wait_until(none_alive(before["a"]))
            assert all(alive(pid) for pid in before["b"])  # the sibling's are untouched
            assert all(alive(pid) for pid in after)
        await wait_until(none_alive([*before["b"], *after]))


async def test_a_child_whose_grandchild_is_slow_to_die_restarts_once(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    """supervisor.md: one_for_one restarts that child; what is left of its group gets SIGKILL
    before. A grandchild forked without exec holds the child's listening socket, and one with
    gigabytes takes tens of milliseconds to die: the forkserver reported the exit at once,
    the restarted child met its predecessor's socket still listening (AddressInUseError), and
    each restart failed so, until the supervisor gave up (RestartIntensityError) after one
    crash. The exit is now reported once the group is gone."""
    with anyio.fail_after(30):
        async with supervisor(socket_dir, max_restarts=3, max_seconds=5.0) as sup:
            await sup.spawn(_pgroup_workers.heavy_forker, 2048, id="heavy")
            grandchild = await sup.request("heavy", "pids", timeout=20)
            track(strays, grandchild)
            old_pid = sup.children["heavy"].pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            await wait_until(lambda: sup.children["heavy"].pid != old_pid, timeout=20)
            track(strays, await sup.request("heavy", "pids", timeout=20))
            assert sup.children["heavy"].running
            assert sup.children["heavy"].restarts == 1
            assert not alive(grandchild[0])


async def test_a_group_slow_to_die_holds_up_no_other_spawn(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    """The forkserver waits for what is left of an exited child's group to be gone before it
    reports the exit, and does other work meanwhile: it slept through that wait, so a spawn
    asked for while a grandchild freed its gigabytes waited for it (and N such exits at once
    were waited for one after another). The spawn returns while the grandchild still dies."""
    with anyio.fail_after(30):
        async with supervisor(socket_dir, max_restarts=3, max_seconds=5.0) as sup:
            await sup.spawn(_pgroup_workers.heavy_forker, 2048, restart="temporary", id="heavy")
            grandchild = await sup.request("heavy", "pids", timeout=20)
            track(strays, grandchild)
            await sup.spawn(_pgroup_workers.starter, id="warm")  # (the next spawn: warm)
            old_pid = sup.children["heavy"].pid
            assert old_pid is not None
            gone_at: list[float] = []

            async def watch_the_grandchild() -> None:
                while alive(grandchild[0]):
                    await anyio.sleep(0.002)
                gone_at.append(anyio.current_time())

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(watch_the_grandchild)
                os.kill(old_pid, signal.SIGKILL)
                await wait_until(lambda: not alive(old_pid))
                await anyio.sleep(0.02)  # (the forkserver reaps the child, kills its group)
                assert alive(grandchild[0]), "freeing 2 GiB was too quick to tell"
                asked_at = anyio.current_time()
                await sup.spawn(_pgroup_workers.starter, id="b")
                spawned_at = anyio.current_time()
            assert spawned_at < gone_at[0]
            assert spawned_at - asked_at < 0.4  # (it was held up to the wait's end: 0.5 s)
            await wait_until(lambda: "heavy" not in sup.children, timeout=20)


async def test_what_a_stopped_group_leaves_as_zombies_delays_no_exit_report(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    """supervisor.md: N children stop in about one shutdown_timeout + terminate_timeout, not N.
    The forkserver waits for a child's group to be gone before it reports the exit; the
    processes the group's SIGKILL left are zombies until whoever adopted them reaps them (late,
    where PID 1 is no init), and a zombie counted as a member: each exit was reported a second
    late, one after another (4 children: 4 s). A zombie holds nothing open: not waited for."""
    with anyio.fail_after(30):
        async with supervisor(socket_dir) as sup:
            for index in range(4):
                await sup.spawn(_pgroup_workers.starter, id=f"s{index}")
                track(strays, (await sup.request(f"s{index}", "pids"))["group"])
            started = time.monotonic()
        assert time.monotonic() - started < 2.5  # (stopped at once: they obey the stop)


async def test_a_daemon_that_left_the_group_survives_shutdown(
    socket_dir: str, strays: list[psutil.Process]
) -> None:
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            await sup.spawn(_pgroup_workers.starter, True, id="a")
            pids = await sup.request("a", "pids")
            track(strays, [*pids["group"], pids["daemon"]])
        await wait_until(none_alive(pids["group"]))
        assert alive(pids["daemon"])
        assert os.getpgid(pids["daemon"]) == pids["daemon"]  # its own session and group


_KILLED_SUPERVISOR = """
import json, sys
import anyio, ipcactors, _pgroup_workers

async def main():
    async with ipcactors.Supervisor(socket_root=sys.argv[2], retry=0.05) as sup:
        await sup.spawn(_pgroup_workers.starter, True, id="a")
        await sup.spawn(_pgroup_workers.starter, id="b")
        found = {id: await sup.request(id, "pids") for id in ("a", "b")}
        children = [info.pid for info in sup.children.values()]
        print(json.dumps({"children": children, "pids": found}), flush=True)
        await anyio.sleep(60)

anyio.run(main, backend=sys.argv[1])
"""


async def test_grandchildren_gone_when_the_supervisor_is_sigkilled(
    socket_dir: str, anyio_backend: str, strays: list[psutil.Process]
) -> None:
    with supervisor_script(_KILLED_SUPERVISOR, anyio_backend, socket_dir) as (process, _):
        with anyio.fail_after(20):
            assert process.stdout is not None
            line = await anyio.to_thread.run_sync(process.stdout.readline)
        started = json.loads(line)
        found = started["pids"]
        group = [*found["a"]["group"], *found["b"]["group"]]
        daemon = found["a"]["daemon"]
        track(strays, [*started["children"], *group, daemon])
        assert all(alive(pid) for pid in [*started["children"], *group, daemon])
        process.kill()
        killed_at = time.monotonic()
        await wait_until(none_alive([*started["children"], *group]))
        assert time.monotonic() - killed_at < 2.0, "grandchildren outlived the supervisor by >2 s"
        assert alive(daemon)


@contextmanager
def supervisor_script(
    script: str, backend: str, socket_dir: str, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``script`` run as ``python -c script backend root *args`` (tests/ on its path; its
    stdout a pipe), with ``root`` a fresh socket root; the process killed if still running,
    and the root removed, as the block ends."""
    root = os.path.join(socket_dir, "killed")
    os.mkdir(root, 0o700)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-c", script, backend, root, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield process, root
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


FORK_UNDER_SIGTERM = """
import os, signal, sys
from ipcactors._supervision import _forkserver

signal.signal(signal.SIGTERM, _forkserver._parent_gone)  # as the forkserver runs
pid = _forkserver._fork()
if pid == 0:
    os.kill(os.getpid(), signal.SIGTERM)  # the supervisor stops the child at once
    try:
        _forkserver._start_child(())
    finally:
        os._exit(0)  # (not reached when SIGTERM ends the child)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_child_signalled_as_it_is_forked_dies_of_the_signal() -> None:
    # A SIGTERM between the fork and the child's own signal handling ran the forkserver's
    # handler in the child: a SystemExit(70) raised wherever it was, its traceback in the
    # child's output. The fork now holds the signal until the child's handling is in place.
    done = subprocess.run(
        [sys.executable, "-c", FORK_UNDER_SIGTERM], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == str(-signal.SIGTERM), done.stderr
    assert "Traceback" not in done.stderr


def test_the_forkserver_leaves_quietly_when_its_supervisor_resets_the_control_socket(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A supervisor stopped at once (a second Ctrl-C) closes the control socket with the
    forkserver's last report unread: the forkserver reads a reset, which means its supervisor
    is gone, as the end of the stream does. It used to print 'bad control message:
    [Errno 104] Connection reset by peer' on the way out."""
    forkserver_side, supervisor_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with forkserver_side:
        forkserver_side.send(b"\x91\x00")  # a report the supervisor never read
        supervisor_side.close()
        children: set[int] = set()
        reaper = _forkserver.Reaper(children, lambda pid, code: None)
        state = _forkserver._handle(forkserver_side, children, _forkserver._Spares(-1, ()), reaper)
        assert state == _forkserver._GONE
    assert capsys.readouterr().err == ""


def test_a_bye_reaches_the_forkserver_with_a_report_of_its_unread() -> None:
    """A supervisor closed its control socket right after its bye; with a report of the
    forkserver's still unread (the exit of a spawn it had given up), the close reset the
    connection, the forkserver read the reset instead of the bye, took the supervisor for
    dead and waited 2 s for its lifeline: leaving a block with spawns in flight took 2 s more
    now and then (found by probing the bye). The bye now comes with the write side shut, the
    socket closed once the forkserver is gone."""
    report = ["exit", 12345, -9]
    forkserver_side, supervisor_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with forkserver_side, supervisor_side:
        _forkserver.send_message(forkserver_side, report)  # unread by the supervisor
        _forkserver.say_bye(supervisor_side)
        children: set[int] = set()
        reaper = _forkserver.Reaper(children, lambda pid, code: None)
        state = _forkserver._handle(forkserver_side, children, _forkserver._Spares(-1, ()), reaper)
        assert state == _forkserver._STOPPED
    # What a close in its place did: the bye is lost to the reset.
    forkserver_side, supervisor_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with forkserver_side:
        _forkserver.send_message(forkserver_side, report)
        _forkserver.send_message(supervisor_side, ["bye"])
        supervisor_side.close()
        children: set[int] = set()
        reaper = _forkserver.Reaper(children, lambda pid, code: None)
        state = _forkserver._handle(forkserver_side, children, _forkserver._Spares(-1, ()), reaper)
        assert state == _forkserver._GONE


_ENTERED_SUPERVISOR = """
import sys
import anyio, ipcactors, _workers

async def main():
    async with ipcactors.Supervisor(socket_root=sys.argv[2]) as sup:
        print("entered", flush=True)  # its forkserver still starting (preload, rehearsal)
        if sys.argv[3] == "ready":
            await sup.spawn(_workers.echo, id="a")
            print("ready", flush=True)
        await anyio.sleep(60)

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("when", ["starting", "ready"])
async def test_a_sigkilled_supervisor_leaves_no_socket_directory(
    socket_dir: str, anyio_backend: str, when: str
) -> None:
    """supervisor.md: a supervisor killed by SIGKILL leaves no socket directory: its
    forkserver removes it. Killed while the forkserver was still starting, the directory was
    always left: the parent-death SIGTERM came before the part of the forkserver that removes
    it. (After the children were ready it was left now and then: the parent-death signal
    comes when the thread that started the forkserver ends, before the lifeline pipe ends,
    and the forkserver, its parent pid unchanged, took itself for stopped, not orphaned.)"""
    with supervisor_script(_ENTERED_SUPERVISOR, anyio_backend, socket_dir, when) as (
        process,
        root,
    ):
        assert process.stdout is not None
        with anyio.fail_after(20):
            for expected in ["entered", "ready"][: 1 if when == "starting" else 2]:
                line = await anyio.to_thread.run_sync(process.stdout.readline)
                assert line.strip() == expected
        assert os.listdir(root) != []
        process.kill()
        # (a hang guard: the forkserver reaps its children first, slow on a loaded machine)
        await wait_until(lambda: os.listdir(root) == [], timeout=15)


_DYING_SLOWLY = """
import os, sys, time
import anyio, ipcactors, _workers

async def main():
    async with ipcactors.Supervisor(socket_root=sys.argv[2]) as sup:
        await sup.spawn(_workers.echo, id="a")
        print("ready", flush=True)
        # A death as the kernel makes it, stretched: the control socket closes first (a
        # process's files close before its parent-death signal and its children's reparenting),
        # then the rest of the process goes.
        sup._forkserver._sock.close()
        time.sleep(0.3)
        os._exit(1)

anyio.run(main, backend=sys.argv[1])
"""


async def test_a_dying_supervisor_leaves_no_socket_directory_whatever_is_seen_first(
    socket_dir: str, anyio_backend: str
) -> None:
    """supervisor.md: a supervisor killed by SIGKILL leaves no socket directory. Its
    forkserver took a control socket that ended, seen before the kernel had given it a new
    parent or sent the parent-death signal, for a supervisor that stopped it on purpose, and
    left the directory (the SIGKILL test above failed now and then under load). A supervisor
    that stops its forkserver now says so first; a control socket that ends without that word
    is a supervisor that died."""
    with supervisor_script(_DYING_SLOWLY, anyio_backend, socket_dir) as (process, root):
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = await anyio.to_thread.run_sync(process.stdout.readline)
        assert line.strip() == "ready"
        assert os.listdir(root) != []
        await anyio.to_thread.run_sync(process.wait)
        await wait_until(lambda: os.listdir(root) == [])
