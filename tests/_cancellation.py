"""The backend's cancellation exception where nothing is cancelling: for the tests of what a
handler (or a pool task) that raises it itself comes to."""

from __future__ import annotations

import anyio


async def stray_cancellation() -> BaseException:
    """The backend's cancellation exception caught out of a cancel scope of its own, over:
    raised again, it is no cancellation of whoever raises it (on asyncio one can also be made
    by hand; Trio's cannot)."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except anyio.get_cancelled_exc_class() as exc:
            return exc
    raise AssertionError("not cancelled")
