# clusterkit: `make up` builds the default local cluster and uses it; `make test` runs every
# check CI runs. Both install what they need (Debian packages, a venv) on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
CK := $(VENV)/bin/clusterkit
SPEC ?= examples/local.yaml
NAME ?= ck

.PHONY: up down test setup host venv lint typecheck unit integration aws bench bench-all golden clean

up: setup
	$(CK) up -f $(SPEC)
	scripts/first-job.sh $(CK) $(NAME)

down: venv
	$(CK) down $(NAME)

# What needs no root runs on every core (each worker has its own moto server); the real
# clusters run one at a time.
test: setup lint typecheck
	$(VENV)/bin/pytest -n auto tests/unit tests/aws tests/contract -m "not integration"
	$(VENV)/bin/pytest --durations=15 tests/integration tests/contract -m integration

setup: host venv

host:
	scripts/setup-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m tests.provider_names
	cd playbooks && PATH="$(abspath $(VENV))/bin:$$PATH" ansible-lint site.yml
	cd images/aws && PATH="$(abspath $(VENV))/bin:$$PATH" \
		ANSIBLE_ROLES_PATH=../../playbooks/roles ansible-lint -c ../../playbooks/.ansible-lint bake.yml

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -n auto tests/unit

integration: setup
	$(VENV)/bin/pytest --durations=15 tests/integration tests/contract -m integration

aws: venv
	$(VENV)/bin/pytest -n auto tests/aws tests/contract -m aws

# The quick benchmarks (a few minutes); bench-all adds the long ones (about 80 minutes).
bench: setup
	$(VENV)/bin/python bench/updown.py
	$(VENV)/bin/python bench/aws.py
	$(VENV)/bin/python bench/boot.py

bench-all: bench
	$(VENV)/bin/python bench/slurm.py
	$(VENV)/bin/python bench/elastic.py
	$(VENV)/bin/python bench/spot.py
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python bench/htc.py
	$(VENV)/bin/python bench/faults.py --json bench/results/faults.json
	$(VENV)/bin/python bench/accounting.py --json bench/results/accounting.json

golden: venv
	CK_UPDATE_GOLDEN=1 $(VENV)/bin/pytest -q tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
