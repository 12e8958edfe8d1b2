#!/usr/bin/env bash
# System set-up for a clean Debian machine, run as root by the Makefile before the
# virtualenv is built. Idempotent, and instant when everything is there already.
#
# Installs the server binaries that conserver/devstack.py starts as private
# instances for tests and `conserver dev` (the system services are not needed):
#   redis-server  /usr/bin/redis-server
#   postgresql    initdb + postgres under /usr/lib/postgresql/<version>/bin
#   prometheus    for promtool only: the tests check deploy/prometheus/alerts.yml with it
#                 (the Prometheus server the package also brings is stopped and disabled)
#   chromium      for the browser test; optional, a failure only warns
set -euo pipefail

have_redis()    { command -v redis-server >/dev/null; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || command -v postgres >/dev/null; }
have_promtool() { command -v promtool >/dev/null; }
have_chromium() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }

required=()
have_redis || required+=(redis-server)
have_postgres || required+=(postgresql)
have_promtool || required+=(prometheus)
optional=()
have_chromium || optional+=(chromium)

missing=("${required[@]}" "${optional[@]}")
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    if [ ${#required[@]} -gt 0 ]; then
        exit 1
    fi
    echo "bootstrap: (chromium is only needed for the browser test; continuing without it)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "bootstrap: installing ${missing[*]}"
apt-get update -qq
if [ ${#required[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${required[@]}"
fi
# Debian enables (and, where systemd runs, starts) the server of the package: only
# promtool is wanted, so nothing of it keeps running or starts at boot.
if [[ " ${required[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable prometheus.service >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
        systemctl stop prometheus.service >/dev/null 2>&1 || true
    fi
fi
if [ ${#optional[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends chromium ||
        echo "bootstrap: warning: could not install chromium (only the browser test needs it)" >&2
fi
