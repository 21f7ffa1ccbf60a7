# One entry point for people and CI alike. Every target is idempotent.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DURATION ?= 120

.PHONY: install demo test services lint fmt bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,demo,sim,openadr,agent,oracle]'
	@touch $(STAMP)

demo: install
	$(BIN)/rheostat demo --duration $(DEMO_DURATION)

# Real services for the tests come from Debian packages; install only those whose binaries are absent:
# Mosquitto, Prometheus (promtool), openssl (test certificates), etcd (leader election), Slurm and
# munge (scheduler job reports) and Chromium (the report page, checked in a real headless browser).
services:
	@missing=""; \
	test -x /usr/sbin/mosquitto || command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v etcd >/dev/null || test -x /usr/bin/etcd || missing="$$missing etcd-server etcd-client"; \
	command -v slurmctld >/dev/null || test -x /usr/sbin/slurmctld || missing="$$missing slurmctld slurm-client"; \
	command -v slurmd >/dev/null || test -x /usr/sbin/slurmd || missing="$$missing slurmd"; \
	command -v munged >/dev/null || test -x /usr/sbin/munged || missing="$$missing munge"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install services lint
	$(BIN)/python -m pytest

bench: install services
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
