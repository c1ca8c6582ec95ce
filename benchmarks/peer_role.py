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

from collections.abc import Callable
from typing import Any

import msgpack

from ._wire import MAX_EVENTS, exit_now, now, parse_args, payload, say

Send = Callable[[bytes], Any]
Receive = Callable[[], bytes]


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

    def serve(self, config: dict[str, Any], handle: Callable[[Any, Send], None]) -> None:
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
            handle(unpackb(body), lambda data, i=identity: sock.send_multipart([i, data]))

    def connect(self, config: dict[str, Any]) -> tuple[Send, Receive, Callable[[], None]]:
        sock = self.context.socket(self.zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint(config))
        return sock.send, sock.recv, sock.close


class Mpc:
    def __init__(self) -> None:
        from multiprocessing import connection

        self.connection = connection

    def serve(self, config: dict[str, Any], handle: Callable[[Any, Send], None]) -> None:
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
                    handle(unpackb(conn.recv_bytes()), conn.send_bytes)
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
    """Answers ``ping``, counts ``ev``, answers ``fin`` with the count (per connection)."""
    pack = msgpack.Packer().pack
    count = 0

    def handle(message: Any, reply: Send) -> None:
        nonlocal count
        kind, value = message
        if kind == "ev":
            count += 1
        elif kind == "ping":
            reply(pack(["pong", value]))
        elif kind == "fin":
            reply(pack(["done", count]))
            count = 0

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
    """W2: one ``send`` per event for a while, then ``fin``; the server's count ends a round."""
    data = payload(config)
    check = 1 if config.get("payload_bytes") else 100
    send, receive, close = peer.connect(config)
    pack = msgpack.Packer().pack
    rounds = []
    for index in range(config["rounds"] + 1):
        seconds = config["warmup"] if index == 0 else config["seconds"]
        sent = 0
        start = now()
        end = start + seconds
        while sent < MAX_EVENTS:
            for _ in range(check):
                send(pack(["ev", data]))
            sent += check
            if now() >= end:
                break
        send(pack(["fin", None]))
        _, count = msgpack.unpackb(receive())
        elapsed = now() - start
        if count != sent:
            raise RuntimeError(f"server counted {count} events, {sent} were sent")
        if index:
            rounds.append({"count": sent, "seconds": elapsed})
    say("result", rounds=rounds)
    close()


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
