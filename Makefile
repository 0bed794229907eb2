# orchestrate: `make up` brings the dev environment up on the embedded local fleet,
# `make test` runs the whole suite. Both are idempotent and work as root on a fresh machine.
# `make check` is the fast loop before a commit: linters and unit tests, no root, no hosts.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ORCHESTRATE := $(BIN)/orchestrate
export PATH := $(CURDIR)/$(BIN):$(HOME)/.cargo/bin:/usr/local/bin:/usr/sbin:/sbin:$(PATH)

# Debian packages the tool and its tests need on the controller.
DEB_PACKAGES := systemd-container debootstrap iproute2 openssh-client rsync curl \
                prometheus prometheus-alertmanager prometheus-blackbox-exporter haproxy strace
DEB_STAMP := $(VENV)/.debs-$(shell echo $(DEB_PACKAGES) | sha256sum | cut -c1-12)
PY_STAMP := $(VENV)/.installed
# checkov (the checkov release gate) pins versions that conflict with ansible-core's and boto3's:
# it gets a venv of its own, its program linked into $(BIN); the version is pyproject.toml's
# optional dependency group `checkov`
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
EXAMPLE := examples/hello-service
EXAMPLE_BIN := $(EXAMPLE)/target/release/hello-service
# dev's vault password is public on purpose (inventories/dev/.vault-password-dev); never for prod
DEV_VAULT := $(CURDIR)/inventories/dev/.vault-password-dev
HEAL_LISTEN := 127.0.0.1:9095

.PHONY: help up test check deps debs venv image example lint typecheck pytest bench verify down clean

help:
	@echo "make up     install what is needed, build the example service, orchestrate up dev"
	@echo "make test   ruff, mypy and the whole pytest suite (unit, integration, e2e)"
	@echo "make check  ruff, mypy and the unit tests only: fast, no root, no hosts (needs .venv)"
	@echo "make bench  benchmarks (bench/), figures printed and written to bench/results/"
	@echo "make down   destroy the dev fleet"

deps: debs venv

# the local hosts' image (debootstrap once, cached under /var/cache/orchestrate)
image: deps
	$(BIN)/python -m orchestrator.fleet.local build-image

debs: $(DEB_STAMP)
$(DEB_STAMP):
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

# The package's bytecode is compiled ahead: with PYTHONDONTWRITEBYTECODE set (as on CI machines)
# Python never writes it, and every `orchestrate` call would compile its modules again (~0.2 s
# of each call's start). Up-to-date files are skipped, so this costs nothing when nothing changed.
venv: $(PY_STAMP) $(CHECKOV_STAMP)
	@$(BIN)/python -m compileall -q orchestrator
$(PY_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

$(CHECKOV_STAMP): pyproject.toml $(PY_STAMP)
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q $$($(BIN)/python -c 'import tomllib; \
	  print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["checkov"]))')
	ln -sfn ../checkov/bin/checkov $(BIN)/checkov
	@touch $@

example: $(EXAMPLE_BIN)
$(EXAMPLE_BIN): $(shell find $(EXAMPLE)/src -name '*.rs' 2>/dev/null) $(EXAMPLE)/Cargo.toml
	cargo build --release --offline --manifest-path $(EXAMPLE)/Cargo.toml
	@touch $@

up: deps example image
	$(ORCHESTRATE) validate dev
	ORCHESTRATE_VAULT_PASSWORD_FILE=$(DEV_VAULT) $(ORCHESTRATE) up dev --yes --release $(EXAMPLE)
	@curl -sf http://$(HEAL_LISTEN)/healthz >/dev/null 2>&1 || { \
	  echo "starting the heal server for dev on $(HEAL_LISTEN) (log: .orchestrate/dev/heal.log)"; \
	  setsid $(ORCHESTRATE) heal serve dev >>.orchestrate/dev/heal.log 2>&1 </dev/null & sleep 1; }
	$(ORCHESTRATE) status dev

down: venv
	-@test -f .orchestrate/dev/heal.json && kill $$($(BIN)/python -c 'import json;print(json.load(open(".orchestrate/dev/heal.json"))["pid"])') 2>/dev/null || true
	$(ORCHESTRATE) destroy dev --yes

lint: venv
	$(BIN)/ruff check orchestrator tests bench

typecheck: venv
	$(BIN)/mypy orchestrator

# every static check for every environment under inventories/ (a new one is picked up by itself);
# all of them run, and the target fails when any environment failed
verify: venv
	@status=0; for file in inventories/*/environment.yml; do \
	  env=$$(basename "$$(dirname "$$file")"); \
	  $(ORCHESTRATE) verify "$$env" || status=1; \
	done; exit $$status

# Test files run in parallel (one file per worker, in file order): most of the suite waits on
# hosts, terraform and health gates rather than on the CPU. pytest-xdist hands out the files with
# the most tests first: the long few-test files on real hosts then overlap with short ones. Handing
# the longest out first was measured slower (docs/testing.md): three fleets at once contend for
# the CPUs.
PYTEST_WORKERS ?= 3

pytest: deps image
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25

test: deps lint typecheck pytest

# The fast loop: the same linters and tests/unit, nothing that needs root, hosts or Debian
# packages. It uses the venv as it is (make venv creates it) and never installs anything, so it
# also works for a user who cannot write to the venv.
check:
	@test -x $(BIN)/pytest || { echo "no $(VENV)/: run 'make venv' first" >&2; exit 2; }
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy orchestrator
	$(BIN)/pytest -q tests/unit

bench: deps example image
	$(BIN)/python bench/run.py

clean:
	rm -rf .orchestrate/*/runs .mypy_cache .ruff_cache .pytest_cache
