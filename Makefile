# oomguard developer entry points. `make test` is the README's test command and what CI runs.
#
# Set-up is part of the targets that need it, and costs nothing once done (tools/deps.py):
# - Python: `$(PY)` is an interpreter with the project's dependencies (runtime + dev + metrics
#   extras): PYTHON if given (missing packages are pip-installed into it), else python3 if it
#   has them all, else a venv in .venv created and filled on first use (`pip install -e
#   '.[dev,metrics]'`); never the system interpreter implicitly (PEP 668).
# - Debian packages (as root, or with passwordless sudo): the real-kernel tests' tools
#   (postgresql, pgbouncer, stress-ng, procps, util-linux) by `make kernel`; the QEMU guest's
#   (qemu-system-x86, linux-image-cloud-amd64, busybox-static, kmod) by tools/ktest.py and
#   tools/demo.py when they need the guest.
SHELL := /bin/bash
export PYTHONDONTWRITEBYTECODE := 1
#: Runs tools/deps.py and tools/vmrun.py (stdlib only) before anything is installed.
BOOTSTRAP_PYTHON ?= python3
# Resolved once per make run, and only by the targets that use it (`make vm` does not).
PY = $(eval PY := $(shell $(BOOTSTRAP_PYTHON) tools/deps.py python $(if $(PYTHON),--python '$(PYTHON)')))$(or $(PY),$(error tools/deps.py could not set up a Python interpreter: see the deps: lines above))

.PHONY: test unit kernel system-deps lint bench demo vm install fuzz

## The editable install with the dev and metrics extras, into $(PY) (which already has them).
install:
	$(PY) -m pip install -q -e '.[dev,metrics]'

## Unit tests on the host, then the real-kernel tests (natively if the host has a cgroup2 memory
## controller, else in the QEMU guest). Fails if the real-kernel tests could not run.
test: unit kernel

unit:
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/kernel

kernel: system-deps
	$(PY) tools/ktest.py $(KTEST_ARGS)

system-deps:
	@$(BOOTSTRAP_PYTHON) tools/deps.py system

## Property-based fuzz of config files and `exec` command lines: 10,000 examples per property
## (the unit suite runs 200), every exit 0 or 2, no traceback. Spawns nothing, touches no cgroup.
fuzz:
	OOMGUARD_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),10000) $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

lint:
	$(PY) -m ruff check oomguard tests tools
	$(PY) -m ruff format --check oomguard tests tools
	$(PY) -m mypy --strict oomguard

## tools/ is a package: the benches import it and tests.kernel's helpers as packages.
bench:
	$(PY) -m tools.bench

demo:
	$(PY) tools/demo.py

## Run any command in the throwaway guest: make vm CMD='cat /proc/self/cgroup'
vm:
	$(BOOTSTRAP_PYTHON) tools/vmrun.py -- $(or $(CMD),sh -c 'cat /sys/fs/cgroup/cgroup.controllers; uname -r')
