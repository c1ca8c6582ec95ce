"""Counters of servers and connections, and the snapshots ``statistics()`` returns.

Invariant: counters only grow, are plain integer fields bumped in place (no lock, no loop pass),
and a snapshot is a frozen copy: reading statistics never changes or blocks anything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConnectionStatistics", "PeerCounters", "ServerCounters", "ServerStatistics"]


class PeerCounters:
    """What one peer (a server's client, or a connection) counts while it lives."""

    __slots__ = ("events_unhandled",)

    def __init__(self) -> None:
        self.events_unhandled = 0  # events that arrived with no handler registered


class ServerCounters:
    """What a server counts over its life (its clients' counters are added as they leave)."""

    __slots__ = (
        "broadcasts_dropped",
        "events_unhandled",
        "handshakes_dropped",
        "handshakes_failed",
        "refused_busy",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.events_unhandled = 0
        self.refused_busy = 0  # clients refused with ``busy`` (max_connections)
        self.handshakes_dropped = 0  # oldest unfinished handshakes dropped (max_handshakes)
        self.handshakes_failed = 0  # handshakes refused or failed (timeout, bad bytes, auth)
        self.slow_consumers = 0  # clients disconnected for not reading (slow_consumer)
        self.broadcasts_dropped = 0  # broadcast frames a slow client missed (slow_consumer)


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters (``Connection.statistics()``,
    ``Client.statistics()``), since it was made."""

    #: Whether it is connected right now.
    connected: bool
    #: Bytes queued for the peer and not yet in the kernel.
    outbox_bytes: int
    #: Requests sent to the peer and still waiting for their reply.
    requests_pending: int
    #: Events that arrived with no handler registered (each name is also logged once).
    events_unhandled: int


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (``Server.statistics()``), since it started."""

    #: Clients connected right now.
    clients: int
    #: Connections accepted and still in their handshake right now.
    handshaking: int
    #: Clients refused with ``busy`` (``max_connections``).
    refused_busy: int
    #: Unfinished handshakes dropped to admit a newer connection (``max_handshakes``).
    handshakes_dropped: int
    #: Handshakes that failed or were refused: timed out, bad bytes, wrong version or key.
    handshakes_failed: int
    #: Clients disconnected by ``broadcast`` for not reading (``slow_consumer="disconnect"``).
    slow_consumers: int
    #: Broadcast frames not sent to a client too slow to read (``slow_consumer="drop"``).
    broadcasts_dropped: int
    #: Events from any client that arrived with no handler registered.
    events_unhandled: int
