"""What operators see of conserver.

- ``logging``: log lines, text or JSON, reopened on SIGUSR1; ``untrusted``, the one escaping
  helper for input that reaches a log line or a page.
- ``titles``: process titles for ``ps``.
- ``systemd``: the notify protocol (READY, WATCHDOG, STOPPING).
- ``metrics``: Prometheus only: what each worker writes (multiprocess mode), the monitor's
  aggregation with live gauges fed through ``LiveInputs``, the metrics log line. Imports
  nothing else of conserver.
- ``status``: the status report (``/status.json``, ``conserver status``), bounded; the one
  module that knows the shared-memory board's slots.
- ``history``: the last 15 minutes of rates, backlog, latency, store/link times and breakers,
  a bounded ring the monitor samples (``/status/history.json``).
- ``page``: the status page's HTML; ``static/`` its script, styles and the vendored uPlot (MIT).
- ``dead_letters``: the dead-letter pages and their token-guarded actions (requeue, purge).

The monitor process that serves them over HTTP is ``conserver.tasks.monitor``.
"""
