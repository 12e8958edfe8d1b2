"""Process management: the supervisor (main process) and the worker processes it starts.

- ``supervisor``: the process table, the signal loop, restarts, drain and reload.
- ``board``: the shared-memory board where workers report state, heartbeat and current job.
- ``worker``: one worker process: initialize, loop, shutdown around a pluggable task.
"""
