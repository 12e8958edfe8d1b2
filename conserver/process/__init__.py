"""Process management: the supervisor (main process) and the worker processes it starts.

- ``supervisor``: the signal loop, drain, reload; each turn compares what runs with what is wanted.
- ``pools``: what is wanted: the pools and how many processes each (TTIN/TTOU, autoscale).
- ``table``: what runs: one handle per child, the board slot it holds, reaping.
- ``restarts``: when a dead worker may start again (backoff) and when deaths are a crash loop.
- ``environment``: the one seam to the system: clocks, process creation, signals, waiting.
- ``board``: the shared-memory board where workers report state, heartbeat and current job.
- ``worker``: one worker process: initialize, loop, shutdown around a pluggable task.

Imports go one way: supervisor → pools, table, restarts, environment → worker → board.
A worker process imports nothing of the supervisor's rooms; the supervisor imports no
store and no queue module (its task class gives a dead worker's claims back).
"""
