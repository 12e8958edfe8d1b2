# syntax=docker/dockerfile:1
#
# conserver image: docker build -t conserver .
# Runs `conserver run` (the prefork supervisor) as an unprivileged user; the
# supervisor serves /metrics, /healthz, /readyz and /status on port 9600.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/conserver
WORKDIR /src
COPY . .
RUN /opt/conserver/bin/pip install . \
 && /opt/conserver/bin/python -c "import conserver" \
 && test -x /opt/conserver/bin/conserver

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="conserver" \
      org.opencontainers.image.description="Prefork supervisor moving vCons from Redis into PostgreSQL, S3 and Elasticsearch"

# Numeric UID/GID so Kubernetes runAsNonRoot can verify the user without /etc/passwd.
RUN groupadd --system --gid 10001 conserver \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/conserver \
      --create-home --shell /usr/sbin/nologin conserver

COPY --from=build /opt/conserver /opt/conserver

# conserver's own defaults are metrics off (port 0) on 127.0.0.1; in a container the
# probes and Prometheus come from outside, so serve them on every interface.
ENV PATH=/opt/conserver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONSERVER_METRICS_PORT=9600 \
    CONSERVER_METRICS_HOST=0.0.0.0

USER 10001:10001
WORKDIR /var/lib/conserver
EXPOSE 9600

# Liveness of the main process (not of Redis or the stores; that is /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CONSERVER_METRICS_PORT', '9600'), timeout=4)"]

# The supervisor drains on SIGTERM (CONSERVER_GRACEFUL_TIMEOUT, default 25 s);
# give it more than that: docker stop -t 40 / compose stop_grace_period: 40s.
STOPSIGNAL SIGTERM
# Exec form, no shell in between: the supervisor is PID 1 and gets SIGTERM itself.
CMD ["conserver", "run"]
