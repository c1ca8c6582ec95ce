"""A supervisor without a global lock: spawns, restarts and stops of different children run
side by side; no child's slow start or stubborn stop delays an unrelated restart; operations on
the same child (a stop during its spawn or its restart, shutdown while spawns are in flight)
end well defined, with no process left behind.

Every test runs on asyncio and trio; children run on the same backend as their supervisor.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import _gated_workers
import _workers
import anyio
import pytest
from _supervising import alive, supervisor, wait_until

from ipcactors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    RequestTimeoutError,
    SpawnError,
    Supervisor,
    UnknownPeerError,
)

pytestmark = pytest.mark.anyio

SPAWNS = 100


def _starting(sup: Supervisor) -> int:
    """How many children are spawned but not ready yet."""
    return sum(not info.running for info in sup.children.values())


async def test_concurrent_spawns_are_not_serialized(socket_dir: str) -> None:
    peak = 0
    done = anyio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _starting(sup))
            await anyio.sleep(0.002)

    with anyio.fail_after(60):
        async with supervisor(socket_dir, start_timeout=30.0) as sup:
            await sup.spawn(_workers.echo, id="first")  # the forkserver is up
            started = time.monotonic()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(watch)
                async with anyio.create_task_group() as spawns:
                    for n in range(SPAWNS):
                        spawns.start_soon(lambda n=n: sup.spawn(_workers.echo, n, id=f"w{n}"))
                done.set()
            elapsed = time.monotonic() - started
            pids = {await sup.request(f"w{n}", "pid") for n in range(SPAWNS)}
            assert [await sup.request(f"w{n}", "tag") for n in (0, SPAWNS - 1)] == [0, SPAWNS - 1]
    assert len(pids) == SPAWNS
    # With one lock, one child at a time was between spawn and ready: they were many at once.
    assert peak >= 10, peak
    print(f"{SPAWNS} concurrent spawns: {elapsed:.2f} s, up to {peak} starting at once")


def _restarted(sup: Supervisor, id: str, old_pid: int) -> bool:
    info = sup.children[id]
    return info.running and info.pid not in (None, old_pid)


async def test_a_slow_start_does_not_delay_an_unrelated_restart(
    socket_dir: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    with anyio.fail_after(15):
        async with supervisor(socket_dir, start_timeout=10.0) as sup:
            await sup.spawn(_workers.echo, id="crasher")
            old_pid = await sup.request("crasher", "pid")
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(lambda: sup.spawn(_gated_workers.gated, str(gate), id="slow"))
                await wait_until(lambda: sup.children.get("slow", None) is not None)
                await wait_until(lambda: sup.children["slow"].pid is not None)
                killed = time.monotonic()
                os.kill(old_pid, signal.SIGKILL)
                await wait_until(lambda: _restarted(sup, "crasher", old_pid), timeout=8)
                new_pid = await sup.request("crasher", "pid")
                latency = time.monotonic() - killed
                # The crashed child answers again while the slow one is still starting.
                assert not sup.children["slow"].running
                assert sup.children["slow"].state == "starting"
                assert new_pid != old_pid
                assert sup.children["crasher"].restarts == 1
                gate.unlink()  # the slow child may finish its start now
            assert sup.children["slow"].running
            assert await sup.request("slow", "echo", 1) == 1
    assert latency < 1.0, latency
    print(f"restart beside a slow start: answered again {latency * 1000:.0f} ms after SIGKILL")


async def _spawn_expecting(
    sup: Supervisor, gate: Path, id: str, outcome: dict[str, BaseException]
) -> None:
    try:
        await sup.spawn(_gated_workers.gated, str(gate), id=id)
    except Exception as exc:
        outcome[id] = exc


async def test_stop_during_spawn_interrupts_it(socket_dir: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    outcome: dict[str, BaseException] = {}
    with anyio.fail_after(15):
        async with supervisor(
            socket_dir, start_timeout=10.0, shutdown_timeout=0.3, terminate_timeout=0.3
        ) as sup:
            await sup.spawn(_workers.echo, id="other")
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(_spawn_expecting, sup, gate, "slow", outcome)
                await wait_until(lambda: "slow" in sup.children)
                await wait_until(lambda: sup.children["slow"].pid is not None)
                pid = sup.children["slow"].pid
                assert pid is not None
                await sup.stop("slow")  # does not wait for a start that would never end
            assert not alive(pid)
            assert "slow" not in sup.children
            assert isinstance(outcome["slow"], SpawnError), outcome
            assert "stopped before it was ready" in str(outcome["slow"])
            assert await sup.request("other", "echo", 2) == 2


@pytest.mark.parametrize("by", ["stop", "shutdown"])
async def test_a_spawn_fails_at_once_when_stopped_its_process_given_its_grace(
    socket_dir: str, tmp_path: Path, by: str
) -> None:
    """supervisor.md: stop(id) and shutdown "do not wait for a child's start in progress": its
    spawn raises at once, and its process (deaf here: its start blocks its loop) ends in the
    usual bounded steps. The spawn raised only once those steps were over, shutdown_timeout
    later (a helper probing supervisor.md). Until then the child shows "stopping", and its id
    is not free: a spawn of it says so (its process still holds its socket)."""
    gate = tmp_path / "gate"
    gate.touch()
    raised: list[tuple[type[BaseException], float]] = []

    async def spawn() -> None:
        try:
            await sup.spawn(_gated_workers.gated, str(gate), id="slow")
        except (SpawnError, ClosedError) as exc:
            raised.append((type(exc), time.monotonic()))
            assert sup.children["slow"].state == "stopping"
            if by == "stop":
                with pytest.raises(ConfigError, match="being stopped"):
                    await sup.spawn(_workers.echo, id="slow")

    with anyio.fail_after(20):
        async with supervisor(
            socket_dir, start_timeout=10.0, shutdown_timeout=2.0, terminate_timeout=0.5
        ) as sup:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(spawn)
                await wait_until(lambda: "slow" in sup.children)
                # (the first spawn waits for the forkserver: seconds on a loaded machine)
                await wait_until(lambda: sup.children["slow"].pid is not None, timeout=15)
                pid = sup.children["slow"].pid
                assert pid is not None
                # Connected back (else there is no one to send the stop message: SIGTERM at
                # once), its arguments taken: its start blocks from there.
                await wait_until(lambda: "slow" in sup.server.clients)
                await anyio.sleep(0.2)
                halted_at = time.monotonic()
                await (sup.stop("slow") if by == "stop" else sup.aclose())
                ended_at = time.monotonic()
            assert not alive(pid)
            if by == "stop":  # the id is free once stop() returned
                await sup.spawn(_workers.echo, id="slow")
                assert await sup.request("slow", "echo", 1) == 1
    [(kind, raised_at)] = raised
    assert kind is (SpawnError if by == "stop" else ClosedError)
    assert raised_at - halted_at < 1.0, raised_at - halted_at
    assert ended_at - halted_at >= 2.0  # the process had its grace period all the same


async def test_stop_during_restart_interrupts_it(socket_dir: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with anyio.fail_after(15):
        async with supervisor(
            socket_dir, start_timeout=10.0, shutdown_timeout=0.3, terminate_timeout=0.3
        ) as sup:
            await sup.spawn(_gated_workers.gated, str(gate), id="w")
            old_pid = await sup.request("w", "pid")
            gate.touch()  # its next incarnation is slow to start
            os.kill(old_pid, signal.SIGKILL)
            await wait_until(lambda: sup.children["w"].pid not in (None, old_pid))
            assert sup.children["w"].state == "starting"
            new_pid = sup.children["w"].pid
            assert new_pid is not None
            started = time.monotonic()
            await sup.stop("w")  # does not wait out the restart's start_timeout
            assert time.monotonic() - started < 5.0
            assert not alive(new_pid)
            assert "w" not in sup.children


async def test_shutdown_during_spawns_leaves_no_process(socket_dir: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    outcome: dict[str, BaseException] = {}
    ids = ("s1", "s2", "s3")
    with anyio.fail_after(15):
        async with anyio.create_task_group() as task_group:
            async with supervisor(
                socket_dir, start_timeout=10.0, shutdown_timeout=0.3, terminate_timeout=0.3
            ) as sup:
                await sup.spawn(_workers.echo, id="ready")
                for id in ids:
                    task_group.start_soon(_spawn_expecting, sup, gate, id, outcome)
                await wait_until(lambda: all(id in sup.children for id in ids))
                await wait_until(lambda: all(sup.children[id].pid for id in ids))
                pids = [sup.children[id].pid for id in (*ids, "ready")]
                started = time.monotonic()
            elapsed = time.monotonic() - started
    assert sorted(outcome) == sorted(ids)
    assert all(isinstance(error, ClosedError) for error in outcome.values()), outcome
    assert not [pid for pid in pids if pid is not None and alive(pid)]
    # Leaving did not wait for the starts (start_timeout=10): their grace periods ran together.
    assert elapsed < 5.0, elapsed


async def test_two_children_crashing_together_under_rest_for_one(socket_dir: str) -> None:
    # b and c crash at once: b's restart covers c (started after it), and c's own restart,
    # decided first or second, is absorbed or superseded: each ends up running once more.
    with anyio.fail_after(20):
        async with supervisor(
            socket_dir, strategy="rest_for_one", max_restarts=10, max_seconds=30.0
        ) as sup:
            for id in ("a", "b", "c"):
                await sup.spawn(_workers.echo, id=id)
            pids: dict[str, Any] = {id: await sup.request(id, "pid") for id in ("a", "b", "c")}
            os.kill(pids["c"], signal.SIGKILL)
            os.kill(pids["b"], signal.SIGKILL)
            await wait_until(lambda: all(_restarted(sup, id, pids[id]) for id in ("b", "c")))
            await wait_until(lambda: all(i.state == "running" for i in sup.children.values()))
            for id in ("b", "c"):
                assert await sup.request(id, "pid") != pids[id]
            assert await sup.request("a", "pid") == pids["a"]
            assert sup.children["a"].restarts == 0


async def test_a_stop_signal_is_not_lost_when_the_forkserver_socket_is_full(
    socket_dir: str, log_lines: list[str]
) -> None:
    # Many children stopped at once send their signals through the forkserver's control
    # socket in one burst; a burst larger than the socket holds (~280 messages) must wait its
    # turn, not be dropped. Here the socket is filled by hand while the forkserver is paused.
    from ipcactors._supervision._forkserver import send_message

    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=0.3, terminate_timeout=3.0) as sup:
            await sup.spawn(_workers.stubborn, False, id="w")  # obeys SIGTERM only
            pid = await sup.request("w", "pid")
            forkserver = sup._forkserver
            assert forkserver is not None
            assert forkserver.pid is not None
            os.kill(forkserver.pid, signal.SIGSTOP)
            try:
                sock = forkserver._sock
                assert sock is not None
                with pytest.raises(BlockingIOError):  # noqa: PT012
                    while True:
                        send_message(sock, ["kill", pid, 0])  # signal 0: harmless filler
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(sup.stop, "w")
                    # The SIGTERM is due after shutdown_timeout, while the socket is full.
                    await anyio.sleep(0.6)
                    os.kill(forkserver.pid, signal.SIGCONT)
            finally:
                os.kill(forkserver.pid, signal.SIGCONT)
            assert not alive(pid)
    # SIGTERM arrived (late) and ended it: it was not dropped, leaving it to SIGKILL.
    assert any("child 'w' stopped (was killed by SIGTERM)" in line for line in log_lines)
    assert not any("sending SIGKILL" in line for line in log_lines)


async def test_an_aclose_cancelled_part_way_is_finished_on_leaving(socket_dir: str) -> None:
    # aclose() waits out a stubborn child's grace period; a deadline cancels it part-way. The
    # children and the forkserver must still be stopped: by a second aclose(), and by leaving.
    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=0.5, terminate_timeout=0.5) as sup:
            await sup.spawn(_workers.stubborn, False, id="s")
            pid = await sup.request("s", "pid")
            with anyio.move_on_after(0.1) as scope:
                await sup.aclose()
            assert scope.cancelled_caught  # it was cut short
            assert alive(pid)
            await sup.aclose()  # finishes what the cancelled one left
            assert not alive(pid)
        async with supervisor(socket_dir, shutdown_timeout=0.5, terminate_timeout=0.5) as sup:
            await sup.spawn(_workers.stubborn, False, id="s")
            pid = await sup.request("s", "pid")
            with anyio.move_on_after(0.1):
                await sup.aclose()
            # leaving the block finishes it too
    assert not alive(pid)


async def test_aclose_cancelled_by_a_failing_spawn_beside_it_does_not_hang(
    socket_dir: str,
) -> None:
    # A task group runs aclose() beside a spawn; the spawn fails (ClosedError) and the group
    # cancels aclose() in the middle of stopping the children.
    pid = None
    with anyio.fail_after(20):
        try:
            async with supervisor(socket_dir, shutdown_timeout=0.5, terminate_timeout=0.5) as sup:
                await sup.spawn(_workers.stubborn, False, id="s")
                pid = await sup.request("s", "pid")
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(sup.aclose)
                    await wait_until(lambda: sup.children["s"].state == "stopping")
                    await sup.spawn(_workers.echo, id="late")
        except* ClosedError:
            pass
        else:
            pytest.fail("the late spawn did not raise ClosedError")
    assert pid is not None
    assert not alive(pid)


@pytest.mark.parametrize("after", [0, 0.001, 0.02])
async def test_a_cancelled_stop_still_stops_the_child(socket_dir: str, after: float) -> None:
    """A stop whose caller is cancelled (here within 0, 1 and 20 ms) returns at once, as any
    cancelled wait, and the child is stopped all the same: gone, no longer supervised, its id
    free again. It stayed 'stopping' for good: still listed, requests to it waiting out their
    timeout, its id refused by spawn, and at 0 ms its process still running."""
    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=0.3, terminate_timeout=0.3) as sup:
            await sup.spawn(_workers.echo, id="w")
            pid = sup.children["w"].pid
            assert pid is not None
            with anyio.move_on_after(after):
                await sup.stop("w")
            await wait_until(lambda: "w" not in sup.children)
            await wait_until(lambda: not alive(pid))
            await sup.spawn(_workers.echo, id="w")
            assert await sup.request("w", "echo", 1) == 1


async def test_emit_to_a_child_whose_connection_dropped_waits_for_it_then_times_out(
    socket_dir: str,
) -> None:
    """A frozen child is dropped by the heartbeats: an emit to it waits for it to come back,
    as for a restart, up to request_timeout (RequestTimeoutError), and goes through once it
    reconnects. The emit never ended: it met the dropped connection again and again, and
    after request_timeout spun the CPU doing so."""
    heartbeats = {"heartbeat_interval": 0.2, "heartbeat_timeout": 0.5, "request_timeout": 1.5}
    pongs: list[Any] = []
    with anyio.fail_after(30):
        async with supervisor(socket_dir, **heartbeats) as sup:
            sup.on("pong", lambda data, client: pongs.append(data))
            await sup.spawn(_workers.echo, id="w")
            pid = sup.children["w"].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await wait_until(lambda: sup.server.statistics().heartbeat_timeouts > 0, 10)
                await wait_until(lambda: not sup.children["w"].running)  # its connection gone
                assert sup.children["w"].state == "running"  # (its process, as supervisor.md)
                started = time.monotonic()
                with pytest.raises(RequestTimeoutError, match=r"within 1\.5 s$"):  # not 1.49999
                    await sup.emit("w", "ping", 1)
                assert time.monotonic() - started < 5
            finally:
                os.kill(pid, signal.SIGCONT)
            await sup.emit("w", "ping", 2)  # waits for its new connection
            assert await sup.request("w", "echo", 3) == 3
            await wait_until(lambda: 2 in pongs)
            assert sup.children["w"].pid == pid  # the same process, reconnected


async def test_a_request_to_a_frozen_child_dropped_by_the_heartbeats_keeps_to_its_timeout(
    socket_dir: str,
) -> None:
    """A request in flight when the heartbeats drop a frozen child's connection fails within
    its timeout (ConnectionLostError: the process lives on, only its connection was lost).
    It waited EXIT_REPORT_WAIT (10 s) for an exit that was not coming, whatever its timeout
    (test_soak.py on a loaded machine: 'sup request: still running after 10.0 s', a timeout
    of 1 s)."""
    heartbeats = {"heartbeat_interval": 0.2, "heartbeat_timeout": 0.5}
    with anyio.fail_after(30):
        async with supervisor(socket_dir, **heartbeats) as sup:
            await sup.spawn(_workers.echo, id="w")
            pid = sup.children["w"].pid
            assert pid is not None
            started = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises((ConnectionLostError, RequestTimeoutError)):
                    await sup.request("w", "echo", 1, timeout=2.0)
                took = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
            assert took < 2.0 + 1.0, took  # (it was 10 s and more)
            assert await sup.request("w", "echo", 3, timeout=10) == 3  # the same process, back


async def test_a_request_timeout_names_the_timeout_it_was_given(socket_dir: str) -> None:
    """It named what was left of it once the child was found ('within 0.29993762699996296
    s')."""
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            await sup.spawn(_workers.echo, id="w")
            with pytest.raises(RequestTimeoutError, match=r"within 0\.3 s"):
                await sup.request("w", "slow", 5.0, timeout=0.3)


async def test_kill_says_its_children_are_stopping_and_they_go_at_once(socket_dir: str) -> None:
    """``kill()`` SIGKILLs every child; ``children`` says so at once (they stayed 'running'
    while already dead), then 'stopped' once they are gone (they stayed 'stopping' until the
    block ended); none is restarted; requests and events to them fail at once (they waited out
    their whole timeout for a restart that never comes), and the block then ends without
    waiting."""
    with anyio.fail_after(20):
        async with supervisor(socket_dir, shutdown_timeout=10.0, request_timeout=30.0) as sup:
            for id in ("a", "b"):
                await sup.spawn(_workers.echo, id=id)
            pids = [info.pid for info in sup.children.values()]
            sup.kill()
            assert {(info.state, info.running) for info in sup.children.values()} == {
                ("stopping", False)
            }
            await wait_until(lambda: not any(alive(pid) for pid in pids if pid is not None))
            await anyio.sleep(0.2)  # time to restart them, were they restarted
            assert [info.state for info in sup.children.values()] == ["stopped", "stopped"]
            with anyio.fail_after(2):
                with pytest.raises(ClosedError, match="killed"):
                    await sup.request("a", "echo", 1)
                with pytest.raises(ClosedError, match="killed"):
                    await sup.emit("b", "echo", 1)
            started = time.monotonic()
        assert time.monotonic() - started < 2


async def test_kill_during_a_group_restart_shows_a_dead_child_stopped(socket_dir: str) -> None:
    """A child already dead when ``kill()`` comes (killed, its group restart stopping a
    sibling) has no process to wait for: it shows 'stopped' at once (it showed 'stopping'
    until the block ended)."""
    with anyio.fail_after(20):
        async with supervisor(
            socket_dir, strategy="one_for_all", shutdown_timeout=5.0, max_restarts=10
        ) as sup:
            await sup.spawn(_workers.echo, id="a")
            await sup.spawn(_workers.stubborn, True, id="b")
            await sup.request("b", "pid")
            pid = sup.children["a"].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the group restart stops b, slowly
            await wait_until(lambda: sup.children["b"].state == "restarting")
            await wait_until(lambda: not alive(pid))
            sup.kill()
            await wait_until(
                lambda: [info.state for info in sup.children.values()] == ["stopped"] * 2, 2
            )


async def test_a_request_to_a_child_being_stopped_fails_at_once(socket_dir: str) -> None:
    """stop() is stopping a child that ignores the stop message: a request to it fails at
    once, saying so (it waited until the child was SIGKILLed, ~shutdown_timeout +
    terminate_timeout, then said it was killed and no longer supervised)."""
    with anyio.fail_after(30):
        async with supervisor(socket_dir, shutdown_timeout=1.5) as sup:
            await sup.spawn(_workers.stubborn, True, id="s")
            await sup.request("s", "pid")
            async with anyio.create_task_group() as stopping:
                stopping.start_soon(sup.stop, "s")
                await wait_until(lambda: sup.children["s"].state == "stopping")
                started = time.monotonic()
                with pytest.raises(UnknownPeerError, match="being stopped"):
                    await sup.request("s", "pid")
                with pytest.raises(UnknownPeerError, match="being stopped"):
                    await sup.emit("s", "pid")
                assert time.monotonic() - started < 1
