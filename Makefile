# The two Quick start commands of README.md: `make run` and `make test`.
# Both create .venv on first use and install marseval with its test extra into it, at the
# exact versions of requirements.lock (`make lock` regenerates the lock and envs/*.yaml).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
UV_VERSION := 0.13.9
UV := VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv
SNAKEMAKE_ARGS ?=

.PHONY: run test install faiss-gpu faiss-cpu lock lock-envs lint clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# uv installs the lock (3 GB of wheels with torch's CUDA libraries) in about a third of
	# pip's time: parallel downloads and unpacking (benchmarks/README.md, "Test suite")
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# --no-deps: the lock is the whole closure. rliable caps arch below 8, but arch 7 does not
	# import under pandas 3 and rliable works with arch 8, so the lock holds arch 8 and a
	# resolving install would refuse it (`pip check` names this one conflict, expected)
	# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set
	# (this CI) no import writes them either, so every job would compile torch's sources again:
	# `import torch, torchmetrics, timm` takes 21 s of CPU without them, 9 s with them, for 12 s
	# more install (benchmarks/README.md, "Test suite")
	$(UV) pip install --quiet --no-deps --compile-bytecode -r requirements.lock
	$(UV) pip install --quiet --no-deps -e .
	touch $@

# The GPU build of faiss in .venv in place of faiss-cpu (README, "FAISS on GPUs"): the two
# install the same `faiss` module, so one goes before the other comes; `make faiss-cpu` undoes
# it. The pins are FAISS_GPU of envs/lock.py (envs/gpu/faiss.yaml, the rules' conda env).
faiss-gpu: $(INSTALLED)
	$(UV) pip uninstall --quiet faiss-cpu
	$(UV) pip install --quiet --no-deps $$($(BIN)/python -c \
		"import runpy; print(' '.join(runpy.run_path('envs/lock.py')['FAISS_GPU']))")

faiss-cpu: $(INSTALLED)
	$(UV) pip uninstall --quiet faiss-gpu-cu12
	$(UV) pip install --quiet --no-deps $$(grep -i '^faiss-cpu==' requirements.lock)

# Re-resolve from pyproject.toml in a fresh temporary venv: writes requirements.lock and the
# per-rule conda envs (envs/*.yaml) from it. Commit all five files together.
lock:
	$(PYTHON) envs/lock.py

# Only envs/*.yaml, from the current lock and the packages installed in .venv.
lock-envs: $(INSTALLED)
	$(BIN)/python envs/lock.py --envs-only

# The whole embedded-default workflow, end to end, on this machine's CPUs (without
# --configfile, snakemake would run the paper: config/config.yaml).
run: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --configfile config/embedded.yaml \
		--profile profiles/local $(SNAKEMAKE_ARGS)

# The test suite (lint, unit, oracle and workflow tests).
test: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check marseval tests benchmarks envs
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
