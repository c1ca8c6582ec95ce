"""Supervision: the Supervisor, its restart policy, the launchers that start children (the local
forkserver, and one over SSH per remote host), the child side that runs a target, and the relay
of the children's output.

Invariant: only this package starts, signals or reaps processes; only ``_forkserver`` forks.
"""
