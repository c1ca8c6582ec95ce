"""The forkserver's rehearsal: before it forks anything, it walks the way every child goes to
ready, a few times, so that its children inherit that way warm.

Why: a warm spawn is mostly a child running code for the first time in its process. CPython
specializes a function's bytecode in place as it first runs it (writing to memory the child
shares copy-on-write with the forkserver, a page fault each), and first uses fill caches (the
backend anyio loads at its first run, the codec's shared unpacker, the limits of a config, ...).
Run once in the forkserver, all that is inherited instead: warm spawns ~0.7x on asyncio,
~0.8x on Trio (docs/performance.md), for ~40 ms once, before the forkserver says it is ready.

Invariants:
- It runs to its end before the forkserver forks anything, and leaves nothing running: no
  event loop, no thread, no descriptor, no file (its sockets live in a private temporary
  folder, removed after). The forkserver stays a quiet, single-threaded process to fork.
- It is the child's own code (``_child._main``: connect back with ``wait=False``, the hello
  request, serving its own socket held, ready, the target, closing), on the backend the
  children run, against a stand-in supervisor that answers as the real one does.
- It is bounded (``REHEARSAL_SECONDS``) and cannot fail the forkserver: whatever goes wrong
  costs the warmth and nothing else.
- The signals that end a forkserver (``HELD_SIGNALS``: its parent's death, its session's end)
  wait while it runs and are handled as it ends: their handlers raise ``SystemExit``, which,
  raised anywhere in an event loop's own code, could leave the loop waiting for ever (its
  deadline lost with it), the forkserver orphaned.
"""

from __future__ import annotations

import gc
import shutil
import signal
import tempfile
from typing import Final

import anyio

from .._actor import Actor
from .._proto._msgpack import pack_value
from .._transports._backend import backend_options
from ._child import HELLO_EVENT, READY_EVENT, _main

__all__ = ["HELD_SIGNALS", "REHEARSAL_ROUNDS", "REHEARSAL_SECONDS", "rehearse"]

#: Walks of the child's way: CPython specializes a function after a few runs (3.11: 8 calls).
REHEARSAL_ROUNDS: Final = 10
#: At most this long, whatever happens (it takes ~40 ms).
REHEARSAL_SECONDS: Final = 2.0

_TOKEN: Final = "rehearsal"

#: Held while a rehearsal runs (see the invariants): a forkserver's parent died, or the SSH
#: session of a remote one ended.
HELD_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGHUP})


def rehearse(backend: str, uvloop: bool, rounds: int = REHEARSAL_ROUNDS) -> bool:
    """Walk a child's way to ready ``rounds`` times on ``backend``; whether it went through.
    A held signal that came meanwhile is handled as it returns (its handler may raise)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        try:
            root = tempfile.mkdtemp(prefix="ipcactors-rehearsal-")
        except OSError:
            return False
        try:
            done: bool = anyio.run(
                _walk,
                root,
                rounds,
                backend=backend,
                backend_options=backend_options(backend, uvloop),
            )
            return done
        except Exception:  # (whatever it is: the children are merely colder)
            return False
        finally:
            shutil.rmtree(root, ignore_errors=True)
            gc.collect()  # what it dropped is not inherited (a child never collects it: gc.freeze)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (one that came: handled here)


async def _walk(root: str, rounds: int) -> bool:
    with anyio.move_on_after(REHEARSAL_SECONDS):
        async with Actor("supervisor", socket_root=root, silent=True) as supervisor:
            server = await supervisor.serve()
            server.on(HELLO_EVENT, lambda data, client: {"args": pack_value([])})
            server.on(READY_EVENT, lambda data, client: None)
            for index in range(rounds):
                spec = {
                    "id": f"child{index}",
                    "config": {"id": f"child{index}", "socket_root": root, "silent": True},
                    "token": _TOKEN,
                    "timeout": REHEARSAL_SECONDS,
                    "sup_id": "supervisor",
                    "sup_path": server.address,
                }
                if await _main(spec, _target) != 0:
                    return False
            return True
    return False


async def _target(actor: Actor) -> None:
    """A child's function that returns at once."""
