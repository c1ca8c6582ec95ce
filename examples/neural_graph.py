"""A small neural network with one process per layer: numpy arrays flow from layer to layer,
each layer addressing the next by its actor id. A layer is killed in the middle of the run;
the supervisor restarts it, the batch in flight is retried, and every output still matches
the same network computed in one process.

    python examples/neural_graph.py           # or: ... --backend trio
    python examples/neural_graph.py --hosts hosts.toml   # layers on other hosts, over SSH
    python examples/neural_graph.py --activation-mib 16  # smaller activations (default 64)

Layer processes get their weights as spawn arguments (numpy arrays travel as a msgpack
extension: dtype, shape and raw bytes, never pickle), so a restarted layer is the same layer.

Then real-sized activations: batches of 64 MiB float32 flow through the same four processes
(each applies a ReLU in place and passes the array on), and the throughput is printed. Large
arrays are written straight from the sender's memory and received straight into the array the
next layer gets: one copy per side.

With ``--hosts``, a small TOML file places layers on hosts (docs/remote.md)::

    listen = ["10.0.0.1", 0]      # where the layers connect back (default: loopback)

    [hosts.gpu-1]                 # any SSHHost field
    address = "10.0.0.11"
    user = "ml"
    client_keys = ["/home/ml/.ssh/id_ed25519"]
    python = "/opt/venv/bin/python"
    cwd = "/srv/graph"            # this script must be at the same path there
    env = { PYTHONPATH = "/srv/graph" }

    [placement]                   # layers not named here run on this machine
    layer-1 = "gpu-1"
    layer-2 = "gpu-1"

Then the supervisor carries each batch from layer to layer (layers on different hosts do not
reach each other's Unix sockets), and kills the victim by asking it to SIGKILL itself (its pid
is on another host).
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import signal
import time
import tomllib
from typing import Any

# One BLAS thread per process: the graph already runs a process per layer (and the forkserver,
# which preloads numpy, then forks from a single-threaded process).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import anyio
import numpy as np

import ipcactors

SIZES = [16, 64, 64, 32, 4]  # input, hidden..., output
BATCHES = 12
BATCH_SIZE = 32
KILL_AT_BATCH = 5
ACTIVATION_BATCHES = 4
FEATURES = 4096  # activations are (rows, 4096) float32: 16 KiB per row


def layer_ids() -> list[str]:
    return [f"layer-{i + 1}" for i in range(len(SIZES) - 1)]


def make_weights(seed: int = 7) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in), rng.standard_normal(n_out) * 0.1)
        for n_in, n_out in itertools.pairwise(SIZES)
    ]


def apply_layer(
    x: np.ndarray[Any, Any], w: np.ndarray[Any, Any], b: np.ndarray[Any, Any], last: bool
) -> np.ndarray[Any, Any]:
    y = x @ w + b
    if last:  # softmax
        e = np.exp(y - y.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
    relu: np.ndarray[Any, Any] = np.maximum(y, 0.0)
    return relu


def forward_in_one_process(
    x: np.ndarray[Any, Any], weights: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
) -> np.ndarray[Any, Any]:
    for i, (w, b) in enumerate(weights):
        x = apply_layer(x, w, b, last=i == len(weights) - 1)
    return x


async def layer(
    actor: ipcactors.Actor,
    w: np.ndarray[Any, Any],
    b: np.ndarray[Any, Any],
    next_id: str | None,
    last: bool,
) -> None:
    """Runs in a child process: one layer of the network. ``next_id``: the layer it passes its
    output to; ``None``: it answers with it (the last layer, or every layer with --hosts)."""
    parent = actor.parent  # the supervisor (a supervised child always has one)
    assert parent is not None

    async def forward(batch: dict[str, Any]) -> np.ndarray[Any, Any]:
        if batch.get("hold") == actor.id:  # the demo's victim: say so, then "compute" until killed
            await parent.emit("holding", actor.id)
            await anyio.sleep(30)
        y = apply_layer(batch["x"], w, b, last=last)
        if next_id is None:
            return y
        downstream = await actor.connect_to(next_id)  # by id; reconnects if it restarts
        batch = {"x": y, "hold": batch.get("hold")}
        result: np.ndarray[Any, Any] = await downstream.request("forward", batch, timeout=10)
        return result

    async def activations(batch: dict[str, Any]) -> Any:
        x = batch["x"]  # ours: a fresh, writable array received in place
        np.maximum(x, 0.0, out=x)  # this layer's work, in place
        if last:
            return float(x[:, :8].sum())  # a checksum, not the whole batch back
        if next_id is None:
            return x  # with --hosts: back to the supervisor, which carries it on
        downstream = await actor.connect_to(next_id)
        return await downstream.request("activations", {"x": x}, timeout=60)

    parent.on("forward", forward)  # the supervisor feeds the first layer
    parent.on("activations", activations)
    parent.on("die", lambda data: os.kill(os.getpid(), signal.SIGKILL))
    assert actor.server is not None
    actor.server.on("forward", lambda batch, client: forward(batch))  # the previous layer
    actor.server.on("activations", lambda batch, client: activations(batch))
    await anyio.sleep_forever()


def read_hosts(path: str) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The hosts (SSHHost by name), the placement (layer id: host name), and the supervisor's
    extra arguments, from a TOML file (see the module docstring)."""
    try:
        with open(path, "rb") as file:
            config = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"--hosts {path}: {exc} (its format: this file's docstring)") from None
    hosts = {}
    for name, fields in config.get("hosts", {}).items():
        if "client_keys" in fields:
            fields["client_keys"] = tuple(fields["client_keys"])
        hosts[name] = ipcactors.SSHHost(**fields)
    placement = dict(config.get("placement", {}))
    # (A key below [placement] is read as a layer: a misplaced one must not pass unnoticed.)
    for layer, host in placement.items():
        if layer not in layer_ids() or not isinstance(host, str) or host not in hosts:
            raise SystemExit(
                f"{path}: [placement] {layer} = {host!r}: the layers are {layer_ids()}, "
                f"the hosts {list(hosts)} (top-level keys such as listen go above the tables)"
            )
    extra: dict[str, Any] = {"auth_key": secrets.token_bytes(32)}  # reaches layers over SSH
    if "listen" in config:
        extra["listen"] = tuple(config["listen"])
    return hosts, placement, extra


async def main(hosts_file: str | None, activation_mib: int) -> None:
    hosts: dict[str, Any] = {}
    placement: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if hosts_file is not None:
        hosts, placement, extra = read_hosts(hosts_file)
    weights = make_weights()
    ids = layer_ids()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((BATCH_SIZE, SIZES[0])) for _ in range(BATCHES)]

    async with ipcactors.Supervisor(
        strategy="one_for_one",
        max_restarts=3,
        max_seconds=10.0,
        preload=["numpy"],
        retry=0.02,
        retry_cap=0.2,
        hosts=hosts,
        **extra,
    ) as sup:
        # Start from the output side, so every layer's successor is up when it starts.
        for i in reversed(range(len(ids))):
            w, b = weights[i]
            last = i + 1 == len(ids)
            next_id = None if last or hosts else ids[i + 1]
            await sup.spawn(layer, w, b, next_id, last, id=ids[i], host=placement.get(ids[i]))
        for i, id in enumerate(ids):
            w, _ = weights[i]
            child = sup.children[id]
            where = f" on {child.host}" if child.host else ""
            print(f"node {id} started{where} (pid {child.pid}): {w.shape[0]} -> {w.shape[1]}")
        # With hosts, the supervisor carries each batch through every layer.
        chain = ids if hosts else ids[:1]

        outputs: list[np.ndarray[Any, Any]] = []
        victim = ids[len(ids) // 2]
        holding = anyio.Event()
        sup.on("holding", lambda id, client: holding.set())
        for n, x in enumerate(inputs, 1):
            if n != KILL_AT_BATCH:
                outputs.append(await run_batch(sup, chain, n, x))
                continue

            async def kill_in_flight(n: int = n) -> None:
                await holding.wait()  # batch n has reached the victim
                pid = sup.children[victim].pid
                assert pid is not None
                print(f"killing node {victim} (pid {pid}) while batch {n} is in flight")
                if sup.children[victim].host is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    await sup.emit(victim, "die")  # it SIGKILLs itself, on its host
                with anyio.fail_after(5):
                    while not (sup.children[victim].running and sup.children[victim].pid != pid):
                        await anyio.sleep(0.01)
                print(f"node {victim} restarted (pid {sup.children[victim].pid})")

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(kill_in_flight)
                outputs.append(await run_batch(sup, chain, n, x, hold=victim))

        await stream_activations(sup, chain, len(ids), activation_mib)

    expected = [forward_in_one_process(x, weights) for x in inputs]
    worst = max(
        float(np.abs(got - want).max()) for got, want in zip(outputs, expected, strict=True)
    )
    if len(outputs) != BATCHES or worst > 1e-9:
        raise SystemExit(f"FAILED: {len(outputs)} batches, max abs difference {worst:.3g}")
    print(
        f"all {BATCHES} batches match the single-process computation "
        f"(max abs difference {worst:.1e})"
    )


async def stream_activations(
    sup: ipcactors.Supervisor, chain: list[str], layers: int, mib: int
) -> None:
    """Real-sized activations through the graph: each batch crosses every layer's process."""
    rows = mib * 1024 * 1024 // (4 * FEATURES)
    rng = np.random.default_rng(2)
    batches = [
        rng.standard_normal((rows, FEATURES), dtype=np.float32) for _ in range(ACTIVATION_BATCHES)
    ]

    async def through(x: np.ndarray[Any, Any]) -> Any:
        result: Any = x
        for id in chain:
            result = await sup.request(id, "activations", {"x": result}, timeout=60)
        return result

    await through(batches[0].copy())  # warm-up (the layers work in place on what they get)
    start = time.perf_counter()
    for x in batches:
        checksum = await through(x)
        expected = float(np.maximum(x[:, :8], 0.0).sum())
        if abs(checksum - expected) > 1e-3 * max(1.0, abs(expected)):
            raise SystemExit(f"FAILED: activations checksum {checksum} != {expected}")
    seconds = time.perf_counter() - start
    moved = ACTIVATION_BATCHES * mib * layers  # MiB handed from process to process
    print(
        f"activations: {ACTIVATION_BATCHES} batches of {mib} MiB ({rows}x{FEATURES} float32) "
        f"through {layers} layer processes in {seconds:.2f} s: "
        f"{ACTIVATION_BATCHES / seconds:.1f} batches/s, {moved / seconds:.0f} MiB/s between "
        "processes, all checksums match"
    )


async def run_batch(
    sup: ipcactors.Supervisor,
    chain: list[str],
    n: int,
    x: np.ndarray[Any, Any],
    hold: str | None = None,
) -> np.ndarray[Any, Any]:
    """Send one batch into the graph (through each layer of ``chain`` in turn: the first
    passes it on to the rest itself without hosts); retry it if a node died on the way."""
    for attempt in range(1, 6):
        try:
            result = x
            for id in chain:
                batch = {"x": result, "hold": hold if attempt == 1 else None}
                result = await sup.request(id, "forward", batch, timeout=15)
            print(f"batch {n:2}: output {result.shape}, argmax {np.bincount(result.argmax(1))}")
            return result
        except (ipcactors.RemoteError, ipcactors.ConnectionLostError) as exc:
            # A node downstream died: the node before it reports the lost connection.
            text = exc.remote_message if isinstance(exc, ipcactors.RemoteError) else str(exc)
            reason = text.splitlines()[0] if text else type(exc).__name__
            print(f"batch {n:2}: attempt {attempt} failed ({reason}); retrying")
            await anyio.sleep(0.05 * attempt)
    raise SystemExit(f"FAILED: batch {n} failed five times")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--hosts", help="a TOML file placing layers on hosts")
    parser.add_argument("--activation-mib", type=int, default=64, help="MiB per batch")
    arguments = parser.parse_args()
    ipcactors.run(
        main,
        arguments.hosts,
        arguments.activation_mib,
        backend=arguments.backend,
        log_level="WARNING",
    )
