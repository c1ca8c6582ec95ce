"""The child side of a supervised process: set up, connect back, run the target, exit.

Invariants owned here:
- A child never outlives its supervisor: a thread blocks on the lifeline pipe, whose only write
  end is held by the supervisor process, and ends the process (exit code 70) at EOF, even while
  the event loop is busy; PR_SET_PDEATHSIG (re-checked with ``getppid()``) is the second line.
- A child leads its own process group (the forkserver sets it before this module runs), and
  the processes it starts are in it unless they leave: when the child exits, the forkserver
  SIGKILLs what is left of the group. To stop them gracefully, the child stops them itself
  before it returns; to hand a daemon off, it starts it in a new session (``setsid()``).
- The child reports ready only after it serves its own socket, is connected to its supervisor,
  proved its incarnation token, received its arguments, and its target has run up to its first
  suspension (so handlers it registers first are in place).
- Siblings reach it only once it is ready: its server listens from the start, but holds every
  client after its handshake and welcomes them (the supervisor is not one: it is reached over
  the child's own connection) just before the child reports ready. A sibling's frames wait in
  its outbox meanwhile, so none meets a missing handler, and none is lost when this
  incarnation dies before it is ready: they go to the next one.
- A child that is about to exit abnormally for a reason its supervisor should name tells it
  first (``FAILED_EVENT``, a request, bounded): its target did not load (the exception's type,
  message and traceback; it then never serves its socket), or a supervisor in it gave up (that
  ``RestartIntensityError``'s chain). Best effort: the supervisor does without the report.
- Exit codes, as the interpreter's own: 0 when the target returned, called ``sys.exit()`` or
  ``sys.exit(None)`` (in the target or in a handler), or the supervisor asked it to stop; ``n``
  for ``sys.exit(n)``; 1 when the target raised or did not load (its traceback goes to stderr,
  relayed with the child's id) or called ``sys.exit("message")`` (the message goes to
  stderr); 70 when the supervisor is gone.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import ssl
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import anyio

from .._actor import Actor
from .._config import Config
from .._core._connection import Connection
from .._errors import IPCError, RestartIntensityError, message_of, remote_type_of
from .._exits import caused_by_shutdown, quiet_exit_reports, quiet_unstarted_tasks, system_exit
from .._proto._msgpack import unpack_value
from .._runtime import Runtime, close_in_order, set_runtime
from .._transports._backend import backend_options, being_cancelled
from .._transports._tls import TLSTransport
from .._transports._transport import TCPTransport, Transport
from ._parentdeath import EXIT_PARENT_LOST, set_parent_death_signal
from ._target import Target, load_target

__all__ = [
    "FAILED_EVENT",
    "HELLO_EVENT",
    "READY_EVENT",
    "STOP_EVENT",
    "run_child",
    "run_spare",
    "setup_logging",
    "start_process",
]

# Events between a supervisor and its children (ordinary names: reserved ones cannot be sent).
HELLO_EVENT = "_sup.hello"
READY_EVENT = "_sup.ready"
STOP_EVENT = "_sup.stop"
#: Seconds a stopped child keeps, of the time its supervisor gives it, to exit once it closed.
STOP_MARGIN: Final = 0.5
FAILED_EVENT = "_sup.failed"  # why the child is about to exit abnormally (a request)
_REPORT_TIMEOUT = 5.0  # seconds a FAILED_EVENT report may delay the exit


def _watch_lifeline(fd: int) -> None:
    os.set_inheritable(fd, False)

    def watch() -> None:
        while True:
            try:
                if not os.read(fd, 64):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os._exit(EXIT_PARENT_LOST)

    # The raw thread, not threading.Thread: its start() waits until the new thread runs (a
    # context switch, ~0.5 ms of every spawn); this one needs nothing from the interpreter's
    # thread bookkeeping and blocks in read() at once.
    _thread.start_new_thread(watch, ())


def _set_title(title: str) -> None:
    # Optional, never a dependency: the forkserver imported it if it is installed, so a child
    # does not search sys.path for it again on every spawn.
    module = sys.modules.get("setproctitle")
    if module is not None:
        module.setproctitle(title)


#: How the supervisor's relay shows this child's lines (its id, see ``_take_spec``): the log
#: does not say it twice.
_relayed_as = ""


def _log_format(record: Any) -> str:
    """A child's log line: its level and message, the message without the ``[id]`` its actor
    put in front when the relay puts the same one (an actor of another id keeps its own)."""
    message = record["message"]
    if _relayed_as and message.startswith(_relayed_as):
        message = message[len(_relayed_as) :]
    record["extra"]["_line"] = message
    return "{level: <7} {extra[_line]}\n{exception}"


def setup_logging(level: str) -> None:
    """The children's log: stderr (relayed with the child's id) at ``level``. Called once in
    the forkserver (it costs milliseconds), inherited by every child."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level, format=_log_format, diagnose=False)


def run_child(spec: dict[str, Any], lifeline_fd: int, parent_pid: int) -> int:
    """Run in a freshly forked child of the forkserver; returns the exit code."""
    start_process(lifeline_fd, parent_pid)
    return _run(spec)


def run_spare(
    wait_spec: Callable[[], Awaitable[dict[str, Any] | None]],
    lifeline_fd: int,
    parent_pid: int,
    backend: str,
    uvloop: bool,
) -> int:
    """Run in a spare child, forked ahead of its spawn: start the event loop and wait for
    ``wait_spec()`` to give the child to become (``None``: exit, no longer needed). The
    forkserver hands a spare only a spec of its own backend. A target in a module is
    loaded in that loop; one in the main script after it ended (the script may start a loop at
    its top level: ``refuse_in_main_script`` must see it, not anyio). Returns the exit code."""
    start_process(lifeline_fd, parent_pid)
    _set_title("ipcactors: spare")

    async def spare() -> int | dict[str, Any]:
        spec = await wait_spec()
        if spec is None:
            return 0
        if spec["main_path"] is not None:
            return spec  # run below, as a freshly forked child would
        target = _take_spec(spec)
        try:
            fn = load_target(target)
        except BaseException as exc:  # a module may raise anything while imported
            await _report(spec, _load_failure(exc))
            return 1
        return await _main(spec, fn)

    outcome: int | dict[str, Any] = _run_loop(spare, backend=backend, uvloop=uvloop)
    return _run(outcome) if isinstance(outcome, dict) else outcome


def start_process(lifeline_fd: int, parent_pid: int) -> None:
    """What a child does first, before it knows what it will run: die with its parents."""
    set_parent_death_signal(parent_pid)
    _watch_lifeline(lifeline_fd)


def _take_spec(spec: dict[str, Any]) -> Target:
    """Become child ``spec`` (output, path, argv, title); its target."""
    stdout = sys.stdout
    if hasattr(stdout, "reconfigure"):
        stdout.reconfigure(line_buffering=True)  # relayed line by line, not at exit
    if spec["path"] is not None:  # None on another host: its own interpreter's path
        sys.path[:] = spec["path"]
    sys.argv[:] = spec["argv"]
    target = Target(spec["module"], spec["qualname"], spec["main_path"])
    _set_title(f"ipcactors: {spec['id']} ({target})")
    global _relayed_as
    _relayed_as = f"[{spec['id']}] "
    return target


def _load_failure(exc: BaseException) -> dict[str, Any]:
    traceback.print_exc()
    return {"load": [remote_type_of(exc), message_of(exc), traceback.format_exc()]}


def _run(spec: dict[str, Any]) -> int:
    """Load the target with no event loop running (a script may start one at import), then
    run it in one."""
    target = _take_spec(spec)
    backend, uvloop = spec["backend"], bool(spec.get("uvloop"))
    try:
        fn = load_target(target)
    except BaseException as exc:  # a module may raise anything while imported
        _run_loop(_report, spec, _load_failure(exc), backend=backend, uvloop=uvloop)
        return 1
    code: int = _run_loop(_main, spec, fn, backend=backend, uvloop=uvloop)
    return code


def _run_loop(fn: Callable[..., Awaitable[Any]], *args: Any, backend: str, uvloop: bool) -> Any:
    try:
        return anyio.run(
            fn, *args, backend=backend, backend_options=backend_options(backend, uvloop)
        )
    except BaseException as exc:
        # sys.exit() in a handler ends the process through the task groups, in a group.
        exiting = system_exit(exc)
        if exiting is None:
            raise
        quiet_unstarted_tasks()
        return _exit_code(exiting)


async def _report(
    spec: dict[str, Any], failure: dict[str, Any], parent: Connection | None = None
) -> None:
    """Tell the supervisor why this child is about to exit abnormally (its target failed to
    load: connect first, without serving; or a supervisor in it gave up), best effort and
    bounded: the supervisor does without it. Waits for the answer, so that the report is in
    before the exit is."""
    message = {"token": spec["token"], **failure}
    with anyio.move_on_after(min(spec["timeout"], _REPORT_TIMEOUT)):
        try:
            if parent is not None:
                await parent.request(FAILED_EVENT, message)
                return
            async with Actor(spec["id"], Config(**spec["config"])) as actor:
                parent = await _connect_parent(actor, spec)
                await parent.request(FAILED_EVENT, message)
        except IPCError:
            pass


async def _connect_parent(
    actor: Actor, spec: dict[str, Any], *, wait: bool = True, ready: anyio.Event | None = None
) -> Connection:
    """Connect to the supervisor: its Unix socket here, TCP (TLS if a CA file is named) from
    another host (``_ssh``), with our incarnation's token (the supervisor admits our id so).
    ``wait``: as for ``connect_to``; ``ready``: nothing received is handled until it is set."""
    address = spec.get("sup_addr")
    transport: Transport
    if address is None:
        transport = actor._unix_transport(spec["sup_path"])
    else:
        host, port = address
        cafile = spec.get("sup_tls")
        if cafile is None:
            transport = TCPTransport(host, port)
        else:
            # The supervisor's certificate must name the address the child connects to.
            transport = TLSTransport(host, port, ssl.create_default_context(cafile=cafile))
    return await actor._connect(spec["sup_id"], transport, wait, ready=ready, token=spec["token"])


@contextlib.asynccontextmanager
async def _drops_named_at_sigterm(actors: Callable[[], Iterable[Actor]]) -> AsyncIterator[None]:
    """While the child runs, SIGTERM (the supervisor's, once the stop message was not taken
    within shutdown_timeout: a backlog ahead of it, a handler that never returns) names what
    each of ``actors()`` received and did not handle, as a close would; then the process dies
    of SIGTERM, as it would have. No time to close in order. Written, not logged: the signal
    may come while the log holds its lock. A handler ``fn`` sets replaces this one; the one
    before is put back at the end (the forkserver's own, after its rehearsal)."""

    ours = os.getpid()

    def name_them(signum: int, frame: object) -> None:
        if os.getpid() == ours:  # (not in a process forked from ours: its copy is stale)
            lines = [
                f"WARNING [{each.id}] {count} event(s) or request(s) from {peer!r} dropped "
                "unhandled: SIGTERM\n"
                for each in tuple(actors())
                if not each.config.silent
                for peer, count in each._unhandled()
            ]
            try:
                os.write(2, "".join(lines).encode(errors="backslashreplace"))
            except OSError:
                pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, name_them)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _escalation(exc: BaseException) -> RestartIntensityError | None:
    """The RestartIntensityError the target ended with (alone, or in a group)."""
    if isinstance(exc, RestartIntensityError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, _ = exc.split(RestartIntensityError)
        first: BaseException | None = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, RestartIntensityError):
            return first
    return None


async def _main(spec: dict[str, Any], fn: Callable[..., Any]) -> int:
    quiet_exit_reports()  # (asyncio: of the tasks an exit cut short, as under run())
    config = Config(**spec["config"])
    stop = anyio.Event()
    code = 0
    async with Actor(spec["id"], config) as actor:
        # Nothing from the supervisor is handled before fn registered its handlers (what it
        # sent our predecessor and never saw acknowledged comes at once: Config.acked).
        ready = anyio.Event()
        # One round trip to the supervisor, and our server starts meanwhile: the hello request
        # travels right behind the connection's hello (a refused handshake fails it).
        parent = await _connect_parent(actor, spec, wait=False, ready=ready)
        actor.parent = parent
        grace: list[float] = []  # the stop message's: seconds until the supervisor's SIGTERM

        def on_stop(data: Any) -> None:
            within = data.get("within") if isinstance(data, dict) else None
            if isinstance(within, int | float) and within >= 0:
                grace.append(float(within))
            stop.set()

        parent.on(STOP_EVENT, on_stop)
        replies: list[Any] = []

        async def say_hello() -> None:
            hello = {"token": spec["token"], "pid": os.getpid()}
            replies.append(await parent.request(HELLO_EVENT, hello, timeout=spec["timeout"]))

        async with anyio.create_task_group() as starting:
            starting.start_soon(say_hello)
            await anyio.lowlevel.checkpoint()  # the request is on its way before we serve
            server = await actor._serve(actor._unix_transport(None), held=True)
        args = unpack_value(replies[0]["args"], numpy=True)
        # What fn makes (a supervisor of its own, actors) registers here: the stop message
        # closes it in order before fn is cancelled, as run() does at SIGTERM. Cancelled first,
        # a supervisor in fn lost its forkserver, and its children were killed, not stopped.
        runtime = Runtime()
        runtime.main_cancelled = anyio.Event()
        set_runtime(runtime)

        async with (
            _drops_named_at_sigterm(lambda: (actor, *runtime.actors)),
            anyio.create_task_group() as task_group,
        ):

            async def run_target() -> None:
                nonlocal code
                try:
                    await fn(actor, *args)
                except SystemExit as exc:
                    code = _exit_code(exc)
                except anyio.get_cancelled_exc_class():
                    # Cancelled by a scope (the stop, the actor's close, a handler's sys.exit()
                    # on its way out through the actor's task groups), it is a normal end.
                    # Raised by fn itself (on asyncio, awaiting a future someone cancelled),
                    # an error.
                    if not (
                        task_group.cancel_scope.cancel_called or actor._closing or being_cancelled()
                    ):
                        traceback.print_exc()
                        code = 1
                    raise
                except Exception as exc:
                    if runtime.signal is not None and caused_by_shutdown(exc):
                        return  # the stop's doing (a supervisor of fn's it closed): no error
                    traceback.print_exc()
                    code = 1
                    gave_up = _escalation(exc)
                    if gave_up is not None:
                        chain = [list(step) for step in gave_up.chain]
                        await _report(spec, {"chain": chain}, parent)
                except BaseException as exc:
                    # Not an Exception (KeyboardInterrupt, a group with a SystemExit...): it
                    # ends the process as it goes on, and the start fails or the exit is
                    # reported as for any other; its status is known now, before ready is said.
                    exiting = system_exit(exc)
                    code = _exit_code(exiting) if exiting is not None else 1
                    raise
                finally:
                    task_group.cancel_scope.cancel()

            async def wait_stop() -> None:
                await stop.wait()
                if grace:  # every close is over before the supervisor's SIGTERM, with time
                    # to exit: what a close cut short is still named in a warning
                    close_by = anyio.current_time() + grace[0] - min(STOP_MARGIN, grace[0] / 4)
                    for each in (actor, *runtime.actors):
                        each._close_by = min(each._close_by, close_by)
                runtime.signal = signal.SIGTERM  # (the stop message stands for it, as in run)
                await close_in_order(runtime)
                task_group.cancel_scope.cancel()
                assert runtime.main_cancelled is not None
                runtime.main_cancelled.set()  # code after a closed block never runs

            task_group.start_soon(run_target)
            task_group.start_soon(wait_stop)
            # Let the target run up to its first suspension (two passes: trio may run the
            # tasks of one batch in either order), so the handlers it registers first are in
            # place before the supervisor is told we are ready. A target that failed already
            # is never reported ready: its spawn fails.
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
                ready.set()  # the supervisor's events and requests are handled from here on
                if code == 0:
                    server.start()  # siblings are welcomed from here on
                    await parent.emit(READY_EVENT, {"token": spec["token"]})
    return code


def _exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with: ``sys.exit()`` and ``sys.exit(None)`` are 0
    (a normal exit: a transient child is not restarted), an int is itself, anything else is
    printed to stderr and is 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1
