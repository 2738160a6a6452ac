# phalanx developer entry points. The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/trainers:$(CURDIR)/dev:$(CURDIR)
PROFILE ?= default
# The local cluster's simulated pods carry made-up private addresses: the operator started from here
# (make operator, make demo, the tests) scrapes trainer metrics only on this machine.
export PHALANX_SCRAPE_NETWORKS ?= 127.0.0.0/8
PYTEST_ARGS ?=

.PHONY: help deps deps-demo demo-image binaries images test-realnode cluster cluster-down cluster-status generate verify lint test test-unit demo bench chaos chaos-ha chaos-fuzz operator

help:
	@echo "make demo            the main example job's story on a local cluster, in real containers (NODE=real|process)"
	@echo "make test            verify generated files, lint, type-check and run every test"
	@echo "make cluster         start the local control plane (PROFILE=default|scale|real); make cluster-down stops it"
	@echo "make images          build the operator and trainer images here (ACCELERATOR=cpu|cuda; cached)"
	@echo "make generate        regenerate the CRD, chart copies, values schema, dashboards and API docs"
	@echo "make bench           run the benchmarks (results in bench-results/)"
	@echo "make chaos           long fault runs: chaos-ha (200 jobs, 50 operator kills), chaos-fuzz (10,000 fuzzed manifests)"

# When make started: the demo prints its set-up time (packages, binaries) next to its own.
MAKE_STARTED := $(shell date +%s)

deps:  ## what make test needs (Debian and Python packages); skipped when already installed
	@$(PYTHON) dev/prereqs.py test

deps-demo:  ## what make demo needs: the operator's packages and torch (and the real node's, NODE=real)
	@$(PYTHON) dev/prereqs.py $(if $(filter real,$(NODE)),demo-real,demo)

binaries:  ## etcd, kube-*, kubectl, kwok, helm built from the Go module proxy, cached in ~/.cache/phalanx
	bash dev/build-binaries.sh

ACCELERATOR ?= cpu
images:  ## images/*/Dockerfile built with buildah on a Debian base made here; rebuilt only when inputs change
	$(PYTHON) -m localcluster images --accelerator $(ACCELERATOR)

cluster: binaries $(if $(filter real,$(PROFILE)),images)
	$(PYTHON) -m localcluster up --profile $(PROFILE) $(if $(NODES),--nodes $(NODES))

cluster-down:
	$(PYTHON) -m localcluster down

cluster-status:
	$(PYTHON) -m localcluster status

operator:  ## run the operator against $$KUBECONFIG (e.g. the local cluster's)
	$(PYTHON) -m phalanx.controller

generate:
	$(PYTHON) -m phalanx.generate

verify:  ## fails when a generated file drifted from its source
	$(PYTHON) -m phalanx.generate --check

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(PYTHON) -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --no-cache  # layers: pyproject.toml

test-unit: deps verify lint
	$(PYTHON) -m pytest -m "not cluster and not training and not e2e and not realnode" $(PYTEST_ARGS)

# Two sessions: the real node is one per machine, so the realnode tests (real containers from `make
# images`) get a cluster of their own with the `real` profile. Exit 5 is "nothing selected" (PYTEST_ARGS).
test: deps binaries images verify lint
	$(PYTHON) -m pytest -m "not realnode" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTHON) -m pytest -m realnode $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-realnode: deps binaries images
	$(PYTHON) -m pytest -m realnode $(PYTEST_ARGS)

# The pods run in real containers on the real node (the trainer image is built the first time);
# NODE=process runs them as processes on the process node instead (no images: quicker to start).
NODE ?= real
demo: deps-demo binaries $(if $(filter real,$(NODE)),demo-image)
	$(PYTHON) -m demo --node $(NODE) --since $(MAKE_STARTED)

demo-image:
	$(PYTHON) -m localcluster images --accelerator cpu --only trainer-pytorch

bench: deps binaries
	$(PYTHON) -m bench

# Long fault runs, outside `make test`. chaos-ha: tests/operator/test_chaos.py at 200 jobs and 50
# SIGKILLs of the leading operator (figures in bench-results/chaos.json). chaos-fuzz: 10,000 seeded
# TrainingJob manifests against a fresh control plane with the operator running (tests/fuzz;
# FUZZ_ARGS=--seed N to vary them).
FUZZ_ARGS ?=
chaos: chaos-ha chaos-fuzz

chaos-ha: binaries
	PHALANX_CHAOS_JOBS=200 PHALANX_CHAOS_KILLS=50 PHALANX_CHAOS_REPORT=$(CURDIR)/bench-results/chaos.json \
		$(PYTHON) -m pytest -s tests/operator/test_chaos.py $(PYTEST_ARGS)

chaos-fuzz: binaries
	$(PYTHON) -m tests.fuzz --count 10000 $(FUZZ_ARGS)
