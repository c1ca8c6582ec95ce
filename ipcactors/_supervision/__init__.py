"""Supervision: the Supervisor, its restart policy, the forkserver that forks children, the child
side that runs a target, and the relay of the children's output.

Invariant: only this package starts, signals or reaps processes; only ``_forkserver`` forks.
"""
