# The two Quick start commands of README.md: `make run` and `make test`.
# Both create .venv on first use and install marseval with its test extra into it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SNAKEMAKE_ARGS ?=

.PHONY: run test install lint clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# rliable caps arch below 8, but arch 7 does not import under pandas 3; rliable works
	# with arch 8 (pip prints a resolver warning here, expected)
	$(BIN)/python -m pip install --quiet "arch>=8"
	touch $@

# The whole embedded-default workflow, end to end, on this machine's CPUs.
run: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --profile profiles/local $(SNAKEMAKE_ARGS)

# The test suite (lint, unit, oracle and workflow tests).
test: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check marseval tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
