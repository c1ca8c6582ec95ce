"""The Python peers a user might pick instead of ipcactors, as anchors for W1, W2 and W5:
``python -m benchmarks.peer_role ROLE CONFIG_JSON`` with ``config["peer"]`` one of

- ``zmq``: pyzmq, a ROUTER server and DEALER clients over ``ipc://`` (or ``tcp://``), one
  msgpack body per message (an optional benchmark dependency: ``pip install '.[bench]'``);
- ``mpc``: ``multiprocessing.connection`` over AF_UNIX (or AF_INET), ``send_bytes`` /
  ``recv_bytes`` of msgpack bodies, no authkey; the server serves one connection at a time.

Both are written the way their users write them: blocking calls in one thread, one ``send`` per
message. Messages are ``[kind, data]`` arrays, as in the raw anyio roles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack

from ._wire import (
    MAX_EVENTS,
    SMALL_EVENT,
    exit_now,
    now,
    parse_args,
    payload,
    say,
    wait_for_start_blocking,
)

Send = Callable[[bytes], Any]
Receive = Callable[[], bytes]
Handle = Callable[[Any, Send, Any], None]  # (message, reply, the connection's key)


# --- the two peers ----------------------------------------------------------------------------


class Zmq:
    def __init__(self) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()

    def endpoint(self, config: dict[str, Any]) -> str:
        if config["transport"] == "tcp":
            return f"tcp://127.0.0.1:{config['port']}"
        return f"ipc://{config['path']}"

    def serve(self, config: dict[str, Any], handle: Handle) -> None:
        sock = self.context.socket(self.zmq.ROUTER)
        if config["transport"] == "tcp":
            say("ready", port=sock.bind_to_random_port("tcp://127.0.0.1"))
        else:
            path = f"{config['dir']}/zmq.world"
            sock.bind(f"ipc://{path}")
            say("ready", path=path)
        unpackb = msgpack.unpackb
        while True:
            identity, body = sock.recv_multipart()
            handle(unpackb(body), lambda data, i=identity: sock.send_multipart([i, data]), identity)

    def connect(self, config: dict[str, Any]) -> tuple[Send, Receive, Callable[[], None]]:
        sock = self.context.socket(self.zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint(config))
        return sock.send, sock.recv, sock.close


class Mpc:
    def __init__(self) -> None:
        from multiprocessing import connection

        self.connection = connection

    def serve(self, config: dict[str, Any], handle: Handle) -> None:
        if config["transport"] == "tcp":
            listener = self.connection.Listener(("127.0.0.1", 0), "AF_INET")
            say("ready", port=listener.address[1])
        else:
            path = f"{config['dir']}/mpc.world"
            listener = self.connection.Listener(path, "AF_UNIX")
            say("ready", path=path)
        unpackb = msgpack.unpackb
        while True:
            conn = listener.accept()
            try:
                while True:
                    handle(unpackb(conn.recv_bytes()), conn.send_bytes, None)
            except (EOFError, OSError):
                pass
            finally:
                conn.close()

    def connect(self, config: dict[str, Any]) -> tuple[Send, Receive, Callable[[], None]]:
        if config["transport"] == "tcp":
            conn = self.connection.Client(("127.0.0.1", config["port"]), "AF_INET")
        else:
            conn = self.connection.Client(config["path"], "AF_UNIX")
        return conn.send_bytes, conn.recv_bytes, conn.close


PEERS: dict[str, Callable[[], Zmq | Mpc]] = {"zmq": Zmq, "mpc": Mpc}


# --- roles ------------------------------------------------------------------------------------


def server(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    """Answers ``ping``, counts ``ev``, answers ``fin`` with the count (per connection: the
    fan-in curve's clients emit at once)."""
    pack = msgpack.Packer().pack
    counts: dict[Any, int] = {}

    def handle(message: Any, reply: Send, key: Any) -> None:
        kind, value = message
        if kind == "ev":
            counts[key] = counts.get(key, 0) + 1
        elif kind == "ping":
            reply(pack(["pong", value]))
        elif kind == "fin":
            reply(pack(["done", counts.pop(key, 0)]))

    peer.serve(config, handle)


def client_w1(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    send, receive, close = peer.connect(config)
    pack = msgpack.Packer().pack
    for i in range(config["warmup_iterations"]):
        send(pack(["ping", i]))
        receive()
    rounds = []
    for _ in range(config["rounds"]):
        samples = []
        end = now() + config["seconds"]
        for i in range(config["max_iterations"]):
            start = now()
            send(pack(["ping", i]))
            receive()
            stop = now()
            samples.append(round((stop - start) * 1e6, 2))
            if stop >= end:
                break
        rounds.append({"samples_us": samples})
    say("result", rounds=rounds)
    close()


def client_stream(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    """W2: one ``send`` per event for a while, then ``fin``; the server's count ends a round.
    The fan-in curve runs ``connections`` of them in this thread, a batch on each in turn."""
    data = payload(config)
    check = 1 if config.get("payload_bytes") else 100
    limit = config.get("max_events", MAX_EVENTS)  # fan-in: a share of one budget
    conns = [peer.connect(config) for _ in range(config.get("connections", 1))]
    wait_for_start_blocking(config)
    pack = msgpack.Packer().pack
    rounds = []
    for index in range(config["rounds"] + 1):
        seconds = config["warmup"] if index == 0 else config["seconds"]
        sent = 0
        start = now()
        end = start + seconds
        while sent < limit:
            for send, _, _ in conns:
                for _ in range(check):
                    send(pack(["ev", data]))
            sent += check
            if now() >= end:
                break
        for send, _, _ in conns:
            send(pack(["fin", None]))
        for _, receive, _ in conns:
            _, count = msgpack.unpackb(receive())
            if count != sent:
                raise RuntimeError(f"server counted {count} events, {sent} were sent")
        elapsed = now() - start
        if index:
            rounds.append({"count": sent * len(conns), "seconds": elapsed})
    say("result", rounds=rounds)
    for _, _, close in conns:
        close()


def server_w4(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    """The fan-out curve's pyzmq server, broadcasting as its users do: an XPUB socket (its
    subscriptions tell when every client has joined; SNDHWM 0, so nothing is dropped, as in the
    other implementations), and a PULL socket for the clients' ``done`` counts."""
    assert isinstance(peer, Zmq), "the fan-out curve has no multiprocessing.connection anchor"
    zmq, clients = peer.zmq, config["clients"]
    publisher = peer.context.socket(zmq.XPUB)
    publisher.sndhwm = 0
    publisher.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only the first
    counts = peer.context.socket(zmq.PULL)
    if config["transport"] == "tcp":
        port = publisher.bind_to_random_port("tcp://127.0.0.1")
        say("ready", port=port, done_port=counts.bind_to_random_port("tcp://127.0.0.1"))
    else:
        path, done_path = f"{config['dir']}/zmq.world", f"{config['dir']}/zmq.done"
        publisher.bind(f"ipc://{path}")
        counts.bind(f"ipc://{done_path}")
        say("ready", path=path, done_path=done_path)
    joined, give_up = 0, now() + config["deadline"] / 2
    while joined < clients:
        if now() > give_up or not publisher.poll(1000):
            raise RuntimeError(f"{joined} of {clients} clients subscribed")
        joined += publisher.recv()[:1] == b"\x01"
    pack = msgpack.Packer().pack
    rounds = []
    for index in range(config["rounds"] + 1):
        seconds = config["warmup"] if index == 0 else config["seconds"]
        sent = 0
        start = now()
        end = start + seconds
        while sent < MAX_EVENTS:
            for _ in range(100):
                publisher.send(pack(["ev", SMALL_EVENT]))
            sent += 100
            if now() >= end:
                break
        publisher.send(pack(["fin", None]))
        total = 0
        for _ in range(clients):
            if not counts.poll(config["deadline"] * 1000):
                raise RuntimeError("a client never answered fin")
            total += msgpack.unpackb(counts.recv())
        elapsed = now() - start
        if index:
            rounds.append({"count": total, "sent": sent * clients, "seconds": elapsed})
    say("result", rounds=rounds)
    publisher.send(pack(["bye", None]))
    time.sleep(0.2)


def client_w4(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    """The fan-out curve's pyzmq receivers of one process (``connections`` SUB sockets, polled
    together): count ``ev``, answer ``fin`` with the count on a PUSH socket."""
    assert isinstance(peer, Zmq), "the fan-out curve has no multiprocessing.connection anchor"
    zmq = peer.zmq
    tcp = config["transport"] == "tcp"
    poller = zmq.Poller()
    receivers: dict[Any, list[Any]] = {}  # SUB socket -> [its PUSH socket, its count]
    for _ in range(config.get("connections", 1)):
        sub = peer.context.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(f"tcp://127.0.0.1:{config['port']}" if tcp else f"ipc://{config['path']}")
        push = peer.context.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(
            f"tcp://127.0.0.1:{config['done_port']}" if tcp else f"ipc://{config['done_path']}"
        )
        poller.register(sub, zmq.POLLIN)
        receivers[sub] = [push, 0]
    say("ready")
    unpackb, pack = msgpack.unpackb, msgpack.Packer().pack
    deadline = now() + config["deadline"]
    while now() < deadline:
        for sub, _ in poller.poll(1000):
            receiver = receivers[sub]
            for _ in range(1000):  # what is queued, then the next poll
                try:
                    kind, _ = unpackb(sub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if kind == "ev":
                    receiver[1] += 1
                elif kind == "fin":
                    receiver[0].send(pack(receiver[1]))
                    receiver[1] = 0
                elif kind == "bye":
                    return


def client_w5(peer: Zmq | Mpc, config: dict[str, Any]) -> None:
    """A new connection each time (pyzmq: a new socket of the process's one context)."""
    pack = msgpack.Packer().pack
    rounds = []
    for index in range(config["rounds"] + 1):
        iterations = config["warmup_iterations"] if index == 0 else config["max_iterations"]
        samples = []
        end = now() + config["seconds"]
        for _ in range(iterations):
            start = now()
            send, receive, close = peer.connect(config)
            send(pack(["ping", 1]))
            receive()
            stop = now()
            close()
            samples.append(round((stop - start) * 1e6, 2))
            if stop >= end:
                break
        if index:
            rounds.append({"samples_us": samples})
    say("result", rounds=rounds)


ROLES = {
    "server": server,
    "client-w1": client_w1,
    "client-stream": client_stream,
    "client-w5": client_w5,
    "server-w4": server_w4,
    "client-w4": client_w4,
}


def main() -> None:
    role, config = parse_args()
    try:
        peer = PEERS[config["peer"]]()
    except ImportError as exc:
        say("unavailable", reason=f"{exc} (pip install '.[bench]')")
        exit_now()
    ROLES[role](peer, config)
    exit_now()  # a pyzmq context would wait for its sockets' linger otherwise


if __name__ == "__main__":
    main()
