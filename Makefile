# curvemesh: `make up` starts the mesh, `make test` runs the suite (README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.curvemesh-installed
# The mesh's home for up/down/status: keys, certificates, sockets, logs, data.
# Set CURVEMESH_HOME to run another mesh beside this one.
CURVEMESH_HOME ?= $(CURDIR)/var
MESHCTL = CURVEMESH_HOME="$(CURVEMESH_HOME)" $(PY) -m tools.meshctl_cli

# What the machine needs outside PyPI (system packages) is listed in one place,
# tools/host-deps: as root it installs what is missing, otherwise it names the command.
HOST_DEPS = PYTHON="$(PYTHON)" PY="$(PY)" tools/host-deps

.PHONY: install native up down status test host-test lint bench clean

# The host check must finish before the venv is created or the suite runs: no parallel recipes.
.NOTPARALLEL:

# Every target that creates the venv first makes sure the host can (a Python 3.11+ with
# its venv module; Debian ships that module in python3-venv).
$(PY):
	@$(HOST_DEPS) up
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The key-value entry formats compiled with mypyc, beside their sources (tools/build_native.py,
# docs/storage.md): built when missing or stale, a check of a few milliseconds otherwise. Without a C
# compiler it says so and the formats run from their sources, slower.
native: $(STAMP)
	@$(PY) -m tools.build_native

# Initialise the home on first launch, start supervisord, wait until every process is
# registered and healthy. Exit 0 only when healthy; harmless on a running mesh.
up: $(STAMP) native
	@$(MESHCTL) init --if-needed
	@$(MESHCTL) up

# Stop supervisord and every process of the home; nothing is left behind. `make down` is
# the request itself, so meshctl is not asked to confirm it again (--yes).
down:
	@if [ -x "$(PY)" ]; then $(MESHCTL) down --yes; else echo "nothing to stop: $(VENV) does not exist"; fi

status: $(STAMP)
	@$(MESHCTL) status

# The suite also needs system tools (dbus-daemon and gnome-keyring-daemon for a real
# Secret Service, make): checked, and installed as root, before the venv and before pytest,
# so that a fresh machine needs one apt-get update at most.
host-test:
	@$(HOST_DEPS) test

test: host-test $(STAMP) native
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tools tests bench examples
	$(VENV)/bin/mypy shared

bench: $(STAMP) native
	$(PY) -m bench

# The mesh runs on the venv's interpreter: stop it before removing the venv. The home
# (./var: keys and data) is never removed here.
clean: down
	@if [ -x "$(PY)" ]; then $(PY) -m tools.build_native --clean; fi
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
