"""What operators see of conserver.

- ``logging``: log lines, text or JSON, reopened on SIGUSR1.
- ``titles``: process titles for ``ps``.
- ``systemd``: the notify protocol (READY, WATCHDOG, STOPPING).
- ``metrics``: Prometheus metrics (multiprocess mode) and their aggregation.
- ``status``: the status report and the HTML page the monitor serves.
"""
