"""The messaging core: one live peer's channel, the outbox, requests, handlers, and the Server,
Connection and datagram endpoints built on them.

Invariant: imports only from ``_proto``, ``_transports`` and the shared top-level modules
(``_config``, ``_errors``, ``_log``), never from ``_supervision`` or ``_actor``.
"""
