"""A pipeline of processes streaming batches with acknowledged events (``Config.acked``): a
layer is killed in the middle of the stream, its supervisor restarts it, and no batch is lost.

    source --batch--> layer-1 --batch--> layer-2 --result--> supervisor (the sink)

    python examples/acked_pipeline.py           # or: ... --backend trio

Every hop is an ``emit``, acknowledged once the receiver's handler returned. A layer hands a
batch on and waits for the next hop's acknowledgement before its own handler returns, so a
batch is acknowledged upstream only once it is safe downstream. When layer-1 is SIGKILLed,
the source sends again what layer-1 had not acknowledged; the restarted layer-1 sees those
batches flagged as redelivered (it may have handled some before it died), and the sink drops
the batches it already has. Every batch arrives, none twice at the sink, and every output
matches the same network computed in one process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
from typing import Any

# One BLAS thread per process: the pipeline already runs a process per stage.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import anyio
import numpy as np

import ipcactors

SIZES = [16, 32, 4]  # input, hidden, output: two layers
BATCHES = 40
BATCH_SIZE = 16
KILL_AFTER = 12  # results at the sink when layer-1 is killed
WORK_SECONDS = 0.01  # each layer "computes" this long per batch, so the stream takes a while


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


async def source(actor: ipcactors.Actor, inputs: list[np.ndarray[Any, Any]]) -> None:
    """Runs in a child process: streams every batch to layer-1, then waits until all were
    acknowledged (through layer-1's restart) and says so."""
    layer1 = await actor.connect_to("layer-1")
    for n, x in enumerate(inputs):
        await layer1.emit("batch", {"n": n, "x": x})
    await layer1.wait_acknowledged()  # every batch is past layer-1 and safe downstream
    parent = actor.parent
    assert parent is not None
    await parent.emit("source done", len(inputs))
    await anyio.sleep_forever()


async def layer(
    actor: ipcactors.Actor, w: np.ndarray[Any, Any], b: np.ndarray[Any, Any], next_id: str | None
) -> None:
    """Runs in a child process: one layer. Hands each batch on, and returns from its handler
    (which acknowledges the batch upstream) only once the next hop acknowledged it. The handler
    is registered before the first ``await``: a restarted layer's server welcomes the source
    (which sends its unacknowledged batches at once) only from there on."""
    parent = actor.parent
    assert parent is not None
    assert actor.server is not None
    redelivered = 0

    async def on_batch(batch: dict[str, Any], client: ipcactors.Client) -> None:
        nonlocal redelivered
        if client.redelivered:  # sent again after a restart: may have been handled before it
            redelivered += 1
            if redelivered == 1:
                print(f"{actor.id}: batch {batch['n']} and on arrive flagged as redelivered")
        await anyio.sleep(WORK_SECONDS)
        y = apply_layer(batch["x"], w, b, last=next_id is None)
        out = {"n": batch["n"], "x": y, "redelivered": batch.get("redelivered", False)}
        out["redelivered"] |= client.redelivered
        # By id, connected once (connect_to returns the existing connection after that).
        downstream = parent if next_id is None else await actor.connect_to(next_id)
        await downstream.emit("result" if next_id is None else "batch", out)
        await downstream.wait_acknowledged()

    actor.server.on("batch", on_batch)
    await anyio.sleep_forever()


async def main() -> None:
    weights = make_weights()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((BATCH_SIZE, SIZES[0])) for _ in range(BATCHES)]
    results: dict[int, np.ndarray[Any, Any]] = {}
    dropped = 0
    all_in = anyio.Event()
    source_done = anyio.Event()

    async with ipcactors.Supervisor(
        strategy="one_for_one",
        max_restarts=3,
        max_seconds=10.0,
        preload=["numpy"],
        acked="on",  # both ways, for every actor of the pipeline (children inherit it)
        retry=0.02,
        retry_cap=0.2,
    ) as sup:

        def on_result(data: dict[str, Any], client: ipcactors.Client) -> None:
            nonlocal dropped
            if data["n"] in results:  # sent again after the kill: at least once, never lost
                dropped += 1
                return
            results[data["n"]] = data["x"]
            if len(results) == BATCHES:
                all_in.set()

        sup.on("result", on_result)
        sup.on("source done", lambda count, client: source_done.set())
        # From the sink's side, so that every stage's successor is up when it starts.
        (w2, b2), (w1, b1) = weights[1], weights[0]
        await sup.spawn(layer, w2, b2, None, id="layer-2")
        await sup.spawn(layer, w1, b1, "layer-2", id="layer-1")
        for id in ("layer-1", "layer-2"):
            print(f"node {id} started (pid {sup.children[id].pid})")
        await sup.spawn(source, inputs, id="source")

        with anyio.fail_after(30):
            while len(results) < KILL_AFTER:
                await anyio.sleep(0.005)
            pid = sup.children["layer-1"].pid
            assert pid is not None
            print(f"killing node layer-1 (pid {pid}) mid-stream: {len(results)} batches through")
            os.kill(pid, signal.SIGKILL)
            while not (sup.children["layer-1"].running and sup.children["layer-1"].pid != pid):
                await anyio.sleep(0.01)
            print(f"node layer-1 restarted (pid {sup.children['layer-1'].pid})")
            await all_in.wait()
            await source_done.wait()

    expected = [apply_layer(apply_layer(x, w1, b1, last=False), w2, b2, last=True) for x in inputs]
    worst = max(float(np.abs(results[n] - want).max()) for n, want in enumerate(expected))
    if sorted(results) != list(range(BATCHES)) or worst > 1e-9:
        raise SystemExit(f"FAILED: {len(results)} batches, max abs difference {worst:.3g}")
    print(f"{dropped} batch(es) arrived twice at the sink and were dropped")
    print(
        f"all {BATCHES} batches arrived and match the single-process computation "
        f"(max abs difference {worst:.1e}): none lost"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ipcactors.run(main, backend=parser.parse_args().backend, log_level="WARNING")
