# The two commands of the README: `make run` (the main job on a local stack) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test bench clean

# System packages (redis-server, postgresql, chromium) and the virtualenv, idempotently.
$(STAMP): setup.cfg pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,test]'
	touch $(STAMP)

setup: $(STAMP)

# Start private redis, PostgreSQL, SeaweedFS (S3) and osmem (OpenSearch API), run the
# supervisor, enqueue sample vCons and show where they landed. Ctrl-C stops everything.
run: setup
	$(VENV)/bin/conserver demo

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# The peers (RQ, Celery, Dramatiq, Huey) and matplotlib are only for the benchmarks.
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks all

clean:
	rm -rf $(VENV) .state build *.egg-info
