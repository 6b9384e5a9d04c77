# Thin wrappers: every target is a command you could type yourself.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/quickstart.yaml
WORKDIR ?= work

.PHONY: venv install quickstart dapt test test-fast bench chaos ui lock clean papers

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

# Installs the locked versions (constraints.txt) plus the package in editable mode.
# torch comes first through pip, which finds a machine's local CPU wheel (pip's
# find-links); the rest goes through uv (several times faster than pip at resolving and
# unpacking ~190 pinned packages), with pip as the fallback where uv cannot be installed
# or cannot reach an index. INSTALLER=pip skips uv.
# --compile-bytecode: uv leaves no .pyc by default (pip compiles), and where Python may not
# write them (PYTHONDONTWRITEBYTECODE, a read-only venv) every process then compiles Prefect,
# MLflow, Ray... from source on every import: the embedded Prefect API took 6.5 s to start
# instead of 3.2 s. uv compiles the whole venv, packages installed earlier included.
INSTALLER ?= uv
UV_VERSION ?= 0.13.9
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch
	@if [ "$(INSTALLER)" = uv ] && $(BIN)/pip install -q "uv==$(UV_VERSION)" \
	    && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev]"; then :; \
	else echo "installing with pip"; $(BIN)/pip install -q -c constraints.txt -e ".[dev]"; fi
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/forgeflow run $(CONFIG) --workdir $(WORKDIR)

# Continued pretraining of the quickstart's own model (configs/dapt.yaml): the base model is
# the quickstart's pretrain export, copied to $(WORKDIR)/base-model (or give train.init=PATH).
dapt: quickstart
	rm -rf $(WORKDIR)/base-model
	cp -r "$$(ls -td $(WORKDIR)/train/pretrain-*/hf | head -1)" $(WORKDIR)/base-model
	$(BIN)/forgeflow run configs/dapt.yaml train.init=$(abspath $(WORKDIR))/base-model --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q --timeout=1800 --durations=30 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	$(BIN)/python bench/filters.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/tokenization.py

# SIGKILL the quickstart at 20 seeded moments, rerun each time, check every artifact and
# compare the final metrics with an uninterrupted run (bench/chaos.py; about 25 runs' time).
chaos: install
	$(BIN)/python bench/chaos.py --kills 20 --seed 0 --workdir $(WORKDIR)-chaos

# The continual-pretraining paper reproductions (configs/papers/, pipeline/evaluate/README.md):
# each runs its phases and evaluation, then prints and plots its finding. They share one
# workdir, so the corpus and the pretrained model are built once.
#   make papers PAPERS=replay PAPER_OVERRIDES="continual.phases.0.steps=50"
PAPERS          ?= rewarm replay infinite parmar dapt_tapt
PAPERS_WORKDIR  ?= work/papers
PAPER_OVERRIDES ?=
papers: install
	for p in $(PAPERS); do \
	  $(BIN)/forgeflow run configs/papers/$$p.yaml $(PAPER_OVERRIDES) --workdir $(PAPERS_WORKDIR) && \
	  $(BIN)/python -m pipeline.evaluate.findings configs/papers/$$p.yaml $(PAPER_OVERRIDES) \
	    --workdir $(PAPERS_WORKDIR) || exit 1; \
	done

ui: install
	$(BIN)/forgeflow ui --workdir $(WORKDIR)

lock: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip freeze --exclude-editable | sed 's/+cpu//' > constraints.txt

clean:
	rm -rf $(WORKDIR) .pytest_cache
