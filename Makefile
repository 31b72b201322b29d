# `make run`: set up .venv (once) and run the default workflow (tiny scale, 2 CPU cores).
# `make test`: the same set-up, then the whole test suite.
# `make claims`: the tiny-run claims per seed (hours on 2 cores; CLAIMS_ARGS="--experiments ilf --seeds 42 1").
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= 2
# rules call `python -m feedbackflow`: the venv must come first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test claims lint report clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES)
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES) --report results/report.html

test: $(STAMP)
	$(VENV)/bin/python -m pytest

claims: $(STAMP)
	$(VENV)/bin/python benchmarks/claims.py $(CLAIMS_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
