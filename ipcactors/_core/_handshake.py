"""The handshake over a byte stream: a :class:`Session` (``_proto._session``) decides every
step; this module sends what it asks and feeds it what arrives.

    client                               server
    hello {v, id[, nonce]}         ->
                                   <-    challenge {nonce, proof}      (only with auth_key)
    proof {proof}                  ->                                  (only with auth_key)
                                   <-    welcome {v, id}  |  reject {reason, message}

Invariants:
- A client connecting with ``wait=False`` sends its first frames right behind its hello (with
  ``auth_key``: behind its proof, one round trip later), in the same write (the channel's
  writer sends the hello, or the proof, as the first of its frames), and its channel reads
  the welcome; the server decodes those frames only once it decided to welcome it, and
  discards them otherwise.
- No handler runs before ``welcome``: the server's owner welcomes (``Session.accept``) only once
  it decided to (limits, a held server), and only then is the frame limit lifted.
- The whole exchange is bounded by ``handshake_timeout`` (enforced by the callers, one deadline
  however the bytes trickle in).
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream

from .._proto._messages import Hello
from .._proto._session import Session
from ._channel import RECEIVE_SIZE

__all__ = ["SaidNothing", "accept_handshake", "open_handshake", "run_handshake"]


class SaidNothing(ConnectionResetError):
    """The peer closed the connection before it sent a byte: a liveness check (such as the
    one ``serve()`` makes of a socket file already there) or a port scan, not a handshake
    that failed."""


async def run_handshake(stream: ByteStream, session: Session, *, pipelined: bool = False) -> None:
    """Send what ``session`` has to send and feed it what arrives, until its handshake no
    longer waits for the peer (``pipelined``: until a client may send frames ahead of the
    welcome, :attr:`Session.may_send`; what it still has to send then is left in it, for the
    channel to send with the first frames, in one write). Raises what the session raises, and
    :class:`ConnectionResetError` if the peer closes the connection meanwhile
    (:class:`SaidNothing` if it had sent nothing)."""
    heard = said = False
    while True:
        if pipelined and session.may_send:
            return  # what is left to send (the hello, or the proof) goes with the first frames
        data = session.data_to_send()
        if data:
            await stream.send(data)
            said = True
        if not session.handshaking:
            return
        try:
            received = await stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            if not heard:
                why = "the peer closed the connection without a word"
                if said:  # (at our hello: a node-ipc server, say, does)
                    why += " at our hello (so does a server of another Config.codec)"
                raise SaidNothing(why) from None
            raise ConnectionResetError(
                "the peer closed the connection during the handshake"
            ) from None
        heard = True
        session.receive(received)
        received = b""  # (not kept while the next read waits: a dropped handshake's frame may be)


async def accept_handshake(stream: ByteStream, session: Session) -> Hello:
    """The server's side, up to (not including) its decision to welcome. Raises
    :class:`~ipcactors._proto._session.Refusal` or :class:`ProtocolError`."""
    await run_handshake(stream, session)
    assert session.hello is not None
    return session.hello


async def open_handshake(stream: ByteStream, session: Session, *, pipelined: bool = False) -> None:
    """The client's side; ``pipelined``: only up to where frames may follow ahead of the
    welcome (the hello ready to go with them; with ``auth_key``, the hello sent, the
    challenge checked and the proof ready), the welcome is then the channel's to read (see
    ``Channel``), and the channel's writer sends what the session has left first. Raises
    :class:`RejectedError` (and its kinds) or :class:`ProtocolError`."""
    session.start()
    await run_handshake(stream, session, pipelined=pipelined)
