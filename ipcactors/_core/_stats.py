"""Counters of servers and connections, and the snapshots ``statistics()`` returns.

Invariant: counters only grow, are plain integer fields bumped in place (no lock, no loop pass),
and a snapshot is a frozen copy: reading statistics never changes or blocks anything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionStatistics",
    "PeerCounters",
    "PoolStatistics",
    "ServerCounters",
    "ServerStatistics",
]


class PeerCounters:
    """What one peer (a server's client, or a connection) counts while it lives."""

    __slots__ = (
        "events_deduplicated",
        "events_redelivered",
        "events_unhandled",
        "heartbeat_timeouts",
        "shared_dropped",
        "shared_fallbacks",
        "shared_received",
        "shared_sent",
    )

    def __init__(self) -> None:
        self.events_unhandled = 0  # events that arrived with no handler registered
        self.heartbeat_timeouts = 0  # connections dropped: nothing received in time
        self.events_redelivered = 0  # acked mode: delivered again after a receiver restart
        self.events_deduplicated = 0  # acked mode: arrived again, already delivered: dropped
        self.shared_sent = 0  # arrays sent through shared memory
        self.shared_received = 0  # arrays received through shared memory
        self.shared_fallbacks = 0  # arrays over the threshold that took the socket path
        self.shared_dropped = 0  # frames naming shared memory lost with their connection


class ServerCounters:
    """What a server counts over its life (its clients' counters are added as they leave)."""

    __slots__ = (
        "broadcasts_dropped",
        "events_unhandled",
        "handshakes_dropped",
        "handshakes_failed",
        "heartbeat_timeouts",
        "idle_closed",
        "refused_busy",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.events_unhandled = 0
        self.refused_busy = 0  # clients refused with ``busy`` (max_connections, not ready)
        self.handshakes_dropped = 0  # oldest unfinished handshakes dropped (max_handshakes)
        self.handshakes_failed = 0  # handshakes refused or failed (timeout, bad bytes, auth)
        self.slow_consumers = 0  # clients disconnected for not reading (slow_consumer)
        self.broadcasts_dropped = 0  # broadcast frames a client missed: slow, or too large
        self.heartbeat_timeouts = 0  # clients dropped: nothing received from them in time
        self.idle_closed = 0  # clients closed after idle_timeout with nothing but heartbeats


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
    #: Bytes of events and requests received from the peer and waiting for their handlers.
    inbox_bytes: int
    #: Events that arrived with no handler registered (each name is also logged once).
    events_unhandled: int
    #: Times this connection was dropped because nothing came from the peer within
    #: ``heartbeat_interval + heartbeat_timeout``.
    heartbeat_timeouts: int
    #: Acknowledged mode (``Config.acked``), sending side: events emitted with a sequence
    #: number; of those, acknowledged by the peer, still waiting for it, and reported
    #: (given up, see ``Connection.unacknowledged``). Always
    #: ``events_acknowledged + events_reported + events_unacknowledged == events_sequenced``.
    events_sequenced: int = 0
    events_acknowledged: int = 0
    events_unacknowledged: int = 0
    events_reported: int = 0
    #: Events sent again after a reconnect (the writer had taken them, no ack had come).
    events_resent: int = 0
    #: Receiving side: events delivered with ``redelivered`` set (sent again to a receiver
    #: that restarted: they may have been handled before it did).
    events_redelivered: int = 0
    #: Receiving side: events that arrived again after a resume, already delivered: dropped.
    events_deduplicated: int = 0
    #: Shared memory (``Config.max_shared_bytes``): whether this connection has it right now;
    #: arrays sent and received through it; arrays of at least ``shared_threshold`` bytes that
    #: took the socket path (the pool was full, or shared memory is off on this connection);
    #: frames naming shared memory that were lost with their connection (never sent).
    shared_memory: bool = False
    #: Bytes of our shared segments in use right now: slots the peer (or an array from
    #: ``empty()``) still holds.
    shared_in_use: int = 0
    shared_sent: int = 0
    shared_received: int = 0
    shared_fallbacks: int = 0
    shared_dropped: int = 0
    #: Whether events go to the peer in batches right now, several to a frame: both sides
    #: announced them in the handshake (docs/protocol.md, "Batches of events").
    batches: bool = False


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (``Server.statistics()``), since it started."""

    #: Clients connected right now.
    clients: int
    #: Connections accepted and still in their handshake right now.
    handshaking: int
    #: Clients whose handshake is done, waiting right now for the server to be ready (a
    #: supervised child welcomes its siblings once its handlers are in place).
    held: int
    #: Clients refused with ``busy`` (``max_connections``, or the server not ready in time).
    refused_busy: int
    #: Unfinished handshakes dropped to admit a newer connection (``max_handshakes``).
    handshakes_dropped: int
    #: Handshakes that failed or were refused: timed out, bad bytes, wrong version or key.
    handshakes_failed: int
    #: Clients disconnected by ``broadcast`` for not reading (``slow_consumer="disconnect"``).
    slow_consumers: int
    #: Broadcast frames not sent to a client too slow to read (``slow_consumer="drop"``), or
    #: beyond the max_frame_size or max_decoded_objects its handshake announced.
    broadcasts_dropped: int
    #: Clients dropped because nothing came from them within
    #: ``heartbeat_interval + heartbeat_timeout`` (frozen, hung or vanished).
    heartbeat_timeouts: int
    #: Clients closed after ``idle_timeout`` with nothing from them but heartbeats.
    idle_closed: int
    #: Events from any client that arrived with no handler registered.
    events_unhandled: int
    #: Acknowledged mode, this server's events to its clients (emit and broadcast), summed
    #: over clients: sequenced; of those, acknowledged, still waiting (kept for a client that
    #: left, too), and reported (see ``Server.unacknowledged``).
    #: ``events_acknowledged + events_reported + events_unacknowledged == events_sequenced``.
    events_sequenced: int = 0
    events_acknowledged: int = 0
    events_unacknowledged: int = 0
    events_reported: int = 0


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`Pool`'s counters (``pool.statistics()``). Each task ends as
    one of completed, failed or cancelled: once the pool is idle, ``submitted == completed +
    failed + cancelled``."""

    size: int  # worker processes
    per_worker: int  # tasks in flight per worker at most
    in_flight: int  # tasks sent to a worker and not answered yet
    submitted: int  # tasks asked for (submit, call, map items started)
    completed: int  # tasks that returned a result
    failed: int  # tasks whose function raised (RemoteError), or that gave up
    retried: int  # attempts made again after a worker was lost
    timed_out: int  # attempts that ran past task_timeout (their worker was killed)
    cancelled: int  # tasks whose caller went away first (queued, or in a worker)
    restarts: int  # worker processes restarted by the supervisor
