# Thin wrappers: every target is a command you could type yourself.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/quickstart.yaml
WORKDIR ?= work

.PHONY: venv install quickstart dapt test test-fast bench ui lock clean

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

# Continued pretraining of the quickstart's own model (configs/dapt.yaml): the base model is
# the quickstart's pretrain export, copied to $(WORKDIR)/base-model (or give train.init=PATH).
dapt: quickstart
	rm -rf $(WORKDIR)/base-model
	cp -r "$$(ls -td $(WORKDIR)/train/pretrain-*/hf | head -1)" $(WORKDIR)/base-model
	$(BIN)/forgeflow run configs/dapt.yaml train.init=$(abspath $(WORKDIR))/base-model --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q --timeout=1800 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	$(BIN)/python bench/filters.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/tokenization.py

ui: install
	$(BIN)/forgeflow ui --workdir $(WORKDIR)

lock: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip freeze --exclude-editable | sed 's/+cpu//' > constraints.txt

clean:
	rm -rf $(WORKDIR) .pytest_cache
