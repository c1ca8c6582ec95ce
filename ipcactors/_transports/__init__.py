"""The transport layer: Unix, TCP and TLS listeners and connectors, and the byte streams they give.

Invariant: the layers above never branch on the transport kind, and every difference between the
event-loop backends that touches a socket stays in this package (``_streams`` is asyncio's fast
path).
"""
