"""Datagram endpoints (UDP): the datagram counterpart of ``_transport``'s byte streams.

Invariants:
- The layers above name a datagram transport by kind (``"udp4"``, ``"udp6"``) and get an anyio
  ``UDPSocket`` (``receive()`` gives a datagram and its sender, ``sendto``, ``aclose``); they
  see no socket object and no address family.
- :data:`MAX_DATAGRAM` is the largest datagram each kind can carry: what the layers above
  check before sending, so that no backend drops or refuses one late.
"""

from __future__ import annotations

import socket
from typing import Final, Literal

import anyio
from anyio.abc import UDPSocket

from .._errors import ConfigError
from ._transport import raise_bind_error

__all__ = [
    "MAX_DATAGRAM",
    "DatagramKind",
    "interface_name",
    "open_datagram_endpoint",
    "resolve_datagram_peer",
]

DatagramKind = Literal["udp4", "udp6"]

#: The IP limits minus the IP and UDP headers.
MAX_DATAGRAM: Final[dict[str, int]] = {"udp4": 65_507, "udp6": 65_527}


async def open_datagram_endpoint(kind: DatagramKind, host: str, port: int) -> UDPSocket:
    """A datagram endpoint bound to ``(host, port)`` (port 0: a free one). Raises
    :class:`AddressInUseError` when the port is taken."""
    try:
        if kind == "udp4":
            return await anyio.create_udp_socket(socket.AF_INET, local_host=host, local_port=port)
        return await anyio.create_udp_socket(socket.AF_INET6, local_host=host, local_port=port)
    except OSError as exc:
        raise_bind_error(exc, "UDP", host, port)


async def resolve_datagram_peer(kind: DatagramKind, host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` with ``host`` looked up as an address of ``kind``'s family: uvloop's
    ``sendto`` takes addresses only, where asyncio and Trio look names up. Raises
    :class:`ConfigError` for a name that does not resolve."""
    family = socket.AF_INET6 if kind == "udp6" else socket.AF_INET
    try:
        found = await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConfigError(
            f"cannot resolve UDP peer {host!r} to an IPv{kind[-1]} address: {exc}"
        ) from None
    return (str(found[0][4][0]), port)


def interface_name(index: int) -> str:
    """The name of the network interface numbered ``index`` (a scope, as the kernel writes
    it); :class:`OSError` if there is none."""
    try:
        return socket.if_indextoname(index)
    except OverflowError as exc:
        raise OSError(f"no interface {index}") from exc
