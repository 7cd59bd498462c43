# `make dev` and `make test` install what is missing (a virtualenv in .venv with
# the package and its test extras), then do their job.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install dev test bench bench-tools lint serve migrate clean deploy-tools verify-deploy schemathesis

install: $(INSTALLED)

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "relay needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $@

dev: $(INSTALLED)
	$(BIN)/relay dev

# One pytest worker per core (pytest-xdist), each with its own PostgreSQL and Redis.
TEST_WORKERS ?= auto
test: $(INSTALLED) deploy-tools bench-tools
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: $(INSTALLED) bench-tools
	$(BIN)/python -m bench $(BENCH_ARGS)

# wrk drives the non-streamed phases; without it the bench falls back to a slower Python client.
# valgrind (callgrind) counts instructions per request; without it that phase is skipped
# (and the bench's smoke test in `make test` fails).
SUDO := $$( [ "$$(id -u)" = 0 ] || echo sudo )
bench-tools:
	@command -v wrk >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq wrk >/dev/null || \
		echo "wrk could not be installed; using the Python load generator" >&2
	@command -v callgrind_control >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq valgrind >/dev/null \
		|| echo "valgrind could not be installed; instructions are not counted" >&2

# The deployment checks (tests/test_deploy.py) need systemd-analyze, a compose
# client and nginx; install them from Debian when missing (with sudo unless root).
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
APT_UPDATE := $(SUDO) apt-get update -qq
deploy-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || $(APT_INSTALL) systemd \
		|| { $(APT_UPDATE) && $(APT_INSTALL) systemd; }
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 \
		|| $(APT_INSTALL) docker-compose || { $(APT_UPDATE) && $(APT_INSTALL) docker-compose; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || $(APT_INSTALL) nginx-light \
		|| { $(APT_UPDATE) && $(APT_INSTALL) nginx-light; }

verify-deploy: $(INSTALLED) deploy-tools
	$(BIN)/pytest -q tests/test_deploy.py

# A longer schemathesis run than `make test` does: no 5xx for any generated request.
schemathesis: $(INSTALLED)
	RELAY_SCHEMATHESIS_EXAMPLES=$${RELAY_SCHEMATHESIS_EXAMPLES:-200} \
	RELAY_SCHEMATHESIS_PHASES=$${RELAY_SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful} \
		$(BIN)/pytest -q tests/test_schemathesis.py

lint: $(INSTALLED)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench
	$(BIN)/mypy relay

clean:
	rm -rf $(VENV) .dev .pytest_cache
