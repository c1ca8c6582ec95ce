"""The ipcactors benchmark suite: ``python -m benchmarks [--quick]`` (or ``make bench``).

It runs every workload of the benchmark issue (W1 ping-pong latency, W2 small-event throughput,
W3 1 MiB payloads, W4 broadcast to 8 processes, W5 connect + first reply, W6 spawn-to-ready,
memory per idle connection and under a slow consumer) for ipcactors on asyncio, asyncio+uvloop
and trio, for raw anyio streams + msgpack (the floor) and for node-ipc 9.2.1 in Node.js (the
seed), each cell in real server and client processes, and reports medians of several rounds as
ratios against both anchors measured in the same run. See docs/performance.md.
"""
