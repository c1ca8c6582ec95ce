"""The runner: plans the cells, runs each in fresh server and client processes, reports.

Invariants:
- Every child process is started through :class:`~benchmarks._procs.Child` and is killed and
  reaped before the runner returns, whatever happened (error, Ctrl-C, SIGTERM).
- Every wait is bounded: each role has a deadline it enforces itself (and SIGALRM behind it),
  and the runner waits for each report at most that long plus a margin.
- Only loopback: Unix sockets in a private temporary directory, TCP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from . import _compare, _machine, _node, _report, pool_role
from ._procs import Child, ChildError, stop_all
from ._report import IMPLS, ROW_BY_KEY, ROWS, Impl, Row
from ._wire import rss_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_RESULTS = os.path.join(HERE, "results")
W4_CLIENTS = 8
W1_SHARED_BYTES = 64 * 1024 * 1024  # w1-shm: Config.max_shared_bytes on both sides
# W8: samples (after one warm-up) per array size in MiB, per round.
W8_SAMPLES = {1: 30, 16: 8, 64: 4, 256: 2}
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Params:
    rounds: int  # measured rounds per cell (after one warm-up round)
    latency_seconds: float  # W1: per round (at most max_iterations round trips)
    max_iterations: int
    warmup_iterations: int
    stream_seconds: float  # W2, W3, W4: per round
    warmup_seconds: float
    w5_seconds: float
    w5_max_iterations: int
    w5_warmup_iterations: int
    w6_rounds: int
    w6_samples: int  # W6 at N live and restart: timed spawns (or kills) after one warm-up
    idle_connections: int
    slow_seconds: float
    slow_cap_bytes: int
    w7_tiny_tasks: int  # W7: tasks per round
    w7_numpy_tasks: int
    w8_sizes: tuple[int, ...]  # W8: array sizes (MiB) measured
    payload_sizes: tuple[int, ...]  # the cost curves' points measured
    fanout_clients: tuple[int, ...]  # and the fan-in curve's
    fanin_events: int  # fan-in: events per round, over all clients
    client_processes: int  # fan-in and fan-out: past this many clients, they share processes
    idle_counts: tuple[int, ...]  # the idle-connection curve's points
    active_pings: int  # its active client's round trips
    deadline: float  # seconds any one role may run
    settle: float = 0.3
    warm_connections: int = 16
    w3_payload_bytes: int = 1 << 20
    slow_chunk_bytes: int = 16 * 1024


FULL = Params(
    rounds=5,
    latency_seconds=0.4,
    max_iterations=20_000,
    warmup_iterations=300,
    stream_seconds=0.5,
    warmup_seconds=0.2,
    w5_seconds=0.4,
    w5_max_iterations=300,
    w5_warmup_iterations=10,
    w6_rounds=5,
    w6_samples=30,
    idle_connections=1000,
    slow_seconds=2.0,
    slow_cap_bytes=64 << 20,
    w7_tiny_tasks=5000,
    w7_numpy_tasks=300,
    w8_sizes=_report.W8_SIZES,
    payload_sizes=_report.PAYLOAD_SIZES,
    fanout_clients=_report.FANOUT_CLIENTS,
    fanin_events=400_000,
    client_processes=64,
    idle_counts=_report.IDLE_COUNTS,
    active_pings=2000,
    deadline=90,
)
QUICK = Params(
    rounds=2,
    latency_seconds=0.1,
    max_iterations=5_000,
    warmup_iterations=50,
    stream_seconds=0.1,
    warmup_seconds=0.04,
    w5_seconds=0.1,
    w5_max_iterations=50,
    w5_warmup_iterations=3,
    w6_rounds=2,
    w6_samples=5,
    idle_connections=200,
    slow_seconds=0.5,
    slow_cap_bytes=32 << 20,
    w7_tiny_tasks=1000,
    w7_numpy_tasks=60,
    w8_sizes=(1, 16, 64),  # CI smoke: no 256 MiB
    payload_sizes=(64, 256 << 10),  # CI smoke: two points of each curve
    fanout_clients=(1, 4),
    fanin_events=40_000,
    client_processes=2,  # CI smoke: 4 clients in 2 processes, so both shapes run
    idle_counts=(1, 100),
    active_pings=300,
    deadline=40,
    settle=0.2,
)


def client_processes(clients: int, most: int) -> list[tuple[int, int]]:
    """How the fan-in and fan-out curves run ``clients`` clients: a process each up to
    ``most``, past that the clients spread evenly over ``most`` processes (each holding several
    connections), as ``(first client's index, connections)``. 256 interpreters starting at
    once on 2 CPUs take longer than a cell's deadline; what the curve asks about is the
    server's cost per client, which the number of client processes does not change."""
    processes = min(clients, most)
    shares = [clients // processes + (k < clients % processes) for k in range(processes)]
    firsts = [sum(shares[:k]) for k in range(processes)]
    return list(zip(firsts, shares, strict=True))


# --- one cell ---------------------------------------------------------------------------------


class Group:
    """The processes of one cell; leaving the block stops them (clients first)."""

    def __init__(self, tree: str = ROOT) -> None:
        self.children: list[Child] = []
        self.tree = tree  # where ipcactors is imported from (a ref's export with --compare)

    def start(self, name: str, argv: list[str], cpus: set[int] | None = None) -> Child:
        env = dict(os.environ)
        paths = [self.tree] if self.tree != ROOT else []
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, ROOT, env.get("PYTHONPATH")]))
        child = Child(name, argv, cpus=cpus, env=env, cwd=self.tree)
        self.children.append(child)
        return child

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            child.stop(grace=1.0)


class Cell:
    def __init__(
        self,
        row: Row,
        transport: str,
        impl: Impl,
        params: Params,
        node: _node.NodeIPC,
        sockets: str,
        pin: set[int],
        tree: str = ROOT,
    ) -> None:
        self.tree = tree
        self.row = row
        self.transport = transport
        self.impl = impl
        self.params = params
        self.node = node
        self.sockets = sockets
        self.pin = pin
        self.cpus = pin if row.pinned else None

    def config(self, **extra: Any) -> dict[str, Any]:
        p = self.params
        return {
            "transport": self.transport,
            "dir": self.sockets,
            "backend": self.impl.backend or "asyncio",
            "rounds": p.rounds,
            "deadline": p.deadline,
            **extra,
        }

    def command(self, role: str, config: dict[str, Any], family: str | None = None) -> list[str]:
        family = family or self.impl.family
        if family in ("zmq", "mpc"):
            config = {**config, "peer": family}
        text = json.dumps(config)
        if family == "node":
            assert self.node.node is not None
            return [self.node.node, _node.SCRIPT, role, text]
        module = {
            "ipc": "ipc_role",
            "raw": "raw_role",
            "spawn": "spawn_role",
            "pool": "pool_role",
            "tensor": "tensor_role",
            "zmq": "peer_role",
            "mpc": "peer_role",
        }[family]
        return [sys.executable, "-m", f"benchmarks.{module}", role, text]

    def wait(self) -> float:
        return self.params.deadline + 10

    # --- kinds of cells ---

    def run(self) -> dict[str, Any]:
        key = self.row.key
        if key in ("w4", "w4-acked") or key in _report.FANOUT_ROWS:
            return self.broadcast()
        if key in _report.FANIN_ROWS:
            return self.fan_in()
        if key in _report.W6_ROWS:
            return self.spawn()
        if key in _report.W7_ROWS:
            return self.pool()
        if key in _report.W8_ROWS:
            return self.tensor()
        if key == "mem-idle" or key in _report.IDLE_ROWS:
            return self.idle()
        if key == "mem-slow":
            return self.slow()
        return self.pair()

    def pair(self) -> dict[str, Any]:
        p = self.params
        key = self.row.key
        if key in ("w1", "w1-shm"):
            role = "client-w1"
            extra: dict[str, Any] = {
                "seconds": p.latency_seconds,
                "max_iterations": p.max_iterations,
                "warmup_iterations": p.warmup_iterations,
            }
            if key == "w1-shm":
                extra["shared_bytes"] = W1_SHARED_BYTES
        elif key == "w5":
            role = "client-w5"
            extra = {
                "seconds": p.w5_seconds,
                "max_iterations": p.w5_max_iterations,
                "warmup_iterations": p.w5_warmup_iterations,
            }
        else:
            role = "client-stream"
            extra = {"seconds": p.stream_seconds, "warmup": p.warmup_seconds}
            if key == "w2-acked":
                extra["acked"] = "on"
            if key == "w2-nested":
                extra["nested"] = True
            if key == "w2x100":
                extra["batch"] = 100
            if key == "w3":
                extra["payload_bytes"] = p.w3_payload_bytes
            if key in _report.PAYLOAD_ROWS:
                extra["payload_bytes"] = int(key.removeprefix("pay-"))
        with Group(self.tree) as group:
            config = self.config(
                acked=extra.get("acked", "off"), shared_bytes=extra.get("shared_bytes", 0)
            )
            server = group.start("server", self.command("server", config), self.cpus)
            ready = server.message(30, {"ready", "unavailable"})
            if ready["kind"] == "unavailable":
                return ready  # an optional anchor (pyzmq) is not installed
            client_config = self.config(**extra, **_address(ready))
            client = group.start("client", self.command(role, client_config), self.cpus)
            return client.message(self.wait(), {"result"})

    def broadcast(self) -> dict[str, Any]:
        p = self.params
        key = self.row.key
        clients = int(key.removeprefix("fanout-")) if key in _report.FANOUT_ROWS else W4_CLIENTS
        config = self.config(
            clients=clients,
            seconds=p.stream_seconds,
            warmup=p.warmup_seconds,
            acked="on" if self.row.key == "w4-acked" else "off",
            max_connections=clients + 10,
        )
        with Group(self.tree) as group:
            server = group.start("server", self.command("server-w4", config))
            ready = server.message(30, {"ready"})
            for index, connections in client_processes(clients, p.client_processes):
                client_config = {
                    **config,
                    **_address(ready),
                    "index": index,
                    "connections": connections,
                }
                group.start(f"client {index}", self.command("client-w4", client_config))
            return server.message(self.wait(), {"result"})

    def fan_in(self) -> dict[str, Any]:
        """N clients emit small events to one server at once (they connect, say ready, and
        start together when the runner creates the start file); a round's figure is all their
        events over the longest client's time."""
        p = self.params
        clients = int(self.row.key.removeprefix("fanin-"))
        start_file = os.path.join(self.sockets, "start")
        config = self.config(max_connections=clients + 10)
        with Group(self.tree) as group:
            server = group.start("server", self.command("server", config))
            ready = server.message(30, {"ready"})
            client_config = self.config(
                **_address(ready),
                seconds=p.stream_seconds,
                warmup=p.warmup_seconds,
                start_file=start_file,
                # The clients share one budget of events per round: each sender outruns the
                # server, and N connections' worth of buffered events would take the server
                # N times as long to drain (64 clients: past the deadline).
                max_events=max(100, p.fanin_events // clients),
            )
            started = [
                group.start(
                    f"client {index}",
                    self.command(
                        "client-stream",
                        {**client_config, "index": index, "connections": connections},
                    ),
                )
                for index, connections in client_processes(clients, p.client_processes)
            ]
            for client in started:
                client.message(self.wait(), {"ready"})
            with open(start_file, "w"):
                pass
            reports = [client.message(self.wait(), {"result"}) for client in started]
        rounds = [
            {
                "count": sum(r["count"] for r in per_round),
                "seconds": max(r["seconds"] for r in per_round),
            }
            for per_round in zip(*(report["rounds"] for report in reports), strict=True)
        ]
        return {"kind": "result", "rounds": rounds}

    def spawn(self) -> dict[str, Any]:
        key = self.row.key
        config = self.config(rounds=self.params.w6_rounds, samples=self.params.w6_samples)
        if key in ("w6-remote", "w6-remote-restart"):
            config["restart"] = key == "w6-remote-restart"
            argv = self.command("ipc-remote", config, family="spawn")
        elif key in ("w6-restart", "w6-restart-slow"):
            config["slow_sibling"] = key == "w6-restart-slow"
            argv = self.command("ipc-restart", config, family="spawn")
        elif key != "w6":
            config["live"] = int(key.removeprefix("w6-live"))
            argv = self.command("ipc-live", config, family="spawn")
        elif self.impl.family == "node":
            argv = self.command("spawn", config)
        else:
            argv = self.command(self.impl.family, config, family="spawn")
        with Group(self.tree) as group:
            parent = group.start("spawner", argv)
            return parent.message(self.wait(), {"result", "unavailable"})

    def pool(self) -> dict[str, Any]:
        p = self.params
        key = self.row.key
        if key == "w7-retry":
            config = self.config(samples=p.w6_samples)
            role = "ipc-retry"
        else:
            kind = "numpy" if key == "w7-numpy" else "tiny"
            tasks = p.w7_tiny_tasks if kind == "tiny" else p.w7_numpy_tasks
            chunksize = pool_role.CHUNKSIZE if key == "w7-tiny-chunked" else 1
            executor = key == "w7-executor"  # ours through PoolExecutor.map, as theirs
            config = self.config(kind=kind, tasks=tasks, chunksize=chunksize, executor=executor)
            role = self.impl.family  # ipc, ppe or loky
        with Group(self.tree) as group:
            parent = group.start("pool", self.command(role, config, family="pool"))
            return parent.message(self.wait(), {"result", "unavailable"})

    def tensor(self) -> dict[str, Any]:
        mib = _report.w8_size(self.row.key)
        path = {"": "socket", "shm-": "shm", "zc-": "zc"}[_report.w8_path(self.row.key)]
        # Zero-copy round trips cost the same at every size (~0.3 ms): as many as at 1 MiB,
        # so that a few delayed by the machine's other work do not move the median.
        samples = W8_SAMPLES[1 if path == "zc" else mib] * (1 if self.params.rounds < 3 else 2)
        config = self.config(mib=mib, samples=samples, w8_path=path)
        family = self.impl.family
        with Group(self.tree) as group:
            if family == "memcpy":
                child = group.start("memcpy", self.command("memcpy", config, family="tensor"))
                return child.message(self.wait(), {"result"})
            prefix = "sock" if family == "sock" else "ipc"
            argv = self.command(f"{prefix}-server", config, family="tensor")
            server = group.start("server", argv)
            ready = server.message(30, {"ready"})
            argv = self.command(f"{prefix}-client", {**config, **_address(ready)}, family="tensor")
            client = group.start("client", argv)
            return client.message(self.wait(), {"result"})

    def idle(self) -> dict[str, Any]:
        p = self.params
        curve = self.row.key in _report.IDLE_ROWS
        connections = int(self.row.key.removeprefix("idle-")) if curve else p.idle_connections
        # The curve's active client measures the server: it and the server share one CPU (as
        # W1's pair does), and the process holding the idle connections gets the others, so
        # that its own work (ipcactors' idle clients keep heartbeats) does not take the CPU
        # from under them (on 2 CPUs, three busy processes made a p99 of scheduler slices).
        server_cpus = holder_cpus = None
        if curve:
            server_cpus = self.pin
            holder_cpus = _cpus() - self.pin or None
        with Group(self.tree) as group:
            total = connections + p.warm_connections
            config = self.config(max_connections=total + 50)
            server = group.start("server", self.command("server", config), server_cpus)
            ready = server.message(30, {"ready"})
            client_config = self.config(
                **_address(ready),
                server_pid=server.pid,
                connections=connections,
                warm_connections=p.warm_connections,
                active_pings=p.active_pings if curve else 0,
                settle=p.settle,
                protocol=self.impl.family,
            )
            if self.impl.family == "ipc":
                argv = self.command("client-idle", client_config)
            else:
                argv = self.command("client-idle-plain", client_config, family="raw")
            client = group.start("client", argv, holder_cpus)
            held = client.message(self.wait(), {"result"})
            if not client_config["active_pings"]:
                return held
            # The active client is a process of its own: in the holder's, it would share an
            # event loop with thousands of idle actors (ipcactors) and measure that loop.
            active_config = {**client_config, "warmup_iterations": 50}
            if self.impl.family == "ipc":
                argv = self.command("client-active", active_config)
            else:
                argv = self.command("client-active-plain", active_config, family="raw")
            active = group.start("active client", argv, server_cpus)
            pings = active.message(self.wait(), {"result"})
            return {**held, "samples_us": pings["samples_us"]}

    def slow(self) -> dict[str, Any]:
        p = self.params
        with Group(self.tree) as group:
            config = self.config(
                seconds=p.slow_seconds,
                cap_bytes=p.slow_cap_bytes,
                chunk_bytes=p.slow_chunk_bytes,
                settle=p.settle,
            )
            server = group.start("server", self.command("server-slow", config))
            ready = server.message(30, {"ready"})
            client_config = {**config, **_address(ready)}
            if self.impl.family == "ipc":
                argv = self.command("client-slow", client_config)
            else:
                argv = self.command("client-slow-plain", client_config, family="raw")
            client = group.start("client", argv)
            client.message(30, {"ready"})
            baseline = rss_bytes(server.pid)
            peak = baseline
            deadline = time.monotonic() + self.wait()
            done = None
            while done is None:
                if time.monotonic() > deadline:
                    raise ChildError("the slow-consumer server did not finish in time")
                done = server.message(0.02, {"done"}, missing_ok=True)
                peak = max(peak, rss_bytes(server.pid))
            return {
                "kind": "result",
                "baseline": baseline,
                "peak": peak,
                "growth": peak - baseline,
                "attempted": done["attempted"],
                "bound": done.get("bound"),
            }


def _address(ready: dict[str, Any]) -> dict[str, Any]:
    # done_path / done_port: pyzmq's broadcast server, whose receivers answer on a second socket
    keys = ("path", "port", "done_path", "done_port")
    return {key: ready[key] for key in keys if key in ready}


def run_cell(cell: Cell) -> dict[str, Any]:
    result: dict[str, Any] = {
        "row": cell.row.key,
        "transport": cell.transport,
        "impl": cell.impl.key,
        "unit": cell.row.unit,
    }
    started = time.monotonic()
    if cell.impl.family == "node" and not cell.node.available:
        result.update(status="unavailable", reason=cell.node.reason)
        return result
    try:
        report = cell.run()
        if report.get("kind") == "unavailable":
            result.update(status="unavailable", reason=report.get("reason"))
        else:
            result.update(status="ok", **_report.summarize(cell.row, report, vars(cell.params)))
            result["rounds"] = report.get("rounds")
    except ChildError as exc:
        result.update(status="error", reason=str(exc))
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    result["seconds"] = round(time.monotonic() - started, 2)
    if result["status"] == "ok" and cell.row.key in _report.LATENCY_ROWS:
        # Keep the JSON small: the per-round medians stay, the raw samples go.
        result["rounds"] = None
    return result


def preflight(impl: Impl, node: _node.NodeIPC, sockets: str, pin: set[int]) -> str | None:
    """One W1 round trip over a Unix socket, bounded: an implementation that cannot do that
    (a broken backend, say) is skipped instead of making every one of its cells time out."""
    if impl.family == "node" and not node.available:
        return None  # its cells report "unavailable" themselves
    if impl.family in ("ppe", "loky", "sock", "memcpy"):
        return None  # W7/W8 only: not ipcactors, no W1 to try (loky reports itself missing)
    os.mkdir(sockets, 0o700)
    params = dataclasses.replace(
        QUICK, rounds=1, latency_seconds=0.0, max_iterations=1, warmup_iterations=1, deadline=15
    )
    cell = Cell(ROW_BY_KEY["w1"], "unix", impl, params, node, sockets, pin)
    try:
        cell.run()
    except ChildError as exc:
        lines = str(exc).splitlines()
        return " / ".join(line.strip() for line in lines[:3] if line.strip())
    return None


def _skipped(row: Row, transport: str, impl: Impl, why: str) -> dict[str, Any]:
    return {
        "row": row.key,
        "transport": transport,
        "impl": impl.key,
        "unit": row.unit,
        "status": "error",
        "reason": f"skipped: {impl.label} failed its preflight (one W1 round trip): {why}",
        "seconds": 0.0,
    }


# --- selection --------------------------------------------------------------------------------


def select(only: str | None) -> tuple[list[Row], list[Impl], list[str]]:
    rows, impls, transports = list(ROWS), list(IMPLS), ["unix", "tcp"]
    if not only:
        return rows, impls, transports
    row_keys: set[str] = set()
    impl_keys: set[str] = set()
    transport_keys: set[str] = set()
    for token in (t.strip().lower() for t in only.split(",") if t.strip()):
        if token in ("unix", "tcp"):
            transport_keys.add(token)
        elif token in ROW_BY_KEY:
            row_keys.add(token)
            if token == "w1":
                row_keys.add("w1-shm")
            if token == "w2":
                row_keys |= {"w2x100", "w2-acked"}
            if token == "w4":
                row_keys.add("w4-acked")
            if token == "w6":
                row_keys.update(_report.W6_ROWS)
        elif token == "w7":
            row_keys.update(_report.W7_ROWS)
        elif token == "w8":
            row_keys.update(_report.W8_ROWS)
        elif token in ("w8-shm", "w8-zc"):  # a path: every size, and the anchors' rows
            paths = ("", token.removeprefix("w8-") + "-")
            row_keys.update(k for k in _report.W8_ROWS if _report.w8_path(k) in paths)
        elif token == "pay":
            row_keys.update(_report.PAYLOAD_ROWS)
        elif token == "fanout":
            row_keys.update(_report.FANOUT_ROWS)
        elif token == "fanin":
            row_keys.update(_report.FANIN_ROWS)
        elif token == "idle":
            row_keys.update(_report.IDLE_ROWS)
        elif token == "curves":
            row_keys.update(_report.CURVE_ROWS)
        elif token == "mem":
            row_keys |= {"mem-idle", "mem-slow"}
        elif any(token in (i.key, i.family, i.backend) for i in IMPLS):
            impl_keys |= {i.key for i in IMPLS if token in (i.key, i.family, i.backend)}
        else:
            raise SystemExit(
                f"--only: unknown token {token!r}; use workloads (w1..w8, w2x100, "
                f"{', '.join(_report.W6_ROWS[1:])}, {', '.join(_report.W7_ROWS)}, "
                f"{', '.join(_report.W8_ROWS)}, w8-shm, w8-zc, curves, pay, fanout, fanin, idle, "
                f"{', '.join(_report.CURVE_ROWS)}, mem, "
                f"mem-idle, mem-slow), implementations ({', '.join(i.key for i in IMPLS)}, "
                "ipc, raw, node, asyncio, uvloop, trio) or transports (unix, tcp)"
            )
    if row_keys:
        rows = [r for r in rows if r.key in row_keys]
    if impl_keys:
        impls = [i for i in impls if i.key in impl_keys]
    if transport_keys:
        transports = [t for t in transports if t in transport_keys]
    return rows, impls, transports


def plan(rows: list[Row], impls: list[Impl], transports: list[str]) -> list[tuple[Row, str, Impl]]:
    return [
        (row, transport, impl)
        for row in rows
        for transport in row.transports
        if transport in transports
        for impl in impls
        if _report.applies(row, impl)
    ]


# --- the run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ipcactors against raw anyio and node-ipc 9.2.1, side by side in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="short rounds (about two minutes)")
    parser.add_argument(
        "--only",
        metavar="TOKENS",
        help="comma-separated workloads, implementations and/or transports, e.g. "
        "'w1,w2,ipc-asyncio,raw-asyncio,unix' (categories combine with AND, tokens within "
        "one category with OR)",
    )
    parser.add_argument("--rounds", type=int, help="measured rounds per cell")
    parser.add_argument("--seconds", type=float, help="seconds per measured round")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS, help="where to write results")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument(
        "--compare",
        metavar="REF",
        help="run this tree and the git ref REF side by side, interleaved (ipcactors cells "
        "only), and report the ratio of each cell and whether it is beyond noise",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="with --compare: runs of each cell per side, alternating which goes first (default 2)",
    )
    return parser.parse_args(argv)


def make_params(args: argparse.Namespace) -> Params:
    params = dataclasses.replace(QUICK if args.quick else FULL)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        params.rounds = args.rounds
        params.w6_rounds = args.rounds
        params.w6_samples = args.rounds
    if args.seconds is not None:
        if not 0 < args.seconds <= 60:
            raise SystemExit("--seconds must be in (0, 60]")
        params.latency_seconds = params.stream_seconds = params.w5_seconds = args.seconds
        params.warmup_seconds = args.seconds / 2
    return params


def _pin_set() -> set[int]:
    return {min(_cpus())}


def _cpus() -> set[int]:
    """The CPUs this process may run on (and so its children)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return {0}


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: stop like on Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _say(text: str) -> None:
    print(text, flush=True)


def _in_params(key: str, params: Params) -> bool:
    """Whether this run measures that row: QUICK has no 256 MiB W8 and two points per curve."""
    if key in _report.W8_ROWS:
        return _report.w8_size(key) in params.w8_sizes
    if key in _report.PAYLOAD_ROWS:
        return int(key.removeprefix("pay-")) in params.payload_sizes
    if key in _report.FANOUT_ROWS or key in _report.FANIN_ROWS:
        return int(key.split("-")[1]) in params.fanout_clients
    if key in _report.IDLE_ROWS:
        return int(key.removeprefix("idle-")) in params.idle_counts
    return True


def compile_tree(tree: str) -> None:
    """Compile a tree's ``ipcactors`` and ``benchmarks`` once, before any cell starts.

    ``make`` exports PYTHONDONTWRITEBYTECODE (for the test suite), so no ``.pyc`` would be
    written and every role process would compile the library from source: ~0.35 s of CPU per
    process, which dominates a curve point of 256 client processes on 2 CPUs. A deployed
    program's modules are compiled once; so are these (into ``__pycache__``, ignored by git).
    """
    for package in ("ipcactors", "benchmarks"):
        path = os.path.join(tree, package)
        if os.path.isdir(path):
            compileall.compile_dir(path, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = make_params(args)
    rows, impls, transports = select(args.only)
    cells_to_run = [
        (row, transport, impl)
        for row, transport, impl in plan(rows, impls, transports)
        if _in_params(row.key, params)
    ]
    if args.list:
        for row, transport, impl in cells_to_run:
            _say(f"{row.key:<9} {transport:<5} {impl.key}")
        return 0
    if args.compare:
        cells_to_run = [c for c in cells_to_run if c[2].family == "ipc"]
    if not cells_to_run:
        _say("nothing to run: --only selected no cell")
        return 2
    if args.compare:
        return run_compare(args, params, cells_to_run)
    previous = {signum: signal.signal(signum, _on_sigterm) for signum in _STOP_SIGNALS}
    workdir = tempfile.mkdtemp(prefix="ipcb-")
    cells: list[dict[str, Any]] = []
    interrupted = False
    started = time.time()
    compile_tree(ROOT)
    try:
        if any(impl.family == "node" for _, _, impl in cells_to_run):
            node = _node.ensure_node_ipc()
            if not node.available:
                _say(f"node-ipc cells unavailable: {node.reason}")
        else:
            node = _node.NodeIPC(None, None, "not selected")
        machine = _machine.describe(node.version)
        mode = "quick" if args.quick else "full"
        _say(f"ipcactors benchmarks ({mode}: {len(cells_to_run)} cells, {params.rounds} rounds)")
        _say(f"machine: {_machine.summary(machine)}")
        pin = _pin_set()
        broken: dict[str, str] = {}  # implementation -> why its preflight failed
        for number, (row, transport, impl) in enumerate(cells_to_run, 1):
            sockets = os.path.join(workdir, f"c{number}")
            os.mkdir(sockets, 0o700)
            if impl.key not in broken and not any(c["impl"] == impl.key for c in cells):
                why = preflight(impl, node, os.path.join(workdir, f"p{number}"), pin)
                if why is not None:
                    broken[impl.key] = why
                    _say(f"{impl.label}: preflight failed, its cells are skipped: {why}")
            if impl.key in broken:
                result = _skipped(row, transport, impl, broken[impl.key])
            else:
                result = run_cell(Cell(row, transport, impl, params, node, sockets, pin))
            cells.append(result)
            _say(_progress(number, len(cells_to_run), row, transport, impl, result))
    except (KeyboardInterrupt, Terminated):
        interrupted = True
        _say("interrupted: stopping every process")
    finally:
        # A second Ctrl-C must not cut the clean-up short (it is bounded: a few seconds).
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if not cells:
        return 130 if interrupted else 1
    write_report(args, params, machine, cells, impls, started, interrupted)
    if interrupted:
        return 130
    return 1 if any(c["status"] == "error" for c in cells) else 0


def run_compare(
    args: argparse.Namespace, params: Params, cells_to_run: list[tuple[Row, str, Impl]]
) -> int:
    """``--compare REF``: see benchmarks/_compare.py."""
    if args.passes < 1:
        raise SystemExit("--passes must be at least 1")
    previous = {signum: signal.signal(signum, _on_sigterm) for signum in _STOP_SIGNALS}
    workdir = tempfile.mkdtemp(prefix="ipcb-")
    lines: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    interrupted = False
    started = time.time()
    node = _node.NodeIPC(None, None, "not selected")
    machine = _machine.describe(None)
    try:
        try:
            ref_tree = _compare.export(ROOT, args.compare, workdir)
        except _compare.RefError as exc:
            _say(str(exc))
            return 2
        compile_tree(ROOT)
        compile_tree(ref_tree)
        machine["ref"] = args.compare
        mode = "quick" if args.quick else "full"
        _say(
            f"ipcactors benchmarks, this tree ({machine['commit']}) against {args.compare} "
            f"({mode}: {len(cells_to_run)} cells x {args.passes} passes x 2 sides, "
            f"{params.rounds} rounds)"
        )
        _say(f"machine: {_machine.summary(machine)}")
        pin = _pin_set()
        number = 0
        for index, (row, transport, impl) in enumerate(cells_to_run, 1):
            sides: dict[str, list[dict[str, Any]]] = {"current": [], "ref": []}
            for run in range(args.passes):
                order = ("current", "ref") if (index + run) % 2 else ("ref", "current")
                for side in order:
                    number += 1
                    sockets = os.path.join(workdir, f"c{number}")
                    os.mkdir(sockets, 0o700)
                    tree = ROOT if side == "current" else ref_tree
                    result = run_cell(Cell(row, transport, impl, params, node, sockets, pin, tree))
                    result["side"] = side
                    sides[side].append(result)
                    raw.append(result)
            line = _compare.compare(sides["current"], sides["ref"])
            lines.append(line)
            _say(f"[{index:>3}/{len(cells_to_run)}] " + _compare.table([line]).splitlines()[-1])
    except (KeyboardInterrupt, Terminated):
        interrupted = True
        _say("interrupted: stopping every process")
    finally:
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if not lines:
        return 130 if interrupted else 1
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    title = f"ipcactors {machine['commit']} against {args.compare}, run {stamp}"
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            f"Machine: {_machine.summary(machine)}.",
            f"{args.passes} passes per side, interleaved, {params.rounds} rounds each; ratio = "
            "this tree ÷ ref of the medians of the rounds; a difference is beyond noise when "
            f"a Mann-Whitney U test over the rounds gives p < {_compare.P_BEYOND_NOISE}.",
            "",
            _compare.table(lines),
            "",
        ]
    )
    _say("")
    _say(markdown)
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, f"compare-{stamp}")
    document = {
        "title": title,
        "ref": args.compare,
        "interrupted": interrupted,
        "seconds": round(time.time() - started, 1),
        "machine": machine,
        "params": vars(params),
        "passes": args.passes,
        "comparison": lines,
        "cells": raw,
    }
    _write(f"{base}.json", lambda f: json.dump(document, f, indent=1))
    _write(f"{base}.md", lambda f: f.write(markdown))
    for extension in (".json", ".md"):
        shutil.copyfile(base + extension, os.path.join(args.results_dir, f"compare{extension}"))
    _say(f"written: {os.path.relpath(base)}.json, .md (and compare.*)")
    if interrupted:
        return 130
    return 1 if any(line["verdict"] == "failed" for line in lines) else 0


def _progress(
    number: int, total: int, row: Row, transport: str, impl: Impl, cell: dict[str, Any]
) -> str:
    head = f"[{number:>3}/{total}] {row.label:<36} {transport:<4} {impl.label:<18}"
    status = cell["status"]
    if status == "ok":
        text = f"{_report.fmt_cell(cell, row)} {row.unit}"
        for key in ("warning", "note"):
            if cell.get(key):
                text += f" ({cell[key]})"
    elif status == "unavailable":
        text = f"not available: {cell.get('reason')}"
    else:
        lines = str(cell.get("reason")).splitlines()
        shown = lines if len(lines) <= 8 else [*lines[:4], "[...]", *lines[-3:]]
        text = "ERROR: " + "\n      ".join(shown) + "\n      (the whole message is in the JSON)"
    return f"{head} {text}  ({cell.get('seconds', 0):.1f} s)"


def write_report(
    args: argparse.Namespace,
    params: Params,
    machine: dict[str, Any],
    cells: list[dict[str, Any]],
    impls: list[Impl],
    started: float,
    interrupted: bool,
) -> None:
    ratio_list = _report.ratios(cells)
    target_list = _report.evaluate_targets(cells)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    mode = "quick" if args.quick else "full"
    title = f"ipcactors benchmarks, {mode} run {stamp}"
    shown = [i for i in impls if any(c["impl"] == i.key for c in cells)]
    results = _report.results_table(cells, shown)
    ratio_text = _report.ratio_table(ratio_list, shown)
    target_text = _report.target_table(target_list)
    elapsed = time.time() - started
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            f"Machine: {_machine.summary(machine)}.",
            f"Run: {mode}, {params.rounds} measured rounds per cell after a warm-up round; "
            f"{elapsed:.0f} s. Figures are medians of the rounds; W1/W5 show median / p99 "
            "(p99 of all samples); W1 and W5 run client and server pinned to one CPU.",
            "",
            "## Results",
            "",
            results,
            "",
            "## Ratios (ipcactors ÷ anchor, same run)",
            "",
            ratio_text,
            "",
            "## Targets (issues 5, 9, 11, 12 and 15)",
            "",
            target_text,
            "",
        ]
    )
    _say("")
    _say(markdown)
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, f"bench-{stamp}")
    document = {
        "title": title,
        "mode": mode,
        "interrupted": interrupted,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(elapsed, 1),
        "machine": machine,
        "params": vars(params),
        "implementations": [vars(i) for i in IMPLS],
        "rows": [dataclasses.asdict(r) for r in ROWS],
        "cells": cells,
        "ratios": ratio_list,
        "targets": target_list,
    }
    written = [_write(f"{base}.json", lambda f: json.dump(document, f, indent=1))]
    written.append(_write(f"{base}.md", lambda f: f.write(markdown)))
    if not args.no_chart:
        why = _report.chart(cells, f"{base}.png", title)
        if why is None:
            written.append(f"{base}.png")
        else:
            _say(f"no chart: {why}")
        if any(c["row"] in _report.CURVE_ROWS for c in cells):
            why = _report.curve_chart(cells, f"{base}-curves.png", title)
            if why is None:
                written.append(f"{base}-curves.png")
            else:
                _say(f"no curve chart: {why}")
    for path in written:
        extension = os.path.splitext(path)[1]
        suffix = "-curves" if path.endswith("-curves.png") else ""
        shutil.copyfile(path, os.path.join(args.results_dir, f"latest{suffix}{extension}"))
    _say("written: " + ", ".join(os.path.relpath(p) for p in written) + " (and latest.*)")


def _write(path: str, write: Callable[[Any], Any]) -> str:
    with open(path, "w", encoding="utf-8") as file:
        write(file)
    return path
