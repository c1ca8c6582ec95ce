"""Turning the cells' raw reports into figures, ratios, targets, tables, JSON and a chart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# --- what is measured --------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    family: str  # "ipc", "raw", "node", (W1/W2/W5 only) "zmq", "mpc", (W7 only) "ppe", "loky",
    # (W8 only) "sock", "memcpy"
    backend: str | None  # "asyncio", "uvloop", "trio" (None for node, ppe, loky)


IMPLS = [
    Impl("ipc-asyncio", "ipcactors asyncio", "ipc", "asyncio"),
    Impl("ipc-uvloop", "ipcactors uvloop", "ipc", "uvloop"),
    Impl("ipc-trio", "ipcactors trio", "ipc", "trio"),
    Impl("raw-asyncio", "raw anyio asyncio", "raw", "asyncio"),
    Impl("raw-uvloop", "raw anyio uvloop", "raw", "uvloop"),
    Impl("raw-trio", "raw anyio trio", "raw", "trio"),
    Impl("node", "node-ipc 9.2.1", "node", None),
    Impl("zmq", "pyzmq + msgpack", "zmq", None),
    Impl("mpc", "multiprocessing.connection", "mpc", None),
    Impl("ppe", "ProcessPoolExecutor", "ppe", None),
    Impl("loky", "loky", "loky", None),
    Impl("sock", "plain socket recv_into", "sock", None),
    Impl("memcpy", "np.copyto (memory)", "memcpy", None),
]
IMPL_BY_KEY = {impl.key: impl for impl in IMPLS}
IPC_IMPLS = [impl for impl in IMPLS if impl.family == "ipc"]


@dataclass(frozen=True)
class Row:
    key: str  # also the --only token ("w2" selects "w2", "w2x100" and "w2-acked")
    label: str
    unit: str
    higher_is_better: bool
    transports: tuple[str, ...] = ("unix", "tcp")
    families: tuple[str, ...] = ("ipc", "raw", "node")
    pinned: bool = False  # client and server on one CPU (latency is bimodal otherwise)


#: W6 at scale: spawn-to-ready of one more child with this many already running.
W6_LIVE = (1, 100, 500)
W6_ROWS = (
    "w6",
    *(f"w6-live{live}" for live in W6_LIVE),
    "w6-restart",
    "w6-restart-slow",
    "w6-remote",
    "w6-remote-restart",
)
#: W7 worker pools: tiny tasks and 1 MiB numpy tasks per second, against ProcessPoolExecutor
#: and loky; and the time from a worker's SIGKILL to its task's retry being done.
W7_ROWS = ("w7-tiny", "w7-tiny-chunked", "w7-executor", "w7-numpy", "w7-retry")
#: W8 one large array: a float32 array of this many MiB from send to the receiver's answer,
#: against a plain socket (``recv_into`` a fresh array) and a memcpy in the same run, for each
#: path ipcactors has: the socket (``w8-64``), shared memory with the one copy into a slot
#: (``w8-shm-64``) and zero-copy from ``conn.empty()`` (``w8-zc-64``). The last two are Unix
#: only and take their anchors from the socket path's row of the same size.
W8_SIZES = (1, 16, 64, 256)
W8_PATHS = {"": "socket path", "shm-": "shared memory", "zc-": "zero-copy (conn.empty)"}
W8_SOCKET_ROWS = tuple(f"w8-{mib}" for mib in W8_SIZES)
W8_SHARED_ROWS = tuple(f"w8-{path}{mib}" for path in ("shm-", "zc-") for mib in W8_SIZES)
W8_ROWS = (*W8_SOCKET_ROWS, *W8_SHARED_ROWS)


def w8_size(key: str) -> int:
    """The array's MiB of a W8 row (``w8-64``, ``w8-shm-64``, ``w8-zc-64``)."""
    return int(key.rsplit("-", 1)[1])


def w8_path(key: str) -> str:
    """The path of a W8 row: ``""`` (the socket), ``"shm-"`` or ``"zc-"``."""
    return key.removeprefix("w8-").removesuffix(str(w8_size(key)))


#: Cost curves (issue 15), one row per point, Unix sockets, one backend per family (a curve's
#: shape, not the backends, is the question): events/s against the payload size, and the
#: events delivered per second broadcasting to N client processes.
PAYLOAD_SIZES = (64, 1024, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 16 << 20)
PAYLOAD_ROWS = tuple(f"pay-{size}" for size in PAYLOAD_SIZES)
FANOUT_CLIENTS = (1, 4, 16, 64, 256)
FANOUT_ROWS = tuple(f"fanout-{clients}" for clients in FANOUT_CLIENTS)
FANIN_ROWS = tuple(f"fanin-{clients}" for clients in FANOUT_CLIENTS)
#: Idle connections held by one server: memory per connection, and one active client's p99.
IDLE_COUNTS = (1, 100, 1000, 4000)
IDLE_ROWS = tuple(f"idle-{count}" for count in IDLE_COUNTS)
CURVE_ROWS = (*PAYLOAD_ROWS, *FANOUT_ROWS, *FANIN_ROWS, *IDLE_ROWS)
CURVE_IMPLS = ("ipc-asyncio", "raw-asyncio", "node", "zmq")


def size_label(size: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size >> shift} {unit}"
    return f"{size} B"


#: Rows whose figure is a median of per-sample latencies, shown with their p99.
LATENCY_ROWS = ("w1", "w1-shm", "w5")

#: The Python peers (benchmarks/peer_role.py) are anchors of W1, W2 and W5 only.
WITH_PEERS = ("ipc", "raw", "node", "zmq", "mpc")

ROWS = [
    Row("w1", "W1 ping-pong round trip", "µs", False, families=WITH_PEERS, pinned=True),
    Row(
        "w1-shm",
        "W1 round trip, shared memory on (Config.max_shared_bytes)",
        "µs",
        False,
        transports=("unix",),
        families=("ipc",),
        pinned=True,
    ),
    Row("w2", "W2 small events, one emit each", "ev/s", True, families=WITH_PEERS),
    Row("w2x100", "W2 raw anyio: 100 frames per write", "ev/s", True, families=("raw",)),
    Row("w2-nested", "W2 events of nested data (records)", "ev/s", True, families=WITH_PEERS),
    Row(
        "w2-acked",
        "W2 small events, acknowledged (Config.acked)",
        "ev/s",
        True,
        families=("ipc",),
    ),
    Row("w3", "W3 1 MiB payloads", "MB/s", True),
    Row("w4", "W4 broadcast to 8 processes", "ev/s", True),
    Row(
        "w4-acked",
        "W4 broadcast to 8 processes, acknowledged",
        "ev/s",
        True,
        families=("ipc",),
    ),
    Row("w5", "W5 connect + first reply", "µs", False, families=WITH_PEERS, pinned=True),
    Row("w6", "W6 spawn-to-ready", "ms", False, transports=("unix",)),
    *(
        Row(
            f"w6-live{live}",
            f"W6 spawn, {live} {'child' if live == 1 else 'children'} live",
            "ms",
            False,
            transports=("unix",),
            families=("ipc",),
        )
        for live in W6_LIVE
    ),
    Row(
        "w6-restart",
        "W6 restart after SIGKILL",
        "ms",
        False,
        transports=("unix",),
        families=("ipc",),
    ),
    Row(
        "w6-restart-slow",
        "W6 restart after SIGKILL, a sibling still starting",
        "ms",
        False,
        transports=("unix",),
        families=("ipc",),
    ),
    Row(
        "w6-remote",
        "W6 spawn-to-ready on another host (SSH, loopback)",
        "ms",
        False,
        transports=("unix",),
        families=("ipc",),
    ),
    Row(
        "w6-remote-restart",
        "W6 restart after SIGKILL on another host (SSH, loopback)",
        "ms",
        False,
        transports=("unix",),
        families=("ipc",),
    ),
    Row(
        "w7-tiny",
        "W7 pool, tiny tasks",
        "tasks/s",
        True,
        transports=("unix",),
        families=("ipc", "ppe", "loky"),
    ),
    Row(
        "w7-tiny-chunked",
        "W7 pool, tiny tasks (theirs chunksize=8)",
        "tasks/s",
        True,
        transports=("unix",),
        families=("ipc", "ppe", "loky"),
    ),
    Row(
        "w7-executor",
        "W7 pool, tiny tasks, ours through PoolExecutor",
        "tasks/s",
        True,
        transports=("unix",),
        families=("ipc", "ppe", "loky"),
    ),
    Row(
        "w7-numpy",
        "W7 pool, 1 MiB numpy tasks",
        "tasks/s",
        True,
        transports=("unix",),
        families=("ipc", "ppe", "loky"),
    ),
    Row(
        "w7-retry",
        "W7 pool, SIGKILL to retried task done",
        "ms",
        False,
        transports=("unix",),
        families=("ipc",),
    ),
    *(
        Row(
            f"w8-{mib}",
            f"W8 one {mib} MiB array, send to answer",
            "ms",
            False,
            families=("ipc", "sock", "memcpy"),
        )
        for mib in W8_SIZES
    ),
    *(
        Row(
            f"w8-{path}{mib}",
            f"W8 one {mib} MiB array, {W8_PATHS[path]}",
            "ms",
            False,
            transports=("unix",),
            families=("ipc",),
        )
        for path in ("shm-", "zc-")
        for mib in W8_SIZES
    ),
    *(
        Row(
            f"pay-{size}",
            f"Curve: {size_label(size)} events, one emit each",
            "ev/s",
            True,
            transports=("unix",),
            families=("ipc", "raw", "node", "zmq"),
        )
        for size in PAYLOAD_SIZES
    ),
    *(
        Row(
            f"fanout-{clients}",
            f"Curve: broadcast to {clients} {'client' if clients == 1 else 'clients'}",
            "ev/s",
            True,
            transports=("unix",),
            families=("ipc", "raw", "node", "zmq"),
        )
        for clients in FANOUT_CLIENTS
    ),
    *(
        Row(
            f"fanin-{clients}",
            f"Curve: {clients} {'client' if clients == 1 else 'clients'} emitting to one",
            "ev/s",
            True,
            transports=("unix",),
            families=("ipc", "raw", "node", "zmq"),
        )
        for clients in FANOUT_CLIENTS
    ),
    *(
        Row(
            f"idle-{count}",
            f"Curve: memory per connection, {count} idle",
            "KiB",
            False,
            transports=("unix",),
        )
        for count in IDLE_COUNTS
    ),
    Row("mem-idle", "Memory per idle connection", "KiB", False, transports=("unix",)),
    Row("mem-slow", "Memory growth, slow consumer", "MiB", False, transports=("unix",)),
]
ROW_BY_KEY = {row.key: row for row in ROWS}
W6_LIVE_BASE = f"w6-live{W6_LIVE[0]}"
W6_LIVE_ANCHOR = f"itself, {W6_LIVE[0]} live"


def applies(row: Row, impl: Impl) -> bool:
    if impl.family not in row.families:
        return False
    if row.key in CURVE_ROWS:
        return impl.key in CURVE_IMPLS
    # W6's floor is one fresh interpreter: its backend hardly matters, so asyncio only.
    return not (row.key == "w6" and impl.family == "raw" and impl.backend != "asyncio")


# --- figures from raw reports ------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(row: Row, report: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The figure of one cell (``value`` in ``row.unit``) from its role's report."""
    rounds = report.get("rounds") or []
    if row.key in LATENCY_ROWS:
        per_round = [r["samples_us"] for r in rounds if r["samples_us"]]
        pooled = [s for samples in per_round for s in samples]
        return {
            "value": statistics.median(statistics.median(s) for s in per_round),
            "p99": percentile(pooled, 0.99),
            "samples": len(pooled),
            "round_values": [statistics.median(s) for s in per_round],
        }
    if row.key in W6_ROWS or row.key in W8_ROWS or row.key == "w7-retry":
        pooled = [s for r in rounds for s in r["samples_ms"]]
        figure = {
            "value": statistics.median(pooled),
            "samples": len(pooled),
            "round_values": pooled,
        }
        if report.get("cold_ms") is not None:
            figure["cold_ms"] = report["cold_ms"]
            figure["note"] = f"warm spawns; cold start {report['cold_ms']:.0f} ms"
        if report.get("fallbacks"):  # the shared-memory rows measured the socket, in part
            figure["warning"] = f"{report['fallbacks']} arrays took the socket (pool full)"
        if report.get("emit_ms"):
            figure["emit_ms"] = statistics.median(report["emit_ms"])
            figure["note"] = f"zero-copy emit, sender's side: {figure['emit_ms']:.3f} ms"
        if report.get("fill_last_ms") is not None:
            figure["fill_first_ms"] = report["fill_first_ms"]
            figure["fill_last_ms"] = report["fill_last_ms"]
            figure["note"] = (
                f"filling up to {report['live']}: first 10 spawns {report['fill_first_ms']:.1f} "
                f"ms, last 10 {report['fill_last_ms']:.1f} ms"
            )
        return figure
    if row.key in (
        *("w2", "w2x100", "w2-acked", "w2-nested", "w3", "w4", "w4-acked"),
        *("w7-tiny", "w7-tiny-chunked", "w7-executor", "w7-numpy"),
        *PAYLOAD_ROWS,
        *FANOUT_ROWS,
        *FANIN_ROWS,
    ):
        scale = params["w3_payload_bytes"] / 1e6 if row.key == "w3" else 1.0
        rates = [r["count"] * scale / r["seconds"] for r in rounds]
        figure: dict[str, Any] = {"value": statistics.median(rates), "round_values": rates}
        if row.key in PAYLOAD_ROWS:
            megabytes = figure["value"] * int(row.key.removeprefix("pay-")) / 1e6
            figure["note"] = f"{megabytes:.0f} MB/s"
        lost = sum(r.get("sent", r["count"]) - r["count"] for r in rounds)
        if lost:
            figure["warning"] = f"{lost} events not delivered"
        return figure
    if row.key == "mem-idle" or row.key in IDLE_ROWS:
        per_connection = (report["after"] - report["before"]) / report["connections"] / 1024
        samples = report.get("samples_us") or []
        extra = {}
        if samples:
            p99 = percentile(samples, 0.99)
            extra = {"p99_us": p99, "note": f"one active client: p99 {p99:.0f} µs"}
        return {
            **extra,
            "value": per_connection,
            "connections": report["connections"],
            "rss_before": report["before"],
            "rss_after": report["after"],
        }
    if row.key == "mem-slow":
        return {
            "value": report["growth"] / 2**20,
            "attempted_mib": report["attempted"] / 2**20,
            "bound_mib": report["bound"] / 2**20 if report.get("bound") else None,
            "rss_baseline": report["baseline"],
            "rss_peak": report["peak"],
        }
    raise ValueError(row.key)


# --- ratios and targets ------------------------------------------------------------------------


def _value(cells: dict[tuple[str, str, str], dict[str, Any]], row: str, tr: str, impl: str) -> Any:
    cell = cells.get((row, tr, impl))
    if cell is None or cell.get("status") != "ok":
        return None
    return cell["value"]


def _index(cells: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(c["row"], c["transport"], c["impl"]): c for c in cells}


def ratios(cell_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ipcactors ÷ anchor, for every row, transport, anchor and backend measured."""
    cells = _index(cell_list)
    out = []
    for row in ROWS:
        if "ipc" not in row.families:
            continue
        for transport in row.transports:
            anchors = [("raw anyio", row.key, "raw")]
            if row.key in W8_ROWS:
                socket_row = f"w8-{w8_size(row.key)}"
                anchors = [("plain socket", socket_row, "sock"), ("memcpy", socket_row, "memcpy")]
                if row.key in W8_SHARED_ROWS:  # what the path gains: the same backend, socket
                    anchors.append(("itself, socket path", socket_row, "self"))
            elif row.key in W7_ROWS:
                anchors = [("ProcessPoolExecutor", row.key, "ppe"), ("loky", row.key, "loky")]
            if row.key == "w2":
                anchors.append(("raw anyio ×100/write", "w2x100", "raw"))
            if row.key not in W7_ROWS and row.key not in W8_ROWS:
                anchors.append(("node-ipc", row.key, "node"))
            if "zmq" in row.families:
                anchors.append(("pyzmq", row.key, "zmq"))
                anchors.append(("multiprocessing.connection", row.key, "mpc"))
            if row.key.endswith("-acked"):  # the cost of the mode: the same backend, plain
                anchors = [("itself, plain", row.key.removesuffix("-acked"), "self")]
            if row.key == "w1-shm":  # what shared memory costs small messages
                anchors = [("itself, shared memory off", "w1", "self")]
            if row.key.startswith("w6-live") and row.key != W6_LIVE_BASE:
                # The growth with children alive: the same implementation with 1 live.
                anchors = [(W6_LIVE_ANCHOR, W6_LIVE_BASE, "self")]
            for anchor_label, anchor_row, family in anchors:
                line: dict[str, Any] = {
                    "row": row.key,
                    "transport": transport,
                    "anchor": anchor_label,
                    "values": {},
                }
                for impl in IPC_IMPLS:
                    mine = _value(cells, row.key, transport, impl.key)
                    if family == "self":
                        anchor_key = impl.key
                    elif family in ("node", "zmq", "mpc", "ppe", "loky", "sock", "memcpy"):
                        anchor_key = family
                    elif row.key == "w6":
                        anchor_key = "raw-asyncio"
                    else:
                        anchor_key = f"raw-{impl.backend}"
                    theirs = _value(cells, anchor_row, transport, anchor_key)
                    if mine is not None and theirs:
                        line["values"][impl.key] = mine / theirs
                if line["values"]:
                    out.append(line)
    return out


@dataclass(frozen=True)
class Target:
    text: str
    row: str
    transport: str
    impl: str
    anchor: str | None  # impl key of the anchor, or None for an absolute bound
    op: str  # "<=" or ">="
    bound: float
    anchor_row: str | None = None
    p99: bool = False  # compare the cell's p99 with its own median


def targets_for(bound_mib: float | None) -> list[Target]:
    t: list[Target] = []
    for tr in ("unix", "tcp"):
        t += [
            Target(
                "W1 asyncio round trip ≤ 0.6× raw anyio",
                "w1",
                tr,
                "ipc-asyncio",
                "raw-asyncio",
                "<=",
                0.6,
            ),
            Target(
                "W1 uvloop round trip ≤ 1.0× node-ipc", "w1", tr, "ipc-uvloop", "node", "<=", 1.0
            ),
            Target(
                "W1 trio round trip ≤ 1.0× raw anyio trio",
                "w1",
                tr,
                "ipc-trio",
                "raw-trio",
                "<=",
                1.0,
            ),
        ]
        t += [
            Target("W1 uvloop round trip ≤ 1.0× pyzmq", "w1", tr, "ipc-uvloop", "zmq", "<=", 1.0),
            Target("W1 asyncio round trip ≤ 1.2× pyzmq", "w1", tr, "ipc-asyncio", "zmq", "<=", 1.2),
            Target("W2 asyncio ≥ 1.0× pyzmq", "w2", tr, "ipc-asyncio", "zmq", ">=", 1.0),
            Target("W5 asyncio ≤ 1.0× pyzmq", "w5", tr, "ipc-asyncio", "zmq", "<=", 1.0),
        ]
        for impl in IPC_IMPLS:
            t.append(
                Target(
                    f"W1 {impl.backend} p99 ≤ 2.5× median",
                    "w1",
                    tr,
                    impl.key,
                    None,
                    "<=",
                    2.5,
                    p99=True,
                )
            )
    # Issue 12: shared memory on costs small messages (nearly) nothing.
    t += [
        Target(
            f"W1 {impl.backend} shared memory on ≤ 1.2× off",
            "w1-shm",
            "unix",
            impl.key,
            impl.key,
            "<=",
            1.2,
            anchor_row="w1",
        )
        for impl in IPC_IMPLS
    ]
    for tr, factor in (("unix", 4.0), ("tcp", 8.0)):
        t.append(
            Target(
                f"W2 asyncio ≥ {factor:g}× node-ipc", "w2", tr, "ipc-asyncio", "node", ">=", factor
            )
        )
    for tr in ("unix", "tcp"):
        t += [
            Target(
                "W2 asyncio ≥ 0.9× raw anyio ×100/write",
                "w2",
                tr,
                "ipc-asyncio",
                "raw-asyncio",
                ">=",
                0.9,
                anchor_row="w2x100",
            ),
            Target("W3 asyncio ≥ 8× node-ipc", "w3", tr, "ipc-asyncio", "node", ">=", 8.0),
            Target(
                "W3 asyncio ≥ 1.0× raw anyio", "w3", tr, "ipc-asyncio", "raw-asyncio", ">=", 1.0
            ),
            Target(
                "W3 asyncio ≥ 1.5× raw anyio (stretch)",
                "w3",
                tr,
                "ipc-asyncio",
                "raw-asyncio",
                ">=",
                1.5,
            ),
            Target("W4 asyncio ≥ 2× node-ipc", "w4", tr, "ipc-asyncio", "node", ">=", 2.0),
        ]
        for row in ("w2", "w4"):  # issue 11: the acknowledged mode costs at most 30 %
            t += [
                Target(
                    f"{row.upper()} {impl.backend} acked ≥ 0.7× plain",
                    f"{row}-acked",
                    tr,
                    impl.key,
                    impl.key,
                    ">=",
                    0.7,
                    anchor_row=row,
                )
                for impl in IPC_IMPLS
            ]
    t += [
        Target(
            "W5 asyncio ≤ 1/1.2× node-ipc (≥ 1.2× faster)",
            "w5",
            "unix",
            "ipc-asyncio",
            "node",
            "<=",
            1 / 1.2,
        ),
        Target("W5 asyncio ≤ 1.0× node-ipc", "w5", "tcp", "ipc-asyncio", "node", "<=", 1.0),
        Target("W6 asyncio spawn-to-ready ≤ 20 ms", "w6", "unix", "ipc-asyncio", None, "<=", 20),
        Target("W6 asyncio warm spawn ≤ 6 ms", "w6", "unix", "ipc-asyncio", None, "<=", 6),
        *(
            Target(
                f"W6 {impl.backend} spawn, {W6_LIVE[-1]} live ≤ 1.5× {W6_LIVE[0]} live",
                f"w6-live{W6_LIVE[-1]}",
                "unix",
                impl.key,
                impl.key,
                "<=",
                1.5,
                anchor_row=W6_LIVE_BASE,
            )
            for impl in IPC_IMPLS
        ),
        Target(
            "W6 asyncio restart after SIGKILL ≤ 100 ms",
            "w6-restart",
            "unix",
            "ipc-asyncio",
            None,
            "<=",
            100,
        ),
        Target(
            "W6 asyncio restart beside a slow start ≤ 100 ms",
            "w6-restart-slow",
            "unix",
            "ipc-asyncio",
            None,
            "<=",
            100,
        ),
        Target(
            "W7 asyncio tiny tasks ≥ 2× ProcessPoolExecutor",
            "w7-tiny",
            "unix",
            "ipc-asyncio",
            "ppe",
            ">=",
            2.0,
        ),
        Target(
            "W7 asyncio PoolExecutor tiny tasks ≥ 1× ProcessPoolExecutor",
            "w7-executor",
            "unix",
            "ipc-asyncio",
            "ppe",
            ">=",
            1.0,
        ),
        Target(
            "W7 asyncio SIGKILL to retried task done ≤ 100 ms",
            "w7-retry",
            "unix",
            "ipc-asyncio",
            None,
            "<=",
            100,
        ),
        *(
            Target(
                f"W8 {impl.backend} {mib} MiB array ≤ {bound:g}× plain socket",
                f"w8-{mib}",
                "unix",
                impl.key,
                "sock",
                "<=",
                bound,
            )
            for mib, bound in ((1, 2.0), (64, 1.5))
            for impl in IPC_IMPLS
        ),
        *(
            Target(
                f"W8 {impl.backend} 64 MiB shared memory ≤ 1.5× memcpy",
                "w8-shm-64",
                "unix",
                impl.key,
                "memcpy",
                "<=",
                1.5,
                anchor_row="w8-64",
            )
            for impl in IPC_IMPLS
        ),
        *(
            Target(
                f"W8 {impl.backend} 64 MiB shared memory ≤ 1/4× plain socket (≥ 4× faster)",
                "w8-shm-64",
                "unix",
                impl.key,
                "sock",
                "<=",
                0.25,
                anchor_row="w8-64",
            )
            for impl in IPC_IMPLS
        ),
        *(
            Target(
                f"W8 {impl.backend} {mib} MiB zero-copy round trip ≤ 1 ms",
                f"w8-zc-{mib}",
                "unix",
                impl.key,
                None,
                "<=",
                1.0,
            )
            for mib in W8_SIZES
            for impl in IPC_IMPLS
        ),
        Target(
            "Memory ≤ 64 KiB per idle connection", "mem-idle", "unix", "ipc-asyncio", None, "<=", 64
        ),
    ]
    if bound_mib is not None:
        t.append(
            Target(
                f"Slow consumer: RSS growth ≤ outbox bound ({bound_mib:g} MiB) + 25%",
                "mem-slow",
                "unix",
                "ipc-asyncio",
                None,
                "<=",
                bound_mib * 1.25,
            )
        )
    order = {row.key: index for index, row in enumerate(ROWS)}
    return sorted(t, key=lambda x: (order[x.row], x.transport != "unix"))


def evaluate_targets(cell_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells = _index(cell_list)
    slow = cells.get(("mem-slow", "unix", "ipc-asyncio"))
    bound = slow.get("bound_mib") if slow and slow.get("status") == "ok" else None
    out = []
    for target in targets_for(bound if bound is not None else 8.0):
        mine = cells.get((target.row, target.transport, target.impl))
        measured: float | None = None
        why = None
        anchor_key = (target.anchor_row or target.row, target.transport, target.anchor)
        if mine is None or (target.anchor is not None and anchor_key not in cells):
            continue  # not selected in this run
        if mine.get("status") == "unavailable":
            why = f"not available: {mine.get('reason')}"
        elif mine.get("status") != "ok":
            why = "the cell failed in this run (see its reason in the JSON)"
        elif target.p99:
            measured = mine["p99"] / mine["value"]
        elif target.anchor is None:
            measured = mine["value"]
        else:
            theirs = _value(cells, target.anchor_row or target.row, target.transport, target.anchor)
            if theirs:
                measured = mine["value"] / theirs
            else:
                why = "the anchor failed or is not available in this run"
        met = None
        if measured is not None:
            met = measured <= target.bound if target.op == "<=" else measured >= target.bound
        out.append(
            {
                "target": target.text,
                "transport": target.transport,
                "measured": measured,
                "bound": target.bound,
                "op": target.op,
                "kind": "ratio" if target.anchor or target.p99 else ROW_BY_KEY[target.row].unit,
                "met": met,
                "note": why,
            }
        )
    return out


# --- formatting -------------------------------------------------------------------------------


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("ev/s", "tasks/s") and value >= 1000:  # (the curves' large payloads: fewer)
        return f"{value / 1000:.1f}k" if value < 1e6 else f"{value / 1e6:.2f}M"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_cell(cell: dict[str, Any] | None, row: Row) -> str:
    if cell is None:
        return ""
    status = cell.get("status")
    if status == "unavailable":
        return "n/a"
    if status != "ok":
        return "ERROR"
    text = fmt_value(cell["value"], row.unit)
    if "p99" in cell:
        text += f" / {fmt_value(cell['p99'], row.unit)}"
    if cell.get("warning"):
        text += " !"
    return text


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        cells = zip(line, widths, strict=True)
        out.append("| " + " | ".join(c.ljust(w) for c, w in cells) + " |")
    return "\n".join(out)


def results_table(cell_list: list[dict[str, Any]], impls: list[Impl]) -> str:
    cells = _index(cell_list)
    header = ["workload", "unit", "transport", *(impl.label for impl in impls)]
    lines = []
    for row in ROWS:
        for transport in row.transports:
            values = [fmt_cell(cells.get((row.key, transport, i.key)), row) for i in impls]
            if any(values):
                unit = row.unit + (" (median / p99)" if row.key in LATENCY_ROWS else "")
                lines.append([row.label, unit, transport, *values])
    return _table(header, lines) if lines else "(no results)"


def ratio_table(ratio_list: list[dict[str, Any]], impls: list[Impl]) -> str:
    ipc = [impl for impl in impls if impl.family == "ipc"]
    header = ["workload", "transport", "ipcactors ÷", *(impl.label for impl in ipc)]
    lines = []
    for line in ratio_list:
        row = ROW_BY_KEY[line["row"]]
        better = "higher" if row.higher_is_better else "lower"
        values = [
            f"{line['values'][impl.key]:.2f}×" if impl.key in line["values"] else "—"
            for impl in ipc
        ]
        lines.append(
            [f"{row.label} ({better} is better)", line["transport"], line["anchor"], *values]
        )
    return _table(header, lines) if lines else "(no ratios: an anchor or ipcactors is missing)"


def target_table(target_list: list[dict[str, Any]]) -> str:
    lines = []
    for t in target_list:
        if t["measured"] is None:
            measured, verdict = "—", f"not measured: {t['note']}"
        else:
            suffix = "×" if t["kind"] == "ratio" else f" {t['kind']}"
            measured = f"{t['measured']:.2f}{suffix}"
            verdict = "met" if t["met"] else "MISSED"
        lines.append([t["target"], t["transport"], measured, verdict])
    if not lines:
        return "(no target applies to the cells run)"
    return _table(["target", "transport", "measured", "verdict"], lines)


# --- chart ------------------------------------------------------------------------------------

COLOURS = {
    "ipc": "#1f77b4",
    "raw": "#7f7f7f",
    "node": "#2ca02c",
    "zmq": "#e377c2",
    "mpc": "#8c564b",
    "ppe": "#ff7f0e",
    "loky": "#9467bd",
    "sock": "#7f7f7f",
    "memcpy": "#d62728",
    "shm": "#17becf",  # (W8 bars of the shared-memory paths)
    "zc": "#bcbd22",
}


def chart(cell_list: list[dict[str, Any]], path: str, title: str) -> str | None:
    """Bar charts, one per workload and transport; returns why not, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (make bench installs it)"
    from matplotlib.ticker import FuncFormatter

    cells = _index(cell_list)
    panels = []
    for row in ROWS:
        if row.key == "w2x100" or row.key in CURVE_ROWS or row.key in W8_SHARED_ROWS:
            continue  # drawn inside the W2 and W8 panels; the curves have their own chart
        for transport in row.transports:
            bars = []
            missing = []
            for impl in IMPLS:
                cell = cells.get((row.key, transport, impl.key))
                if cell is not None and cell.get("status") == "ok":
                    bars.append((impl.label, impl.family, cell["value"]))
                elif cell is not None and impl.family == "ipc":
                    missing.append(impl.label)
            if row.key == "w2":
                for impl in IMPLS:
                    cell = cells.get(("w2x100", transport, impl.key))
                    if cell is not None and cell.get("status") == "ok":
                        bars.append((f"{impl.label} ×100/write", impl.family, cell["value"]))
            if row.key in W8_SOCKET_ROWS:  # the shared-memory paths beside the socket's
                for kind in ("shm-", "zc-"):
                    for impl in IPC_IMPLS:
                        cell = cells.get((f"w8-{kind}{w8_size(row.key)}", transport, impl.key))
                        if cell is not None and cell.get("status") == "ok":
                            label = f"{impl.label}, {W8_PATHS[kind]}"
                            bars.append((label, kind.rstrip("-"), cell["value"]))
                order = ("ipc", "shm", "zc", "sock", "memcpy")  # ipcactors' paths, then anchors
                bars.sort(key=lambda bar: order.index(bar[1]))
            if bars:
                panels.append((row, transport, bars, missing))
    if not panels:
        return "no results to draw"
    columns = 4
    rows = math.ceil(len(panels) / columns)
    most = max(len(bars) for _, _, bars, _ in panels)  # W8 Unix: 11 bars, room for their labels
    height = max(2.9, 0.27 * most + 0.6)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, height * rows), squeeze=False
    )
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    for axis, (row, transport, bars, missing) in zip(axes.flat, panels, strict=False):
        values = [value for _, _, value in bars]
        positions = list(range(len(bars)))
        axis.barh(positions, values, color=[COLOURS[family] for _, family, _ in bars])
        axis.set_yticks(positions, [label for label, _, _ in bars], fontsize=8)
        axis.invert_yaxis()
        better = "higher" if row.higher_is_better else "lower"
        heading = f"{row.label} [{transport}]\n{row.unit}, {better} is better"
        if missing:
            heading += "\nnot measured: " + ", ".join(missing)
        axis.set_title(heading, fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
        top = max(values)
        if row.key in W8_SOCKET_ROWS:  # zero-copy's 0.3 ms beside the socket's 100s of ms
            axis.set_xscale("log")
            axis.set_xlim(min(values) / 2, top * 4)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _, u=row.unit: fmt_value(x, u)))
        for position, value in zip(positions, values, strict=True):
            label = fmt_value(value, row.unit)
            shift = value * 0.08 if row.key in W8_SOCKET_ROWS else top * 0.01
            axis.text(value + shift, position, label, va="center", fontsize=7)
        if row.key not in W8_SOCKET_ROWS:
            axis.set_xlim(0, top * 1.25)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return None


def curve_chart(cell_list: list[dict[str, Any]], path: str, title: str) -> str | None:
    """The cost curves as lines, one panel per curve (log-log for the payload size): where a
    line bends down faster than its anchors, the cost per item jumped. Returns why not, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (make bench installs it)"
    cells = _index(cell_list)
    curves = [
        ("Events/s against the payload size (Unix)", "payload, bytes", "pay-", PAYLOAD_ROWS),
        ("Events delivered/s, broadcast (Unix)", "clients", "fanout-", FANOUT_ROWS),
        ("Events received/s, fan-in (Unix)", "clients", "fanin-", FANIN_ROWS),
        ("KiB per idle connection (Unix)", "idle connections", "idle-", IDLE_ROWS),
    ]
    drawn = []
    for heading, xlabel, prefix, keys in curves:
        lines = []
        for impl in IMPLS:
            points = [
                (int(key.removeprefix(prefix)), cells[(key, "unix", impl.key)]["value"])
                for key in keys
                if cells.get((key, "unix", impl.key), {}).get("status") == "ok"
            ]
            if points:
                lines.append((impl, points))
        if lines:
            drawn.append((heading, xlabel, lines))
    if not drawn:
        return "no curve measured"
    figure, axes = plt.subplots(1, len(drawn), figsize=(6.5 * len(drawn), 4.2), squeeze=False)
    for axis, (heading, xlabel, lines) in zip(axes.flat, drawn, strict=True):
        for impl, points in lines:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o", label=impl.label, color=COLOURS[impl.family])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(heading, fontsize=9)
        axis.set_xlabel(xlabel, fontsize=8)
        unit = "KiB, lower is better" if xlabel == "idle connections" else "ev/s, higher is better"
        axis.set_ylabel(unit, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title + ": cost curves", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return None
