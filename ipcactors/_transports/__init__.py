"""The transport layer: Unix, TCP and TLS listeners and connectors, UDP endpoints, the byte streams
they give, and every difference between the event-loop backends.

Invariants: the layers above never branch on the transport kind and see no socket object (they
get anyio byte streams and datagram endpoints); every difference between the event-loop backends
stays in this package (``_backend``; ``_asyncio`` is the fast path for sockets). It
imports only ``_proto`` and the shared top-level modules, never the layers above.
"""
