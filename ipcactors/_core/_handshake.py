"""The handshake, both sides: hello, an optional shared-key challenge, then welcome or reject.

    client                               server
    hello {v, id[, nonce]}         ->
                                   <-    challenge {nonce, proof}      (only with auth_key)
    proof {proof}                  ->                                  (only with auth_key)
                                   <-    welcome {v, id}  |  reject {reason, message}

Invariants:
- With ``auth_key`` both sides prove knowledge of the key over fresh random nonces from both
  sides; the role is bound into each MAC (``server``/``client`` labels), so a proof can never be
  reflected back; proofs are compared in constant time. No handler runs before ``welcome``.
- A client with a key refuses a server that welcomes it without a challenge: the
  authentication is mutual. A shared key authenticates; it does not encrypt (use TLS for that).
- Frames before ``welcome`` are held to ``Limits.max_handshake_size``, and the whole exchange to
  ``handshake_timeout`` (enforced by the callers).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from anyio.abc import ByteStream

from .._errors import AuthenticationError, ProtocolError, RejectedError, ServerBusyError
from .._proto._codec import Decoder, Encoder
from .._proto._messages import PROTOCOL_VERSION, Challenge, Hello, Proof, Reject, Welcome
from ._channel import frame_bytes, read_handshake_message

__all__ = ["Refusal", "accept_handshake", "open_handshake", "rejection"]

NONCE_SIZE = 32


class Refusal(Exception):
    """The server refuses the client: sent as ``reject {reason, message}``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _mac(key: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"ipcactors/1 " + role + b"\0" + b"".join(parts), hashlib.sha256).digest()


def rejection(reject: Reject, target: str) -> RejectedError:
    """The client-side error for a server's ``reject``."""
    message = f"{target!r} refused the connection ({reject.reason}): {reject.message}"
    if reject.reason == "busy":
        return ServerBusyError(message, reject.reason)
    if reject.reason == "auth":
        return AuthenticationError(message, reject.reason)
    return RejectedError(message, reject.reason)


async def accept_handshake(
    stream: ByteStream,
    decoder: Decoder,
    encoder: Encoder,
    auth_key: bytes | None,
) -> Hello:
    """The server's side, up to (not including) its decision to welcome. Raises
    :class:`Refusal` or :class:`ProtocolError`."""
    hello = await read_handshake_message(stream, decoder)
    if type(hello) is not Hello:
        raise ProtocolError(f"expected hello, got {type(hello).__name__}")
    if hello.version != PROTOCOL_VERSION:
        raise Refusal(
            "version",
            f"protocol version {hello.version} is not supported (want {PROTOCOL_VERSION})",
        )
    if auth_key is None:
        return hello
    client_nonce = hello.extra.get("nonce")
    if type(client_nonce) is not bytes or len(client_nonce) != NONCE_SIZE:
        raise Refusal("auth", "this server requires a shared key: set auth_key")
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    server_proof = _mac(auth_key, b"server", client_nonce, server_nonce)
    await stream.send(frame_bytes(encoder.challenge(server_nonce, server_proof)))
    answer = await read_handshake_message(stream, decoder)
    if type(answer) is not Proof:
        raise ProtocolError(f"expected proof, got {type(answer).__name__}")
    expected = _mac(auth_key, b"client", server_nonce, client_nonce, hello.id.encode())
    if not hmac.compare_digest(answer.proof, expected):
        raise Refusal("auth", "wrong auth_key")
    return hello


async def open_handshake(
    stream: ByteStream,
    decoder: Decoder,
    encoder: Encoder,
    actor_id: str,
    target: str,
    auth_key: bytes | None,
) -> Welcome:
    """The client's side. Raises :class:`RejectedError` (and its kinds) or
    :class:`ProtocolError`."""
    client_nonce = b""
    if auth_key is None:
        await stream.send(frame_bytes(encoder.hello(actor_id)))
    else:
        client_nonce = secrets.token_bytes(NONCE_SIZE)
        await stream.send(frame_bytes(encoder.hello(actor_id, nonce=client_nonce)))
    reply = await read_handshake_message(stream, decoder)
    if type(reply) is Challenge:
        if auth_key is None:
            raise AuthenticationError(f"{target!r} requires a shared key: set auth_key", "auth")
        expected = _mac(auth_key, b"server", client_nonce, reply.nonce)
        if not hmac.compare_digest(reply.proof, expected):
            raise AuthenticationError(
                f"{target!r} failed to prove it knows auth_key: wrong key, or not {target!r}",
                "auth",
            )
        proof = _mac(auth_key, b"client", reply.nonce, client_nonce, actor_id.encode())
        await stream.send(frame_bytes(encoder.proof(proof)))
        reply = await read_handshake_message(stream, decoder)
    elif type(reply) is Welcome and auth_key is not None:
        raise AuthenticationError(
            f"{target!r} accepted us without proving it knows auth_key; refusing it", "auth"
        )
    if type(reply) is Reject:
        raise rejection(reply, target)
    if type(reply) is not Welcome:
        raise ProtocolError(f"expected welcome from {target!r}, got {type(reply).__name__}")
    if reply.version != PROTOCOL_VERSION:
        raise RejectedError(
            f"{target!r} speaks protocol version {reply.version}, not {PROTOCOL_VERSION}",
            "version",
        )
    return reply
