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

.PHONY: install up down status test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# Initialise the home on first launch, start supervisord, wait until every process is
# registered and healthy. Exit 0 only when healthy; harmless on a running mesh.
up: $(STAMP)
	@$(MESHCTL) init --if-needed
	@$(MESHCTL) up

# Stop supervisord and every process of the home; nothing is left behind.
down:
	@if [ -x "$(PY)" ]; then $(MESHCTL) down; else echo "nothing to stop: $(VENV) does not exist"; fi

status: $(STAMP)
	@$(MESHCTL) status

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tools tests bench
	$(VENV)/bin/mypy shared

bench: $(STAMP)
	$(PY) -m bench

# The mesh runs on the venv's interpreter: stop it before removing the venv. The home
# (./var: keys and data) is never removed here.
clean: down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
