"""What a worker process runs: one task class per kind of process.

- ``pipeline``: claim vCons, run their chain (links, stores), acknowledge.
- ``scheduler``: move due retries back, sweep orphaned claims (under a leader lock).
- ``monitor``: metrics, health and the status page over HTTP; autoscaling decisions.
"""
