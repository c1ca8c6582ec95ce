"""The protocol layer: messages, their encoding and the limits on what a peer may send.

Invariant: nothing here does I/O or imports from the layers above (``_transports``, ``_core``,
``_supervision``); it takes bytes and returns messages, or raises a typed error.
"""
