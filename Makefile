# Thin wrappers: every target is a command you could type yourself.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/quickstart.yaml
WORKDIR ?= work

.PHONY: venv install quickstart test test-fast bench ui lock clean papers

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

# Installs the locked versions (constraints.txt) plus the package in editable mode.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/forgeflow run $(CONFIG) --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q --timeout=1800 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	$(BIN)/python bench/filters.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/tokenization.py

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
