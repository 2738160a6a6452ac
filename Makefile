# phalanx developer entry points. The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/trainers:$(CURDIR)/dev:$(CURDIR)
PROFILE ?= default

.PHONY: help deps binaries cluster cluster-down cluster-status generate verify lint test test-unit demo bench

help:
	@echo "make demo | make test | make cluster [PROFILE=scale] | make cluster-down | make generate | make verify | make bench"

deps:  ## Python packages for the operator, the trainers and the tests
	$(PYTHON) -m pip install -q -e ".[dev,torch,tensorflow]"

binaries:  ## etcd, kube-*, kubectl, kwok, helm built from the Go module proxy, cached in ~/.cache/phalanx
	bash dev/build-binaries.sh

cluster: binaries
	$(PYTHON) -m localcluster up --profile $(PROFILE)

cluster-down:
	$(PYTHON) -m localcluster down

cluster-status:
	$(PYTHON) -m localcluster status
