"""The ``ipcactors`` command (also ``python -m ipcactors``): talk to actors from a shell.

Subcommands: ``listen``, ``emit``, ``request``, ``ping``, ``run`` and ``bench``; see docs/cli.md
and ``ipcactors COMMAND --help``.

Invariants:
- Exit status: 0 success, 1 failure (a connection that cannot be made, a remote error, a
  timeout, no reply to any ping), 2 a usage error (bad options, a target or JSON that does not
  parse, a value the library refuses as a ``ConfigError``); ``run`` exits as
  :func:`ipcactors.run` does (128 + the signal number after SIGINT/SIGTERM/SIGHUP).
  ``listen`` and ``ping`` end cleanly on SIGINT/SIGTERM/SIGHUP (``ping`` then prints its
  summary).
- stdout carries results only (one line per event, reply or ping; with ``--json`` one JSON
  object per line); errors and logs go to stderr. Once stdout's reader goes (``| head``),
  nothing more is written there, and ``listen`` and ``ping`` stop as at a signal. Colour only
  when the stream is a terminal and ``NO_COLOR`` is not set (or empty).
- Every operation of ``emit``/``request`` is bounded by ``--timeout``: the command never hangs
  on an actor that is not there.
"""

from __future__ import annotations

import argparse
import base64
import functools
import importlib
import inspect
import json
import math
import os
import select
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal, NoReturn, TextIO
from urllib.parse import urlsplit

import anyio
from loguru import logger

from ._actor import Actor
from ._config import Config
from ._core._connection import Connection
from ._core._peer import check_event_name
from ._core._server import Server
from ._core._udp import DatagramServer
from ._errors import (
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    ConnectionLostError,
    EncodeError,
    EventNameError,
    FrameTooLargeError,
    IPCError,
    RemoteError,
    RequestTimeoutError,
    remote_type_of,
)
from ._linewriter import LineWriter
from ._run import run
from ._signals import STOP_SIGNALS, KeptSignals
from ._transports._transport import host_port

__all__ = ["main", "main_exit"]

PROG = "ipcactors"
EXIT_FAILURE = 1
EXIT_USAGE = 2

EPILOG = """\
targets:
  world                 the actor "world" on its Unix socket (<socket-root>/<appspace>world)
  unix:/path/to/sock    a Unix socket by path
  tcp://127.0.0.1:8000  TCP;  tls://host:port  TLS (--cafile, --cert, --key)
  udp://127.0.0.1:8000  UDP (udp://[::1]:8000 for IPv6)

examples:
  ipcactors listen world                       serve as "world", print what arrives
  ipcactors emit world message '"hello"'       send an event (DATA is JSON)
  ipcactors request world add '[1, 2]'         ask, print the reply as JSON
  ipcactors ping -c 3 tcp://127.0.0.1:8000     round-trip times
  ipcactors run myapp:main --backend trio      run an entry point like ipcactors.run
  ipcactors bench --quick                      the benchmark suite (source checkout)

exit status: 0 success, 1 failure, 2 usage error; run: as ipcactors.run (128 + signal).
docs: docs/cli.md"""


class UsageError(Exception):
    """A mistake on the command line: exit status 2."""


def seconds(option: str) -> Callable[[str], float]:
    """An argparse type: a positive, finite number of seconds (else a usage error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"{option} takes a positive number of seconds, such as 2.5; got {text!r}"
            )
        return value

    return parse


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to connect to or listen on, as the command line named it."""

    kind: Literal["unix", "tcp", "tls", "udp"]
    text: str
    id: str | None = None  # an actor id: its default Unix socket
    path: str | None = None
    host: str = ""
    port: int = 0

    @property
    def name(self) -> str:
        """The peer's actor id as this command knows it."""
        return self.id if self.id is not None else self.text


def parse_target(text: str) -> Target:
    """``text`` as a target, or a usage error saying what to write: an address is exactly
    ``scheme://host:port`` (an IPv6 host in brackets), nothing before the host or after the
    port (what urlsplit would take and we would ignore: a user, a path, a query)."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("tcp", "tls", "udp"):
            raise UsageError(
                f"unknown scheme in {text!r}: use tcp://host:port, tls://host:port, "
                "udp://host:port, unix:/path or an actor id"
            )
        example = f"e.g. {scheme}://127.0.0.1:8000 or {scheme}://[::1]:8000"
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError as exc:  # an unclosed bracket, no IPv6 address in it, a bad port
            raise UsageError(f"{text!r} is not {scheme}://host:port ({exc}); {example}") from None
        if not host or port is None:
            raise UsageError(f"{text!r} needs a host and a port, {example}")
        if rest != parts.netloc or "@" in rest:
            raise UsageError(
                f"{text!r} has more than {scheme}://host:port (a user, a path, a query?); "
                f"write {scheme}://{parts.netloc.rpartition('@')[2]}"
            )
        return Target(scheme, text, host=host, port=port)  # type: ignore[arg-type]
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise UsageError("unix: needs a socket path, e.g. unix:/tmp/app.world")
        return Target("unix", text, path=path)
    if not text or "/" in text:
        raise UsageError(
            f"{text!r} is not an actor id; name a socket path as unix:{text}"
            if text
            else "the target is empty: give an actor id or an address (see --help)"
        )
    return Target("unix", text, id=text)


MSGPACK_INT_MIN, MSGPACK_INT_MAX = -(2**63), 2**64 - 1


def parse_data(text: str | None, what: str, config: Config) -> Any:
    """``text`` as JSON that ``config``'s wire can carry (a :class:`UsageError` otherwise,
    before anything connects); ``what`` names the argument it came from in the error."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"{what} must be JSON ({exc}); quote strings twice in a shell: '\"hello\"'"
        ) from None
    except RecursionError:
        raise UsageError(f"{what} nests too deep for JSON here: flatten it") from None
    try:  # the encoder's own checks, as the event will meet them once connected
        config.wire_codec.encoder(config.limits).event("cli", value)
    except (EncodeError, FrameTooLargeError) as exc:
        beyond = _integer_beyond_msgpack(value) if config.codec == "msgpack" else None
        if beyond is not None:  # (node-ipc's JSON carries any)
            raise UsageError(
                f"{what} has an integer msgpack cannot carry ({beyond}: the range is -2**63 "
                "to 2**64 - 1); send it as a string"
            ) from None
        raise UsageError(f"{what} cannot go on the {config.codec} wire: {exc}") from None
    return value


def parse_event(text: str, config: Config) -> str:
    """``text`` as an event name ``config``'s wire takes (a :class:`UsageError` otherwise,
    before anything connects)."""
    try:
        check_event_name(text, config.wire_codec.peer_reserved)
    except EventNameError as exc:
        raise UsageError(f"EVENT: {exc}") from None
    return text


def _integer_beyond_msgpack(value: Any) -> int | None:
    """The first integer in parsed JSON ``value`` that msgpack cannot carry, if any (JSON's
    are unbounded). A walk with a stack of its own: the parser's depth is not ours to
    recurse."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is int and not MSGPACK_INT_MIN <= item <= MSGPACK_INT_MAX:
            return item
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
    return None


def _jsonable(value: Any) -> Any:
    """What ``json.dumps`` cannot write: bytes as ``{"$bytes": base64}``, arrays as lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return list(value)
    return repr(value)


def _strictly_json(value: Any) -> Any:
    """``value`` with what JSON has no form for made JSON: non-finite floats as
    ``{"$float": "NaN"}``, a map key that is not a string as the JSON text of that key (bytes
    keys, which msgpack carries). Decoded data is bounded in depth, so the recursion is too."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        # JSON has no NaN or infinities: JavaScript's names for them, in a map
        return {"$float": "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else dumps(key): _strictly_json(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_strictly_json(item) for item in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    return _strictly_json(_jsonable(value))


def dumps(value: Any) -> str:
    """``value`` as one line of JSON that any reader takes (RFC 8259: no NaN)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable, allow_nan=False)
    except (ValueError, TypeError):  # a non-finite float or a key JSON has no form for
        return json.dumps(_strictly_json(value), ensure_ascii=False, allow_nan=False)


# --- output -----------------------------------------------------------------------------------


def _escaped(record: dict[str, Any] | None, line: str) -> str:
    """``line`` with what stdout's encoding cannot hold escaped: as JSON escapes (``\\ud800``)
    when it is ``record`` as JSON, else as Python's."""
    if record is not None:
        return json.dumps(_strictly_json(record), ensure_ascii=True, allow_nan=False)
    encoding = sys.stdout.encoding or "utf-8"
    return line.encode(encoding, "backslashreplace").decode(encoding)


#: What a human line shows escaped of a peer's id or event name, as Python's repr does: the
#: control characters (a newline would forge a line, ESC reach the terminal) and backslash.
_NAME_ESCAPES: Final = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    **{ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"},
    **{code: f"\\u{code:04x}" for code in (0x2028, 0x2029)},
}
#: And of data shown as JSON, which escapes the C0 controls but not DEL and the C1 ones.
_JSON_ESCAPES: Final = {code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), 0x2028, 0x2029)}


def shown_name(text: str) -> str:
    """A peer's id or event name for a human line: on one line, with no terminal control."""
    return text.translate(_NAME_ESCAPES)


def shown_json(text: str) -> str:
    """JSON for a human line: the same, with DEL and the C1 controls escaped as JSON does."""
    return text.translate(_JSON_ESCAPES)


def wants_colour(stream: TextIO) -> bool:
    """Colour on a terminal only, and never with NO_COLOR set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


WATCH_INTERVAL = 0.2  # s: how often Output.watch looks whether stdout's reader went
FINISH_WAIT = 1.0  # s: for stdout's reader to take the last lines of listen or ping


class Output:
    """stdout: one line per result (a JSON object with ``--json``); stderr: errors."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.colour = wants_colour(sys.stdout)
        self.error_colour = wants_colour(sys.stderr)
        #: stdout's reader went (``| head`` has its lines): nothing more is written there.
        self.closed = False
        #: Called once stdout closes: ``listen`` and ``ping`` stop, as at a signal.
        self.on_closed: Callable[[], None] | None = None
        self._writer: LineWriter | None = None  # see start_writing

    def start_writing(self) -> None:
        """From now on a thread writes the lines (``listen`` and ``ping``, which run until a
        signal: written from the loop, a line to a reader that stopped reading would hold
        the loop, and the signal with it); see :meth:`emit` and :meth:`finish`."""
        if sys.stdout is None or self._writer is not None:
            return
        try:
            fd = sys.stdout.fileno()
            sys.stdout.flush()
        except (OSError, ValueError):  # not a file: written as before
            return
        self._writer = LineWriter(fd)

    async def finish(self) -> None:
        """The command ends: what the reader has not taken within ``FINISH_WAIT`` is dropped
        (it stopped reading; the command was asked to stop)."""
        if self._writer is not None:
            await self._writer.close(FINISH_WAIT)

    def paint(self, text: str, code: str, *, err: bool = False) -> str:
        on = self.error_colour if err else self.colour
        return f"\x1b[{code}m{text}\x1b[0m" if on else text

    def emit(
        self, human: str, record: dict[str, Any], *, bounded: bool = False
    ) -> Awaitable[None] | None:
        """Write one line; ``bounded`` (a peer's): with a thread writing (see
        :meth:`start_writing`), what to await first when the lines queued for a reader that
        lags reached their bound, so that the peer waits for it."""
        if self.closed:
            return None
        if sys.stdout is None:  # started with stdout closed (>&-): as if its reader went
            self.closed = True
            if self.on_closed is not None:
                self.on_closed()
            return None
        try:
            # One write per line: print() writes the line and its end separately when stdout
            # is unbuffered (python -u), and a reader that took the line and went (| head -1)
            # would stop us at the line end, before anything else came.
            line = dumps(record) if self.json else human
            writer = self._writer
            if writer is not None:
                if writer.broken:
                    self._close()
                    return None
                encoding = sys.stdout.encoding or "utf-8"
                try:
                    data = line.encode(encoding) + b"\n"
                except UnicodeEncodeError:
                    data = _escaped(record if self.json else None, line).encode(encoding) + b"\n"
                if not bounded:
                    writer.write(data)
                elif not writer.write_within(data):
                    return writer.write_when_room(data)
                return None
            try:
                sys.stdout.write(line + "\n")
            except UnicodeEncodeError:  # a lone surrogate (node-ipc's JSON has them)
                sys.stdout.write(_escaped(record if self.json else None, line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self._close()
        return None

    async def watch(self) -> None:
        """Stop (as :meth:`emit` does at a broken pipe) once stdout's reader goes while we
        have nothing to write: ``listen | head -3`` with no more traffic after the third line
        (what followed it already in the pipe) would learn of it only at its next write.
        Looks every ``WATCH_INTERVAL`` s at a pipe or socket (a terminal or a file never
        goes); ``poll`` reports its errors and hang-ups whatever it is asked for."""
        try:
            fd = sys.stdout.fileno()
            watched = stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)
        except (AttributeError, OSError, ValueError):  # stdout None, closed, or not a file
            return
        if not watched:
            return
        poller = select.poll()
        poller.register(fd, 0)
        while not self.closed:
            await anyio.sleep(WATCH_INTERVAL)
            broken = self._writer is not None and self._writer.broken
            if not self.closed and (broken or poller.poll(0)):
                self._close()

    def _close(self) -> None:
        self.closed = True
        # What print left buffered, and Python's flush at exit, go nowhere (not to a traceback).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if self.on_closed is not None:
            self.on_closed()

    def usage(self, message: str) -> None:
        """A mistake on the command line: ``{"error": "usage", ...}`` with ``--json``."""
        self._error("usage", message)

    def error(self, exc: BaseException) -> None:
        name = remote_type_of(exc)  # (named as a RemoteError names it)
        self._error(name, str(exc) or name)

    def _error(self, name: str, message: str) -> None:
        if sys.stderr is None:  # started with stderr closed (2>&-): not stdout, which print uses
            return
        if self.json:
            print(dumps({"error": name, "message": message}), file=sys.stderr, flush=True)
            return
        head = self.paint(f"{PROG}: error:", "1;31", err=True)
        text = f"{head} {message}" if name == "usage" else f"{head} {name}: {message}"
        print(text, file=sys.stderr, flush=True)


# --- the actor the command plays --------------------------------------------------------------


def config_from(args: argparse.Namespace) -> Config:
    options: dict[str, Any] = {"codec": args.codec, "silent": args.verbose == 0}
    if args.socket_root is not None:
        options["socket_root"] = args.socket_root
    if args.appspace is not None:
        options["appspace"] = args.appspace
    if args.delimiter is not None:
        options["node_ipc_delimiter"] = args.delimiter
    # A command should not wait long for an actor that is not there: a few quick retries.
    options.update(retry=0.1, retry_cap=0.5, stop_retrying=3)
    return Config(**options)


def client_tls(args: argparse.Namespace) -> ssl.SSLContext:
    if args.cafile is None:
        raise UsageError("tls:// needs --cafile (the CA that signed the server's certificate)")
    with _reading("--cafile", args.cafile):
        context = ssl.create_default_context(cafile=args.cafile)
    if args.cert is not None:
        with _reading("--cert/--key", args.cert):
            context.load_cert_chain(args.cert, args.key)
    return context


def server_tls(args: argparse.Namespace) -> ssl.SSLContext:
    if args.cert is None:
        raise UsageError("listening on tls:// needs --cert (and --key unless in the same file)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with _reading("--cert/--key", args.cert):
        context.load_cert_chain(args.cert, args.key)
    if args.cafile is not None:  # mutual TLS: clients must show a certificate from this CA
        context.verify_mode = ssl.CERT_REQUIRED
        with _reading("--cafile", args.cafile):
            context.load_verify_locations(args.cafile)
    return context


@contextmanager
def _reading(option: str, path: str) -> Iterator[None]:
    """A file named by a TLS option that cannot be read, or is not PEM, is a usage error that
    names it (``ssl`` says only "No such file or directory", or an OpenSSL code)."""
    try:
        yield
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise UsageError(f"cannot use {option} {path!r}: {why}") from None


class Link:
    """One way of sending to a target: a connection, or a UDP socket of our own."""

    def __init__(
        self, connection: Connection | None, udp: DatagramServer | None, target: Target
    ) -> None:
        self.connection = connection
        self.udp = udp
        self.target = target

    async def emit(self, event: str, data: Any) -> None:
        if self.connection is not None:
            await self.connection.emit(event, data)
        else:
            assert self.udp is not None
            await self.udp.emit((self.target.host, self.target.port), event, data)

    async def request(self, event: str, data: Any, timeout: float) -> Any:
        if self.connection is not None:
            return await self.connection.request(event, data, timeout=timeout)
        assert self.udp is not None
        address = (self.target.host, self.target.port)
        return await self.udp.request(address, event, data, timeout=timeout)


async def open_link(actor: Actor, target: Target, args: argparse.Namespace) -> Link:
    if target.kind == "udp":
        udp: Literal["udp4", "udp6"] = "udp6" if ":" in target.host else "udp4"
        host = "::1" if udp == "udp6" else "127.0.0.1"
        server = await actor.serve_net(host, 0, udp=udp)
        return Link(None, server, target)
    if target.kind == "unix":
        connection = await actor.connect_to(target.name, target.path)
    else:
        tls = client_tls(args) if target.kind == "tls" else None
        connection = await actor.connect_to_net(target.name, target.host, target.port, tls=tls)
    return Link(connection, None, target)


def client_id(args: argparse.Namespace) -> str:
    return args.id if args.id is not None else f"ipcactors-cli-{os.getpid()}"


# --- subcommands ------------------------------------------------------------------------------


async def cmd_emit(args: argparse.Namespace, out: Output) -> int:
    config = config_from(args)
    target, data = parse_target(args.target), parse_data(args.data, "DATA", config)
    parse_event(args.event, config)

    async def emit() -> int:
        async with Actor(client_id(args), config) as actor:
            with _bounded(args.timeout, f"connecting to {target.text} and sending the event"):
                link = await open_link(actor, target, args)
                await link.emit(args.event, data)
                if link.connection is not None:
                    await actor.disconnect(target.name)  # flushes to the kernel first
        if args.json:
            out.emit("", {"sent": args.event, "to": target.text})
        return 0

    return await _unless_signalled(args.signals, emit)


async def cmd_request(args: argparse.Namespace, out: Output) -> int:
    config = config_from(args)
    target, data = parse_target(args.target), parse_data(args.data, "DATA", config)
    parse_event(args.event, config)

    async def request() -> int:
        async with Actor(client_id(args), config) as actor:
            with _bounded(args.timeout, f"connecting to {target.text}"):
                link = await open_link(actor, target, args)
            started = time.perf_counter()
            reply = await link.request(args.event, data, args.timeout)
            elapsed = (time.perf_counter() - started) * 1000
        out.emit(shown_json(dumps(reply)), {"reply": reply, "ms": round(elapsed, 3)})
        return 0

    return await _unless_signalled(args.signals, request)


async def _unless_signalled(kept: KeptSignals, command: Callable[[], Awaitable[int]]) -> int:
    """``command``'s status, unless SIGINT, SIGTERM or SIGHUP comes first (one that came
    while the command set up included): then it stops at once, and the status is 128 + the
    signal's number, as for any command a signal interrupts."""
    came: list[int] = []
    status = 0
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            with kept.receive() as signals:
                async for signum in signals:
                    came.append(signum)
                    tasks.cancel_scope.cancel()
                    return

        tasks.start_soon(watch)
        status = await command()
        tasks.cancel_scope.cancel()
    return 128 + came[0] if came else status


async def cmd_ping(args: argparse.Namespace, out: Output) -> int:
    target = parse_target(args.target)
    if args.count is not None and args.count < 1:
        raise UsageError("-c/--count must be at least 1")
    config = config_from(args)
    parse_event(args.event, config)
    times: list[float] = []
    sent = 0
    out.start_writing()
    async with (
        Actor(client_id(args), config) as actor,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_stop_on_signal, args.signals, tasks.cancel_scope)
        with _bounded(args.timeout, f"connecting to {target.text}"):
            link = await open_link(actor, target, args)
        out.on_closed = tasks.cancel_scope.cancel
        tasks.start_soon(out.watch)
        while args.count is None or sent < args.count:
            if sent:
                await anyio.sleep(args.interval)
            sent += 1
            started = time.perf_counter()
            try:
                await link.request(args.event, None, args.timeout)
            except RemoteError:
                # "no handler", or the handler raised: answered all the same, and the
                # round trip is what counts
                pass
            except (ClosedError, ConnectionLostError) as exc:
                # The actor went (and did not come back in the connection's retries):
                # nothing more to count. The summary says what came back before.
                out.error(exc)
                break
            except RequestTimeoutError:
                out.emit(
                    f"no reply from {target.text}: seq={sent} (timeout {args.timeout} s)",
                    {"seq": sent, "lost": True},
                )
                continue
            ms = (time.perf_counter() - started) * 1000
            times.append(ms)
            waiting = out.emit(
                f"reply from {target.text}: seq={sent} time={ms:.3f} ms",
                {"seq": sent, "ms": round(ms, 3)},
                bounded=True,
            )
            if waiting is not None:
                await waiting
        tasks.cancel_scope.cancel()
    _ping_summary(out, target.text, sent, times)
    await out.finish()
    return 0 if times else EXIT_FAILURE


def _ping_summary(out: Output, name: str, sent: int, times: list[float]) -> None:
    lost = 100.0 * (sent - len(times)) / sent if sent else 0.0
    record: dict[str, Any] = {"sent": sent, "received": len(times), "loss_percent": round(lost, 1)}
    lines = [
        f"--- {name} ping statistics ---",
        f"{sent} sent, {len(times)} received, {lost:.0f}% lost",
    ]
    if times:
        avg = sum(times) / len(times)
        mdev = math.sqrt(sum((t - avg) ** 2 for t in times) / len(times))
        stats = {"min": min(times), "avg": avg, "max": max(times), "mdev": mdev}
        record.update({key: round(value, 3) for key, value in stats.items()})
        lines.append(
            "rtt min/avg/max/mdev = " + "/".join(f"{v:.3f}" for v in stats.values()) + " ms"
        )
    out.emit("\n".join(lines), {"summary": record})


async def cmd_listen(args: argparse.Namespace, out: Output) -> int:
    target, config = parse_target(args.target), config_from(args)
    reply = parse_data(args.reply, "--reply", config)
    actor_id = target.id or (args.id if args.id is not None else "ipcactors-cli")

    def show(kind: str, event: str, data: Any, peer: Any) -> Any:
        source = getattr(peer, "id", None) or host_port(*peer.address[:2])
        mark = "?" if kind == "request" else ""
        human = (
            f"{out.paint(shown_name(source), '36')} {out.paint(shown_name(event), '1')}{mark} "
            f"{shown_json(dumps(data))}"
        )
        record = {"type": kind, "from": source, "event": event, "data": data}
        waiting = out.emit(human, record, bounded=True)
        answer = data if args.reply is None else reply
        if waiting is not None:  # stdout's reader lags: this peer waits for it (the loop not)
            return _after(waiting, answer)
        return answer

    def lifecycle(kind: str) -> Callable[[Any], None]:
        def report(client: Any) -> None:
            human = out.paint(f"{shown_name(client.id)} {kind}", "2")
            out.emit(human, {"type": kind, "from": client.id})

        return report

    out.start_writing()
    async with Actor(actor_id, config) as actor:
        server: Server | DatagramServer
        if target.kind == "unix":
            server = await actor.serve(target.path)
        elif target.kind == "udp":
            udp: Literal["udp4", "udp6"] = "udp6" if ":" in target.host else "udp4"
            server = await actor.serve_net(target.host, target.port, udp=udp)
        else:
            tls = server_tls(args) if target.kind == "tls" else None
            server = await actor.serve_net(target.host, target.port, tls=tls)
        # Before any client can arrive (no await since serve returned).
        server.on_any(partial(show, "event"))
        server.on_any_request(partial(show, "request"))
        if isinstance(server, Server):
            server.on("connect", lifecycle("connected"))
            server.on("disconnect", lifecycle("disconnected"))
        address = server.address
        where = address if isinstance(address, str) else host_port(*address[:2])
        async with anyio.create_task_group() as listening:
            # `| head` has its lines: stop, as at a signal.
            out.on_closed = listening.cancel_scope.cancel
            out.emit(
                out.paint(f"listening as {actor_id!r} on {where} (Ctrl-C to stop)", "2"),
                {"type": "listening", "id": actor_id, "address": where},
            )
            listening.start_soon(out.watch)
            await _stop_on_signal(args.signals, listening.cancel_scope)
    await out.finish()
    return 0


async def _after(waiting: Awaitable[None], value: Any) -> Any:
    await waiting
    return value


async def _stop_on_signal(kept: KeptSignals, scope: anyio.CancelScope | None) -> None:
    """Return at the first SIGINT, SIGTERM or SIGHUP (one that came while the command set up
    included), cancelling ``scope`` if given."""
    with kept.receive() as signals:
        async for _ in signals:
            break
    if scope is not None:
        scope.cancel()


class _bounded:
    """``anyio.fail_after`` whose timeout names what was being done and what to try."""

    def __init__(self, seconds: float, what: str) -> None:
        self._scope = anyio.fail_after(seconds)
        self._seconds = seconds
        self._what = what

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        try:
            return self._scope.__exit__(*exc_info)
        except TimeoutError:
            raise ConnectionFailedError(
                f"{self._what} took more than {self._seconds} s; is the actor running? "
                "(--timeout sets the limit)"
            ) from None


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    module_name, sep, function_name = args.entry.partition(":")
    if not sep or not module_name or not function_name or module_name.startswith("."):
        raise UsageError(f"run takes module:function, e.g. myapp.main:main; got {args.entry!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module itself imports something missing: its own traceback
        raise UsageError(
            f"no module named {module_name!r} (searched the current folder and sys.path)"
        ) from None
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        raise UsageError(f"module {module_name!r} has no function {function_name!r}")
    if inspect.isfunction(function) and not inspect.iscoroutinefunction(function):
        raise UsageError(  # (refused before it runs; run() can only tell once it returned)
            f"{args.entry} is a plain function: run takes one defined with async def"
        )
    level = {0: "INFO", 1: "DEBUG"}.get(args.verbose, "TRACE")
    # Run by ``main`` past its error handling: what the function raises is its own, with
    # run()'s traceback and status, not one of the command's errors.
    args.then_run = functools.partial(
        run, function, *args.args, backend=args.backend, log_level=level
    )
    return 0


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    root = os.getcwd()
    if not os.path.isfile(os.path.join(root, "benchmarks", "_runner.py")):
        raise UsageError(
            "the benchmark suite is not installed with the package: run this command in a "
            "source checkout of ipcactors (the folder with benchmarks/), or `make bench` there"
        )
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])]
    return subprocess.call([*command, *args.bench_args], cwd=root)


# --- the parser -------------------------------------------------------------------------------


class ArgumentsRefused(UsageError):
    """What argparse refused, with the usage line of the (sub)command it was parsing."""

    def __init__(self, message: str, usage: str, prog: str) -> None:
        super().__init__(message)
        self.usage, self.prog = usage, prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Raised, not printed: ``main`` prints it as the output asks (JSON with --json).
        raise ArgumentsRefused(message, self.format_usage(), self.prog)


def _common() -> _Parser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--id", help="this command's actor id (default: ipcactors-cli-PID)")
    group.add_argument("--socket-root", metavar="DIR", help="directory of the Unix sockets")
    group.add_argument("--appspace", help='socket file prefix (default "app.", as node-ipc)')
    group.add_argument(
        "--codec",
        choices=["msgpack", "node-ipc"],
        default="msgpack",
        help="wire format; node-ipc talks to node-ipc processes (events only, no requests)",
    )
    group.add_argument("--delimiter", help="with --codec node-ipc: the frame delimiter")
    group.add_argument(
        "--timeout",
        type=seconds("--timeout"),
        default=5.0,
        metavar="S",
        help="seconds to wait (default 5)",
    )
    group.add_argument("--json", action="store_true", help="one JSON object per output line")
    group.add_argument("--cafile", help="TLS: CA certificates to verify the peer with")
    group.add_argument("--cert", help="TLS: this side's certificate chain (PEM)")
    group.add_argument("--key", help="TLS: the private key of --cert, if not in that file")
    group.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop"
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Talk to ipcactors (and node-ipc) actors from a shell.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=f"examples:\n{example}",
            formatter_class=formatter,
        )

    listen = add(
        "listen",
        "serve as an actor and print every event and request that arrives, and from whom",
        "  ipcactors listen world\n"
        "  ipcactors listen tcp://127.0.0.1:8000 --json\n"
        "  ipcactors listen world --reply '{\"ok\": true}'\n"
        "  ipcactors listen world --codec node-ipc --socket-root /tmp\n"
        "requests are answered with their own data (an echo) unless --reply is given",
    )
    listen.add_argument("target", metavar="ID|ADDRESS")
    listen.add_argument("--reply", metavar="JSON", help="answer every request with this value")
    listen.set_defaults(handler=cmd_listen, is_async=True)

    emit = add(
        "emit",
        "send one event to an actor",
        "  ipcactors emit world message '\"hello\"'\n"
        "  ipcactors emit tcp://127.0.0.1:8000 news '{\"n\": 1}'",
    )
    emit.add_argument("target", metavar="TARGET")
    emit.add_argument("event", metavar="EVENT")
    emit.add_argument("data", metavar="DATA", nargs="?", help="JSON (default: null)")
    emit.set_defaults(handler=cmd_emit, is_async=True)

    request = add(
        "request",
        "send a request and print the reply as JSON",
        "  ipcactors request world add '[1, 2]'\n"
        "  ipcactors request tls://localhost:8443 status --cafile ca.pem",
    )
    request.add_argument("target", metavar="TARGET")
    request.add_argument("event", metavar="EVENT")
    request.add_argument("data", metavar="DATA", nargs="?", help="JSON (default: null)")
    request.set_defaults(handler=cmd_request, is_async=True)

    ping = add(
        "ping",
        "measure round trips to an actor (a request it need not handle: 'no handler' is a reply)",
        "  ipcactors ping world\n  ipcactors ping -c 10 -i 0.2 tcp://127.0.0.1:8000",
    )
    ping.add_argument("target", metavar="TARGET")
    ping.add_argument("-c", "--count", type=int, help="stop after N pings (default: until Ctrl-C)")
    ping.add_argument(
        "-i", "--interval", type=seconds("-i/--interval"), default=1.0, help="seconds between pings"
    )
    ping.add_argument("--event", default="ping", help='the request\'s event (default "ping")')
    ping.set_defaults(handler=cmd_ping, is_async=True)

    run_ = add(
        "run",
        "run an async entry point as ipcactors.run does (logging, signals, exit status)",
        "  ipcactors run myapp:main\n  ipcactors run myapp.server:main --backend trio",
    )
    run_.add_argument("entry", metavar="module:function")
    run_.add_argument("args", nargs="*", help="string arguments passed to the function")
    run_.set_defaults(handler=cmd_run, is_async=False)

    bench = add(
        "bench",
        "run the benchmark suite (python -m benchmarks; in a source checkout)",
        "  ipcactors bench --quick\n  ipcactors bench -- --list",
    )
    bench.add_argument("--quick", action="store_true", help="short rounds (about two minutes)")
    bench.add_argument("bench_args", nargs="*", help="more options for python -m benchmarks")
    bench.set_defaults(handler=cmd_bench, is_async=False)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command; returns the exit status. ``exiting``: the process exits with it
    (SIGINT, SIGTERM and SIGHUP stay kept until then: see ``KeptSignals.keep_until_exit``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except ArgumentsRefused as refused:
        if "--json" in argv:
            Output(True).usage(str(refused))
        elif sys.stderr is not None:
            sys.stderr.write(
                f"{refused.usage}{refused.prog}: error: {refused}\n(see {refused.prog} --help)\n"
            )
        return EXIT_USAGE
    out = Output(args.json)
    logger.remove()
    if args.verbose and sys.stderr is not None:
        level = "INFO" if args.verbose == 1 else "DEBUG"
        logger.add(sys.stderr, level=level, colorize=out.error_colour, diagnose=False)
    try:
        if args.key is not None and args.cert is None:
            raise UsageError("--key is the private key of --cert: give --cert too")
        if args.is_async:
            # A signal while the command sets up is not lost, nor a traceback: `listen` and
            # `ping` take it as soon as they watch (see _stop_on_signal).
            with KeptSignals() as args.signals:
                if exiting:
                    args.signals.keep_until_exit()
                status: int = anyio.run(args.handler, args, out, backend=args.backend)
        else:
            status = args.handler(args, out)
    except UsageError as exc:
        out.usage(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        out.error(exc)
        return EXIT_USAGE
    except (IPCError, OSError, ssl.SSLError) as exc:
        out.error(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            return _report(group.exceptions[0], out)
        raise
    then_run = getattr(args, "then_run", None)
    if then_run is not None:  # `run`, once its entry point is found (see cmd_run)
        then_run()
    return status


def _report(exc: Exception, out: Output) -> int:
    """Print one exception that came out of a task group as ``main`` would; its status."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        if isinstance(inner, Exception):
            return _report(inner, out)
    if isinstance(exc, UsageError):
        out.usage(str(exc))
        return EXIT_USAGE
    if isinstance(exc, ConfigError):
        out.error(exc)
        return EXIT_USAGE
    if isinstance(exc, IPCError | OSError | ssl.SSLError):
        out.error(exc)
        return EXIT_FAILURE
    raise exc


def main_exit() -> NoReturn:
    """The console script's entry point: ``sys.exit(main())``. A signal that comes once the
    command is done (a second Ctrl-C as it stops) is ignored: the command stopped cleanly,
    and the interpreter's exit would meet it with the default (its finalization restores
    the default handlers, ours included)."""
    status = main(exiting=True)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(status)
