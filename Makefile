# oomguard developer entry points. `make test` is the README's test command and what CI runs.
SHELL := /bin/bash
# Resolve the real interpreter: a pyenv shim costs ~4 s per start inside the TCG guest.
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test unit kernel lint bench demo vm install

install:
	$(PYTHON) -m pip install -q -e '.[dev,metrics]'

## Unit tests on the host, then the real-kernel tests (natively if the host has a cgroup2 memory
## controller, else in the QEMU guest). Fails if the real-kernel tests could not run.
test: unit kernel

unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests --ignore=tests/kernel

kernel:
	$(PYTHON) tools/ktest.py $(KTEST_ARGS)

lint:
	$(PYTHON) -m ruff check oomguard tests tools
	$(PYTHON) -m ruff format --check oomguard tests tools
	$(PYTHON) -m mypy --strict oomguard

bench:
	$(PYTHON) tools/bench.py

demo:
	$(PYTHON) tools/demo.py

## Run any command in the throwaway guest: make vm CMD='cat /proc/self/cgroup'
vm:
	$(PYTHON) tools/vmrun.py -- $(or $(CMD),sh -c 'cat /sys/fs/cgroup/cgroup.controllers; uname -r')
