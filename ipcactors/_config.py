"""Configuration: node-ipc's ``ipc.config`` in Python names, seconds instead of milliseconds."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from ._errors import ConfigError
from ._proto._codec import Codec, codec_named
from ._proto._messages import DEFAULT_MAX_FRAME_SIZE, Limits
from ._proto._nodeipc import check_delimiter

__all__ = [
    "Config",
    "check_seconds",
    "config_of",
    "is_utf8",
    "request_timeout",
    "seconds_of",
    "shown",
]

SlowConsumer = Literal["disconnect", "drop", "wait"]
SLOW_CONSUMER_POLICIES: tuple[str, ...] = get_args(SlowConsumer)
Acked = Literal["off", "on", "require"]
ACKED_MODES: tuple[str, ...] = get_args(Acked)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Settings of an :class:`~ipcactors.Actor`. Validated on construction; immutable.

    Derive a variant with ``config.replace(retry=0.1)`` or pass overrides to ``Actor(...)``.
    """

    #: This actor's id: sent in the handshake, names the default Unix socket. Set by ``Actor``.
    id: str = ""
    #: Prefix of the default socket file name, as in node-ipc: ``<socket_root>/<appspace><id>``.
    appspace: str = "app."
    #: Directory of the default socket paths. ``None`` (or ``""``): a private per-user directory
    #: (mode 0700), ``$XDG_RUNTIME_DIR/ipcactors`` or else ``/tmp/ipcactors-<uid>``, so that no
    #: other user can reach, squat or replace our sockets.
    socket_root: str | None = None
    #: Host for ``serve_net``/``connect_to_net``. Loopback by default: exposing a port beyond this
    #: machine should be a decision (and then use TLS).
    network_host: str = "127.0.0.1"
    #: Port for ``serve_net``/``connect_to_net`` (node-ipc's default). ``0`` picks a free port.
    network_port: int = 8000
    #: No log output from this actor at all.
    silent: bool = False
    #: Clients a server holds at once; more are refused with a ``busy`` reject (node-ipc: 100).
    max_connections: int = 100
    #: First reconnect delay in seconds. Each failed attempt doubles it (randomised between half
    #: and all of it, so that many clients do not retry in step) up to ``retry_cap``.
    retry: float = 0.5
    #: Longest reconnect delay in seconds: a restarted server is found within a few seconds.
    retry_cap: float = 5.0
    #: ``None`` (or node-ipc's ``False``): retry forever. ``N``: after a failed attempt or a lost
    #: connection, try at most N more times, then give up. ``0`` (or ``True``): never retry.
    #: The count restarts after each successful handshake.
    stop_retrying: int | None = None
    #: The wire format of this actor's servers and connections (UDP included): ``"msgpack"``
    #: (default), ipcactors' own, with every feature (requests, the handshake, heartbeats,
    #: ``auth_key``). A codec that carries events only has no handshake: a connection is open
    #: as soon as the socket connects, ``request`` raises ``UnsupportedError``, heartbeats are
    #: off and ``auth_key`` cannot be set. Both ends must use the same codec.
    codec: str = "msgpack"
    #: With ``codec="node-ipc"``: the string that ends each frame, node-ipc's
    #: ``ipc.config.delimiter``; both ends must agree. ``"\f"``, node-ipc's default: JSON escapes
    #: every control character, so a delimiter that starts with one is never found inside a frame
    #: (any other could be, or across a frame's last bytes: such a frame is refused with
    #: ``EncodeError``).
    node_ipc_delimiter: str = "\f"
    #: Largest frame accepted or sent, in bytes: 64 MiB + 64 KiB (67,174,400), so that a
    #: 64 MiB payload (a 4096×4096 float32 tensor: 67,108,896 bytes encoded) fits with its
    #: envelope. Frames before the handshake completes are held to 64 KiB regardless.
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Most msgpack objects one frame may decode into (each array, map, key and value counts;
    #: a str, bin or numpy array is one object whatever its size). A small object costs up to
    #: ~72 bytes decoded (an empty map: 1 byte on the wire), so this bounds what one frame costs
    #: the receiver: its own size plus ~9 MiB by default, decoded in ~20 ms. Larger frames are
    #: counted before they are decoded (nothing is allocated for one over the budget: the peer
    #: is dropped) and refused by the sender with ``EncodeError``. 131,072 carries a list of
    #: 100,000 numbers or 10,000 small records; send more as bytes or numpy arrays, or raise it
    #: on both sides.
    max_decoded_objects: int = 1 << 17
    #: Bytes queued per connection (while connected, or while reconnecting) before ``emit`` waits.
    #: 8 MiB absorbs bursts without letting a slow peer grow our memory without bound.
    max_outbox_bytes: int = 8 * 1024 * 1024
    #: Bytes of received events and requests (as framed on the wire) a connection holds while
    #: they wait for their handlers; past it, reading from that peer pauses (backpressure).
    #: While a request to that peer waits for its reply, reading goes on up to 4× this, so that
    #: a handler awaiting a request to the peer that called it gets its reply. 4 MiB keeps a
    #: fast sender busy without letting one peer's backlog grow our memory without bound.
    #: (Decoded, data made dense in objects can cost up to ~72x its wire size: see
    #: docs/security.md.)
    max_inbox_bytes: int = 4 * 1024 * 1024
    #: Request handlers (``async def``, or returning an awaitable) running at once for one
    #: peer, each counted until its reply is queued; more requests wait, and reading from that
    #: peer pauses. No request starts either while replies the peer has not read fill our
    #: outbox. 128 serves handlers that mostly wait; it bounds what a peer that sends requests
    #: and never reads the replies can make us hold.
    max_concurrent_requests: int = 128
    #: What ``Server.broadcast`` does with a client too slow to read (its outbox is full), so
    #: that one slow consumer never holds up the others (as NATS and Redis pub/sub do). Under
    #: the first two, the frame is still queued while the client's outbox holds at most twice
    #: ``max_outbox_bytes`` (room to catch up after a burst); past that, ``"disconnect"``
    #: (default): the client is disconnected (it reconnects, if it retries), counted in
    #: ``statistics().slow_consumers`` and logged at WARNING; ``"drop"``: the client misses the
    #: frame (counted in ``broadcasts_dropped``) and stays connected: for data where only the
    #: latest matters.
    #: ``"wait"``: ``broadcast`` waits for room (backpressure): every client gets every frame,
    #: and the slowest one sets the pace for all. ``emit`` to one client always waits.
    slow_consumer: SlowConsumer = "disconnect"
    #: Acknowledged events (docs/guide.md, "Acknowledged events"): the events a connection
    #: emits to a server, and those a server emits or broadcasts to such a client, carry
    #: sequence numbers, the receiver acknowledges them, and the sender keeps each one (within
    #: ``max_outbox_bytes``) until acknowledged, resends it after a reconnect, and reports it
    #: if it gives up: at-least-once, exactly once while both processes live. ``"off"``
    #: (default): at most once, as before, at no cost.
    #: ``"on"``: acknowledged with a peer that has the mode, plain (logged) with one that does
    #: not. ``"require"``: a peer without it is refused (``RejectedError``, reason ``"acked"``).
    #: Set it on both sides (a server with ``"off"`` acknowledges nothing). Needs a codec with a
    #: handshake (not node-ipc).
    acked: Acked = "off"
    #: In the acknowledged mode, a receiver acknowledges after this many events, and whenever
    #: it has handled everything received so far (so an idle link never waits for a timer).
    #: 256 keeps acks to a few bytes per thousand events.
    ack_every: int = 256
    #: In the acknowledged mode, a receiver with a backlog also acknowledges once this many
    #: seconds passed since the first event it has not acknowledged was delivered (as a
    #: handler returns, or on a timer while one runs long: the events done before it): slow
    #: handlers behind a long inbox, or one long handler, do not hold acks back for
    #: ``ack_every`` events, nor leave the sender that much to send again after a crash.
    #: 0.05 s: at most 20 acks a second on a busy link.
    ack_interval: float = 0.05
    #: In the acknowledged mode, seconds a server keeps the unacknowledged events of a client
    #: that left, for it to reconnect (they are then sent again, first); after that they are
    #: reported (``Server.unacknowledged``). 30 s: longer than a supervisor takes to restart a
    #: crashed child and the client's reconnect backoff (``retry_cap``), yet a client that is
    #: gone for good does not hold its events (up to ``max_outbox_bytes``) for long. At most
    #: ``max_connections`` clients are kept away at once; one more gives up the oldest.
    acked_keep: float = 30.0
    #: Shared memory on one host (docs/guide.md, "Large arrays and shared memory"): the most
    #: bytes of memfd segments one connection may use in each direction. ``0`` (default): off.
    #: Above 0, this actor's Unix sockets pass file descriptors (a stream that costs a little
    #: more per small message than the default one), and a connection whose peer has it too
    #: (negotiated in the handshake) sends each numpy array of at least ``shared_threshold``
    #: bytes through a shared segment instead of the socket: one copy into warm memory on the
    #: sender, none on the receiver, or none at all with ``empty()``. The pool of a
    #: connection stays within the smaller of both sides' values; past it arrays take the
    #: socket path. TCP, TLS and UDP always take the socket path, as does a peer without it.
    #: Must be a multiple of the page size (4096). 1 GiB, say, for a graph of large tensors.
    max_shared_bytes: int = 0
    #: Arrays smaller than this (bytes) take the socket path even with shared memory: below
    #: ~256 KiB the socket is as fast and costs no slot.
    shared_threshold: int = 256 * 1024
    #: Receiving side: arrays from shared memory are read-only views of the sender's memory
    #: (``False``, default: nothing is copied), or writable copy-on-write views (``True``:
    #: pages are copied as they are written, what ``torch.from_numpy`` wants to avoid its
    #: warning on read-only arrays).
    shared_copy_on_write: bool = False
    #: Seconds allowed for the whole handshake after the socket connects (one deadline, however
    #: the bytes trickle in); a silent or slow peer is refused with ``reject(timeout)``.
    handshake_timeout: float = 5.0
    #: Connections a server holds in their handshake at once, apart from ``max_connections``.
    #: When one more arrives, the oldest unfinished handshake is dropped (closed without a word)
    #: to admit it, so sockets that connect and say nothing, or trickle bytes, cannot lock out a
    #: good client; a finished handshake is never dropped for this. 64: a real handshake takes
    #: milliseconds, so this many at the very same moment is already a flood; each costs a file
    #: descriptor and at most 64 KiB. A good client that is dropped retries (with backoff).
    max_handshakes: int = 64
    #: Default seconds a ``request`` waits for its reply.
    request_timeout: float = 30.0
    #: Seconds a peer may fall silent in the middle of a frame before its connection is
    #: dropped; all the waiting for one frame is at most this too, plus a second per 64 KiB of
    #: it: a stalled, or trickling, peer cannot hold a slot with half a frame (the time our
    #: own reading is paused, by backpressure, does not count).
    frame_timeout: float = 30.0
    #: Seconds ``aclose``/``disconnect`` spend flushing queued frames before closing anyway.
    close_timeout: float = 5.0
    #: Heartbeats, on both sides of every connection: after this many seconds with nothing
    #: received (or nothing sent) a ``ping`` goes out, which a live peer answers. Any bytes
    #: received count as a sign of life (a peer slowly sending a large frame is alive). ``None``
    #: disables them. 5 s: a few bytes per connection every 5 s cost nothing, and a frozen or
    #: vanished peer is found in ``heartbeat_interval + heartbeat_timeout`` = 20 s, before
    #: ``request_timeout`` (30 s) and far sooner than TCP keepalive (25 s, and never on Unix).
    heartbeat_interval: float | None = 5.0
    #: Seconds after that with still nothing received before the peer is dropped: a server
    #: frees the slot, a connection fails its pending requests with ``ConnectionLostError`` and
    #: reconnects. 15 s tolerates a loop blocked that long; a handler that blocks its event loop
    #: longer (CPU work, a blocking call) cannot answer: run it in a thread
    #: (``anyio.to_thread.run_sync``) or a worker process.
    heartbeat_timeout: float = 15.0
    #: Servers only: seconds a client may send nothing but heartbeats before it is closed,
    #: freeing its slot (a client only listening to broadcasts counts as idle too). ``None``
    #: (default): clients may idle forever, as long as they answer heartbeats.
    idle_timeout: float | None = None
    #: A shared secret (bytes, or str as UTF-8) both sides must know: the handshake then runs a
    #: mutual HMAC-SHA256 challenge-response before any handler runs. It authenticates; it does
    #: not encrypt: across machines, use TLS. ``None``: no shared-key check.
    auth_key: bytes | str | None = field(default=None, repr=False)
    #: Whether a request's error reply carries the handler's traceback (file paths, source
    #: lines) besides the exception's type and message, which always go. ``None`` (default):
    #: only to a peer on a Unix socket that runs as our own user (``SO_PEERCRED``), which could
    #: read our files and memory anyway (a supervisor's children, say); never over TCP, TLS or
    #: UDP, where the peer is whoever reaches the port. ``True``: to every peer; ``False``: never.
    remote_tracebacks: bool | None = None

    def __post_init__(self) -> None:
        # node-ipc's stopRetrying: False means "retry forever", True "never". Mind False == 0.
        if self.stop_retrying is False:
            object.__setattr__(self, "stop_retrying", None)
        elif self.stop_retrying is True:
            object.__setattr__(self, "stop_retrying", 0)
        _check_type("id", self.id, str)
        _check_type("appspace", self.appspace, str)
        if "\0" in self.appspace or "/" in self.appspace:
            # It names the socket file in socket_root: '/' would put it elsewhere.
            raise ConfigError(
                f"appspace is a file name prefix, without NUL or '/', got {shown(self.appspace)}"
            )
        if self.socket_root is not None:
            _check_type("socket_root", self.socket_root, str)
            if "\0" in self.socket_root:
                raise ConfigError(
                    f"socket_root is a path, without NUL, got {shown(self.socket_root)}"
                )
        _check_type("network_host", self.network_host, str)
        if not self.network_host or not is_utf8(self.network_host):
            raise ConfigError(
                f"network_host must be a host name or address, got {shown(self.network_host)}"
            )
        _check_type("silent", self.silent, bool)
        if self.remote_tracebacks is not None:
            _check_type("remote_tracebacks", self.remote_tracebacks, bool)
        _check_int("network_port", self.network_port, 0, 65535)
        _check_int("max_connections", self.max_connections, 1)
        _check_int("max_handshakes", self.max_handshakes, 1)
        if self.slow_consumer not in SLOW_CONSUMER_POLICIES:
            raise ConfigError(
                f"slow_consumer must be one of {', '.join(map(repr, SLOW_CONSUMER_POLICIES))}, "
                f"got {shown(self.slow_consumer)}"
            )
        if self.acked not in ACKED_MODES:
            raise ConfigError(
                f"acked must be one of {', '.join(map(repr, ACKED_MODES))}, got {shown(self.acked)}"
            )
        _check_int("ack_every", self.ack_every, 1)
        _check_int("max_shared_bytes", self.max_shared_bytes, 0)
        if self.max_shared_bytes % 4096:
            raise ConfigError(
                f"max_shared_bytes must be a multiple of the page size (4096), got "
                f"{shown(self.max_shared_bytes)}"
            )
        _check_int("shared_threshold", self.shared_threshold, 1)
        _check_type("shared_copy_on_write", self.shared_copy_on_write, bool)
        if self.stop_retrying is not None:
            _check_int("stop_retrying", self.stop_retrying, 0)
        _check_int("max_frame_size", self.max_frame_size, 1024, 2**32 - 1)
        _check_int("max_outbox_bytes", self.max_outbox_bytes, 1)
        _check_int("max_decoded_objects", self.max_decoded_objects, 1024)
        _check_int("max_inbox_bytes", self.max_inbox_bytes, 1)
        _check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        for name in (
            "retry",
            "retry_cap",
            "handshake_timeout",
            "request_timeout",
            "frame_timeout",
            "close_timeout",
            "heartbeat_timeout",
            "ack_interval",
            "acked_keep",
        ):
            # Kept as the float it is: an int the size of 1e308 overflows the arithmetic on it
            # (a close's deadline), where the float goes to infinity.
            object.__setattr__(self, name, check_seconds(name, getattr(self, name)))
        for name in ("heartbeat_interval", "idle_timeout"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_seconds(name, getattr(self, name)))
        if self.auth_key is not None and (
            not isinstance(self.auth_key, bytes | str)
            or not self.auth_key
            or (isinstance(self.auth_key, str) and not is_utf8(self.auth_key))
        ):
            # (the key itself is never shown: it is a secret)
            raise ConfigError(
                "auth_key must be non-empty bytes or str (text UTF-8 can carry: no lone "
                "surrogate), or None"
            )
        _check_type("codec", self.codec, str)
        codec = self.wire_codec
        if self.auth_key is not None and not codec.handshake:
            raise ConfigError(
                f"auth_key needs a handshake, and the {self.codec!r} codec has none: "
                "unset auth_key, or use codec='msgpack'"
            )
        if self.acked != "off" and not codec.handshake:
            raise ConfigError(
                f"acked={self.acked!r} needs a handshake to negotiate it, and the "
                f"{self.codec!r} codec has none: use acked='off', or codec='msgpack'"
            )
        if self.retry >= _MILLISECONDS_LIKELY:
            raise ConfigError(
                f"retry is in seconds, got {self.retry!r} ({self.retry / 3600:.2g} hours): "
                f"node-ipc's retry is in milliseconds; write retry={self.retry / 1000:g} "
                f"for node-ipc's {self.retry:g} ms"
            )
        if self.retry_cap < self.retry:
            raise ConfigError(f"retry_cap ({self.retry_cap}) must be >= retry ({self.retry})")

    @property
    def wire_codec(self) -> Codec:
        """The codec ``codec`` names, with the options here that shape its wire."""
        check_delimiter(self.node_ipc_delimiter)  # whatever the codec: Config is checked whole
        return codec_named(self.codec).configured(delimiter=self.node_ipc_delimiter)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # through __init__, which checks the names

    @property
    def auth_key_bytes(self) -> bytes | None:
        key = self.auth_key
        return key.encode() if isinstance(key, str) else key

    @property
    def limits(self) -> Limits:
        return _limits(self.max_frame_size, self.max_decoded_objects)


@functools.lru_cache(maxsize=16)
def _limits(max_frame_size: int, max_decoded_objects: int) -> Limits:
    """One :class:`Limits` per pair of settings: every connection asks for them, and making
    the frozen dataclass costs more than looking it up."""
    return Limits(max_frame_size=max_frame_size, max_decoded_objects=max_decoded_objects)


# A first reconnect delay this long (s) is node-ipc's milliseconds (default 500), not a choice.
_MILLISECONDS_LIKELY = 100


def _frozen(self: Config, name: str, value: object) -> None:
    raise dataclasses.FrozenInstanceError(
        f"cannot assign to field {name!r}: a Config is frozen (actors share it); pass the option "
        f"when you create the actor, Actor(id, {name}=...), or derive one with "
        f"config.replace({name}=...)"
    )


# The dataclass's own __setattr__ says only "cannot assign to field": this one says what to do.
Config.__setattr__ = _frozen  # type: ignore[method-assign,assignment]

_OPTIONS = frozenset(f.name for f in dataclasses.fields(Config))
_dataclass_init = Config.__init__


@functools.wraps(_dataclass_init)
def _init(self: Config, **options: Any) -> None:
    # The dataclass's own __init__ says TypeError of an unknown keyword; every way of giving
    # an option (Config, replace, Actor, Supervisor, Pool) says the same ConfigError.
    unknown = options.keys() - _OPTIONS
    if unknown:
        raise ConfigError(f"unknown config option(s): {', '.join(sorted(unknown))}")
    _dataclass_init(self, **options)


Config.__init__ = _init  # type: ignore[method-assign]


def _check_type(name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {shown(value)}")


#: The largest integer a limit may be: one every peer reads (limits travel in the handshake,
#: and msgpack's integers end below 2**64).
_LARGEST_INT: Final = 2**63 - 1


def _check_int(name: str, value: object, low: int, high: int = _LARGEST_INT) -> None:
    if type(value) is not int or not low <= value <= high:
        bound = f"between {low} and {'2**63 - 1' if high == _LARGEST_INT else high}"
        raise ConfigError(f"{name} must be an integer {bound}, got {shown(value)}")


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded (UTF-8, as the wire, IDNA and HMAC keys want): no lone
    surrogate, which ``os.fsdecode`` and ``surrogateescape`` make."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def config_of(config: object, **changes: Any) -> Config:
    """``config`` (``None``: the defaults) with ``changes``: how Actor, BlockingActor and
    Supervisor make theirs. Anything but a :class:`Config` is a :class:`ConfigError`."""
    if config is None:
        config = Config()
    elif not isinstance(config, Config):
        raise ConfigError(
            f"config must be a Config (or None), got {shown(config)}: pass options as "
            "keywords, Actor(id, retry=1.0), or Config(retry=1.0)"
        )
    return config.replace(**changes)


def seconds_of(value: object) -> float | None:
    """``value`` as a float, if it is a number (``bool`` is not) that a float can hold; else
    ``None``. The one way seconds are read: an int past 1.8e308 overflows ``float`` (and
    ``math.isfinite``), which must be a :class:`ConfigError`, not an ``OverflowError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _positive_seconds(value: object) -> float | None:
    """``value`` as float seconds if it is a positive, finite number of them; else ``None``."""
    seconds = seconds_of(value)
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


def check_seconds(name: str, value: object) -> float:
    """``value`` as float seconds; :class:`ConfigError` unless a positive, finite number."""
    seconds = _positive_seconds(value)
    if seconds is None:
        raise ConfigError(f"{name} must be a positive number of seconds, got {shown(value)}")
    return seconds


def request_timeout(timeout: object, config: Config) -> float:
    """A request's ``timeout`` argument, checked: ``None`` means ``config.request_timeout``;
    anything but a positive, finite number of seconds is a :class:`ConfigError`."""
    if timeout is None:
        return config.request_timeout
    seconds = _positive_seconds(timeout)
    if seconds is None:
        raise ConfigError(
            "timeout must be a positive, finite number of seconds (or None for "
            f"Config.request_timeout, {config.request_timeout} s), got {shown(timeout)}"
        )
    return seconds


def shown(value: object, width: int = 40) -> str:
    """``repr(value)`` for an error message, cut to ``width``; a long int by its size (its
    digits say nothing, and ``repr`` refuses more than 4300 of them)."""
    if type(value) is int and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # (a container holding such an int)
        return f"a {type(value).__name__} holding an int of too many bits to show"
    return text if len(text) <= width else text[: width - 3] + "..."
