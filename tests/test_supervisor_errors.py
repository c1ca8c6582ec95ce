"""Errors that carry their cause: ``SpawnError`` for every way a target can fail to load (in the
parent's check and in the child), and ``RestartIntensityError`` naming the chain of children down
to the one that kept failing, with its exit status.

Every test runs on asyncio and trio. Target modules that must fail are written per test into a
temporary directory on ``sys.path`` (children get the parent's ``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import _escalation
import _workers
import anyio
import psutil
import pytest
from _supervising import supervisor

from ipcactors import (
    ChildExit,
    ConfigError,
    Pool,
    RemoteError,
    RestartIntensityError,
    SocketPathTooLongError,
    SpawnError,
    Supervisor,
)

pytestmark = pytest.mark.anyio

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``make_module(source)``: the name of a new module with that source, importable here and
    in children."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> str:
        name = f"_target_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return make


def own_processes() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# --- SpawnError: the parent's check -------------------------------------------------------------

_GOOD = """
VALUE = 1

def sync(actor):
    pass

async def worker(actor):
    pass
"""


async def test_every_way_a_target_fails_to_load_in_the_parent_is_a_spawn_error(
    socket_dir: str, make_module: Any
) -> None:
    good = make_module(_GOOD)
    cases: list[tuple[str, type[BaseException] | None, str]] = [
        (make_module("raise RuntimeError('broken at import')\n"), RuntimeError,
         "RuntimeError: broken at import"),
        (make_module("def broken(:\n    pass\n"), SyntaxError, "SyntaxError: "),
        (make_module("raise KeyError('no config')\n"), KeyError, "KeyError: 'no config'"),
        (make_module("import sys\nsys.exit(3)\n"), SystemExit, "SystemExit: 3"),
        (make_module("class Stop(BaseException): pass\nraise Stop('halt')\n"), None,
         "Stop: halt"),  # (it came out of spawn as itself)
        (make_module("import _no_such_module_here\n"), ModuleNotFoundError,
         "ModuleNotFoundError: No module named '_no_such_module_here'"),
    ]  # fmt: skip
    targets = [(f"{module}:worker", cause, message) for module, cause, message in cases]
    targets += [
        (f"{good}:missing", AttributeError, "AttributeError: .*'missing'"),
        (f"{good}:VALUE.real.missing", AttributeError, "AttributeError: .*'missing'"),
        (f"{good}:VALUE", None, "not an async function but int"),
        (f"{good}:sync", None, "not an async function .*must be an async"),
    ]
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            before = own_processes()
            for target, cause, message in targets:
                with pytest.raises(SpawnError, match=message) as caught:
                    await sup.spawn(target, id="bad")
                assert target in str(caught.value)
                if cause is None:
                    if "Stop" in message:
                        assert type(caught.value.__cause__).__name__ == "Stop"
                    else:
                        assert caught.value.__cause__ is None
                else:
                    assert type(caught.value.__cause__) is cause, target
            # A lambda is told it is one (not only that it must be async: a nested async def,
            # the fix that suggests, is refused next).
            with pytest.raises(SpawnError, match=r"is a lambda.*module level"):
                await sup.spawn(lambda actor: None, id="bad")  # type: ignore[arg-type,return-value]
            assert own_processes() == before, "a process was started for a refused target"
            assert not sup.children
            await sup.spawn(f"{good}:worker", id="ok", restart="temporary")


# --- SpawnError: the child cannot load what the parent could -------------------------------------

_PARENT_ONLY = """
import os

if os.getpid() != {pid}:
    raise RuntimeError("this module refuses to load in a child")

async def worker(actor):
    pass
"""

_NOT_ASYNC_IN_CHILD = """
import os

if os.getpid() == {pid}:
    async def worker(actor):
        pass
else:
    worker = 42
"""


_PARENT_ONLY_RAISES = """
import os

class Stop(BaseException):
    pass

if os.getpid() != {pid}:
    raise {raised}("in the child")

async def worker(actor):
    pass
"""


async def test_a_target_that_fails_to_load_in_the_child_is_a_spawn_error(
    socket_dir: str, make_module: Any
) -> None:
    raising = make_module(_PARENT_ONLY.format(pid=os.getpid()))
    not_async = make_module(_NOT_ASYNC_IN_CHILD.format(pid=os.getpid()))
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            with pytest.raises(SpawnError, match="RuntimeError: this module refuses") as caught:
                await sup.spawn(f"{raising}:worker", id="raising")
            error = caught.value
            assert "'raising'" in str(error)
            assert isinstance(error.__cause__, RemoteError)
            assert error.__cause__.remote_type == "RuntimeError"
            assert error.__cause__.remote_message == "this module refuses to load in a child"
            assert "raise RuntimeError" in error.__cause__.remote_traceback

            with pytest.raises(SpawnError, match="not an async function") as caught:
                await sup.spawn(f"{not_async}:worker", id="not_async")
            assert "42" in str(caught.value)

            # Not an Exception either (they ended the child with 1: a ChildExitedError)
            for raised in ("KeyboardInterrupt", "Stop"):
                module = make_module(_PARENT_ONLY_RAISES.format(pid=os.getpid(), raised=raised))
                with pytest.raises(SpawnError, match=f"{raised}: in the child") as caught:
                    await sup.spawn(f"{module}:worker", id="base")
                assert isinstance(caught.value.__cause__, RemoteError)

            assert not sup.children
            info = await sup.spawn(_workers.echo, id="ok")
            assert await sup.request("ok", "pid") == info.pid


_UNPRINTABLE = """
import os

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception fails")

if {in_parent} or os.getpid() != {pid}:
    raise Unprintable

async def worker(actor):
    pass
"""


@pytest.mark.parametrize("where", ["parent", "child"])
async def test_a_load_error_that_cannot_be_printed_is_still_a_spawn_error(
    where: str, socket_dir: str, make_module: Any
) -> None:
    # Its message could not be made: spawn raised the RuntimeError of str() (the parent's
    # check), or the child crashed making its report (ChildExitedError).
    module = make_module(_UNPRINTABLE.format(in_parent=where == "parent", pid=os.getpid()))
    with anyio.fail_after(20):
        async with supervisor(socket_dir) as sup:
            with pytest.raises(SpawnError, match="Unprintable: <unprintable Unprintable"):
                await sup.spawn(f"{module}:worker", id="w")
            assert not sup.children


async def run_script(
    script: Path, text: str, backend: str, socket_dir: str, within: float
) -> subprocess.CompletedProcess[bytes]:
    """``text`` written to ``script`` and run (``script backend socket_dir``) to its end,
    within ``within`` seconds, the tests' modules importable."""
    script.write_text(text)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    with anyio.fail_after(within):
        return await anyio.run_process(
            [sys.executable, str(script), backend, socket_dir], env=env, check=False
        )


_MAIN_ONLY = """
import sys
import anyio, ipcactors

if __name__ == "__main__":
    # Defined only when run as a script: the child, which runs this file as __mp_main__,
    # cannot import it.
    async def worker(actor):
        pass

    async def main():
        async with ipcactors.Supervisor(socket_root=sys.argv[2], retry=0.05) as sup:
            try:
                await sup.spawn(worker, id="w")
            except ipcactors.SpawnError as exc:
                cause = exc.__cause__
                print("SpawnError", type(cause).__name__, cause.remote_type, "|", exc)
            print("children", list(sup.children))

    anyio.run(main, backend=sys.argv[1])
"""


async def test_a_main_function_the_child_cannot_import_is_a_spawn_error(
    socket_dir: str, anyio_backend: str, tmp_path: Path
) -> None:
    result = await run_script(tmp_path / "main_only.py", _MAIN_ONLY, anyio_backend, socket_dir, 30)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    lines = out.splitlines()
    assert lines[0].startswith("SpawnError RemoteError AttributeError | "), out
    assert "child 'w' could not load its target '__main__.worker'" in lines[0], out
    assert "define it at the script's top level" in lines[0], out  # the guard, said
    assert lines[1] == "children []", out


_SHORT_OF_DESCRIPTORS = """
import json, os, resource, sys
import anyio, ipcactors, _workers
from _descriptors import take_all_but

def open_fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))

async def main():
    start = open_fds()
    outcomes = []
    with anyio.fail_after(60):
        async with ipcactors.Supervisor(socket_root=sys.argv[2], retry=0.05) as sup:
            for free in (1, 2, 3, 4):  # the first spawn also makes the output's writers
                fillers = take_all_but(free)
                try:
                    await sup.spawn(_workers.echo, id="w")
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
                else:
                    outcomes.append("spawned")
                    await sup.stop("w")
                finally:
                    for fd in fillers:
                        os.close(fd)
            await sup.spawn(_workers.echo, id="w")
            outcomes.append(await sup.request("w", "echo", "answered"))
    print(json.dumps({"outcomes": outcomes, "leaked": len(open_fds()) - len(start)}))

resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
anyio.run(main, backend=sys.argv[1])
"""


async def test_a_supervisor_short_of_descriptors_refuses_a_spawn_and_leaks_nothing(
    socket_dir: str, anyio_backend: str, tmp_path: Path
) -> None:
    """A spawn that cannot make its output's pipes (or their writers, with the first child) is
    a SpawnError, its pipes closed; the supervisor goes on, and leaves as ever. It was a bare
    OSError with a pipe left open per attempt; and when the writers could not be made, leaving
    the supervisor waited for ever (a relay counted that never started), deadlines or not."""
    script = tmp_path / "short.py"
    result = await run_script(script, _SHORT_OF_DESCRIPTORS, anyio_backend, socket_dir, 90)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(result.stdout.decode().splitlines()[-1])
    outcomes = report["outcomes"]
    assert set(outcomes[:-1]) <= {"SpawnError", "spawned"}, outcomes
    assert outcomes[0] == "SpawnError", outcomes
    assert outcomes[-1] == "answered", outcomes
    assert report["leaked"] == 0, report


_NESTED_IN_MAIN = """
import sys
import anyio, ipcactors

async def leaf(actor):
    actor.parent.on("where", lambda data: "leaf")
    await actor.wait_closed()

async def middle(actor, root):
    # This function runs in a child, where this script is __mp_main__: so is leaf's module.
    found, answered = [], anyio.Event()

    async def where(data):
        await answered.wait()
        return f"middle, over {found[0]}"

    actor.parent.on("where", where)
    async with ipcactors.Supervisor(id="mid-sup", socket_root=root, retry=0.05) as inner:
        await inner.spawn(leaf, id="leaf")
        found.append(await inner.request("leaf", "where"))
        answered.set()
        await actor.wait_closed()

async def main():
    root = sys.argv[2]
    async with ipcactors.Supervisor(socket_root=root, retry=0.05) as sup:
        await sup.spawn(middle, root, id="middle")
        print(await sup.request("middle", "where", timeout=20))

if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1])
"""


async def test_a_child_running_a_main_script_function_supervises_its_functions_too(
    socket_dir: str, anyio_backend: str, tmp_path: Path
) -> None:
    """A child whose function is the main script's runs a Supervisor of its own over that
    script's functions (docs/supervisor.md: main-script functions work, and a child may
    supervise): in the child the script is __mp_main__, and its functions were refused as
    not importable by name (SpawnError)."""
    script = tmp_path / "nested_main.py"
    script.write_text(_NESTED_IN_MAIN)
    with anyio.fail_after(40):
        result = await anyio.run_process(
            [sys.executable, str(script), anyio_backend, socket_dir], check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["middle, over leaf"]


# --- RestartIntensityError: what gave up, and why -----------------------------------------------


async def test_a_child_that_connects_but_is_not_ready_in_time_is_not_said_to_be_unconnected(
    socket_dir: str,
) -> None:
    # Its fn blocks its event loop before its first await: it connected back, and the message
    # must say that, and what to look for, not that it never connected.
    with anyio.fail_after(20):
        async with supervisor(socket_dir, start_timeout=1.0) as sup:
            with pytest.raises(
                SpawnError, match=r"'slow' connected back but was not ready within start_timeout"
            ):
                await sup.spawn(_workers.blocks_before_ready, 5.0, id="slow")
            assert sup.children == {}


async def test_restart_intensity_error_carries_the_failing_child_and_its_window(
    socket_dir: str,
) -> None:
    sup = supervisor(socket_dir, max_restarts=2, max_seconds=5.0)

    async def crash_loop() -> None:
        async with sup:
            await sup.spawn(_workers.crash_after, 0.05, 3, id="crasher")
            await anyio.sleep(15)  # cancelled when the supervisor gives up

    with anyio.fail_after(20), pytest.raises(RestartIntensityError) as caught:
        await crash_loop()
    error = caught.value
    assert error.child_id == "crasher"
    assert error.exitcode == 3
    # No report came from the child (it just exited): the chain is the direct child alone.
    assert error.chain == (ChildExit("supervisor", "crasher", 3),)
    assert error.restarts == 2
    assert 0 < error.seconds <= 5.0
    assert (error.max_restarts, error.max_seconds) == (2, 5.0)
    message = str(error)
    assert message.startswith("child 'crasher' of supervisor 'supervisor' exited with code 3;")
    assert "max_restarts=2" in message
    assert "had restarted its children 2 times in" in message


async def test_giving_up_while_the_block_waits_for_a_child_raises_restart_intensity(
    socket_dir: str,
) -> None:
    """The block waits for a request to a healthy child as its sibling crash-loops: the
    supervisor gives up, and its block raises RestartIntensityError (supervisor.md). It
    raised the ChildExitedError of that request, which the giving up's own stop caused."""

    async def waits_for_a_child() -> None:
        async with supervisor(socket_dir, max_restarts=2, shutdown_timeout=1.0) as sup:
            await sup.spawn(_workers.echo, id="healthy")
            await sup.spawn(_workers.crash_after, 0.1, 9, id="crasher")
            await sup.request("healthy", "slow", 10.0, timeout=20)

    with anyio.fail_after(30), pytest.raises(RestartIntensityError) as caught:
        await waits_for_a_child()
    assert caught.value.child_id == "crasher"


async def test_a_three_level_escalation_names_the_whole_chain(socket_dir: str) -> None:
    sup = supervisor(socket_dir, max_restarts=0, id="root")

    async def tree() -> None:
        async with sup:
            # a runs supervisor a-sup with child b, which runs b-sup with child c; c exits
            # with 3 once ready; b-sup, then a-sup, then root give up in turn.
            await sup.spawn(_escalation.escalate, ["b", "c"], 3, 0.3, id="a")
            await anyio.sleep(20)  # cancelled when the supervisor gives up

    with anyio.fail_after(25), pytest.raises(RestartIntensityError) as caught:
        await tree()
    error = caught.value
    assert error.child_id == "a"
    assert error.exitcode == 1
    assert error.chain == (
        ChildExit("root", "a", 1),
        ChildExit("a-sup", "b", 1),
        ChildExit("b-sup", "c", 3),
    )
    assert error.chain[-1].exitcode == 3
    assert str(error).startswith(
        "child 'a' of supervisor 'root' -> child 'b' of supervisor 'a-sup' -> "
        "child 'c' of supervisor 'b-sup' exited with code 3;"
    ), str(error)


# --- a supervisor that cannot start -------------------------------------------------------------


async def test_a_supervisor_that_cannot_serve_raises_why_and_leaves_the_task_sound(
    socket_dir: str,
) -> None:
    """Entering a supervisor whose server cannot start raises that server's error, typed, and
    the task goes on as before. Its clean-up left the actor's scopes from inside a scope it had
    just entered: a bare RuntimeError came out instead (asyncio: 'Attempted to exit a cancel
    scope that isn't the current tasks's current cancel scope'; Trio: 'Cancel scope stack
    corrupted', and the run then ended with 'Nursery stack corrupted')."""
    with pytest.raises(SocketPathTooLongError):
        async with supervisor(socket_dir, id="s" * 120):
            pytest.fail("entered")
    with pytest.raises(ConfigError):  # (an id that names no socket file)
        async with supervisor(socket_dir, id="a/b"):
            pytest.fail("entered")
    await anyio.sleep(0.01)  # this task's scopes are sound
    async with supervisor(socket_dir) as sup:  # and a supervisor starts as usual
        assert sup.children == {}


@pytest.mark.parametrize("bad_id", ["a\0b", "\udc80", ""])
async def test_an_id_no_actor_can_take_is_a_config_error_when_a_supervisor_or_pool_is_made(
    socket_dir: str, bad_id: str
) -> None:
    """Supervisor and Pool check their id as Actor does, before anything is made. They took
    ids with NUL or a lone surrogate, and entering them then raised only after making their
    private socket directory, which stayed behind (the fixture checks that nothing did)."""
    with pytest.raises(ConfigError, match="id"):
        Supervisor(id=bad_id, socket_root=socket_dir)
    with pytest.raises(ConfigError, match="id"):
        Pool("math:sqrt", 1, id=bad_id, socket_root=socket_dir)


async def test_a_supervisor_id_with_a_slash_is_refused_when_it_is_made(socket_dir: str) -> None:
    """A supervisor serves at its id's socket file in its private directory; an id with '/'
    names none. It was refused only when entered, saying "pass path=", which a supervisor
    does not take."""
    for make in (
        lambda: Supervisor(id="a/b", socket_root=socket_dir),
        lambda: Pool("math:sqrt", 1, id="a/b", socket_root=socket_dir),
    ):
        with pytest.raises(ConfigError, match=r"id 'a/b' .*'/'") as caught:
            make()
        assert "path=" not in str(caught.value)


async def test_a_supervisor_whose_forkserver_cannot_start_says_why_and_leaves_nothing(
    socket_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forkserver's process cannot start (here: no interpreter at ``sys.executable``, as
    in some embedded Pythons): a SpawnError saying so, with the OS's error as its cause, and
    nothing left behind. Its clean-up left the task group from inside a newer scope: a bare
    RuntimeError came out, the actor was never left (the enclosing run then failed too), and
    its descriptors and socket directory stayed."""
    fds = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(sys, "executable", os.path.join(socket_dir, "no-such-python"))
    with pytest.raises(SpawnError, match="forkserver") as raised:
        async with supervisor(socket_dir):
            pytest.fail("entered")
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    monkeypatch.undo()
    await anyio.sleep(0.01)  # this task's scopes are sound
    assert os.listdir(socket_dir) == []
    assert set(os.listdir("/proc/self/fd")) <= fds
    async with supervisor(socket_dir) as sup:  # and a supervisor starts as usual
        assert sup.children == {}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("log_level", None),
        ("log_level", 5),
        ("log_level", "LOUD"),
        ("preload", [5]),
        ("preload", "numpy"),
        ("preload", None),
        ("preload", 5),
        ("preload", {"numpy": 1}),
    ],
)
def test_a_log_level_or_preload_children_cannot_take_is_a_config_error(
    socket_dir: str, option: str, value: Any
) -> None:
    """Checked when the supervisor is made (these reached the forkserver's command line: a
    TypeError from Popen, or a forkserver that died at its start, at the first spawn)."""
    with pytest.raises(ConfigError, match=option):
        Supervisor(socket_root=socket_dir, **{option: value})


async def test_a_supervisor_cancelled_as_it_starts_leaves_the_task_sound(
    socket_dir: str,
) -> None:
    """A cancel scope that cancels a supervisor's start (here at once) cancels it like any
    other wait: the scope catches the cancellation, and the task goes on."""
    with anyio.move_on_after(0) as scope:
        async with supervisor(socket_dir):
            await anyio.sleep(5)
    assert scope.cancelled_caught
    await anyio.sleep(0.01)
    assert os.listdir(socket_dir) == []
