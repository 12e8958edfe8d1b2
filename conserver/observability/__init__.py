"""What operators see of conserver.

- ``logging``: log lines, text or JSON, reopened on SIGUSR1.
- ``titles``: process titles for ``ps``.
- ``systemd``: the notify protocol (READY, WATCHDOG, STOPPING).
- ``metrics``: Prometheus only: what each worker writes (multiprocess mode), the monitor's
  aggregation with live gauges fed through ``LiveInputs``, the metrics log line. Imports
  nothing else of conserver.
- ``status``: the status report (``/status.json``, ``conserver status``) and its HTML page;
  the one module that knows the shared-memory board's slots.

The monitor process that serves them over HTTP is ``conserver.tasks.monitor``.
"""
