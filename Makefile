# The two quick-start commands: `make demo` and `make test`. Both set up .venv themselves, from the lock file.
PYTHON ?= python3
VENV ?= .venv
# The torch the dev environment is pinned to (a CPU or CUDA build of it both work). The lock file pins everything
# else; torch and its CUDA wheels stay out of it, so that any build of this version fits. TORCHVISION is the release
# built for that torch: `make lock` pins it.
TORCH ?= torch==2.14.1
TORCHVISION ?= torchvision==0.29.1
LOCK := requirements/dev.txt
BIN := $(VENV)/bin
# What `make test-latest` installs: the newest release of every requirement, torch included.
LATEST_VENV ?= .venv-latest

.PHONY: demo test lint docs lock test-latest

$(BIN)/.installed: setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -r $(LOCK)
	$(BIN)/pip install --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/segzoo --verbose predict --out demo.png

test: lint
	$(BIN)/python -m pytest

# ruff (lint and format check) and import-linter's layer contracts (pyproject.toml), the latter over the package
# as installed: training/ as segzoo.training.
IMPORT_GRAPH := build/import-graph
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(IMPORT_GRAPH) && mkdir -p $(IMPORT_GRAPH)
	cp -r segzoo $(IMPORT_GRAPH)/segzoo && cp -r training $(IMPORT_GRAPH)/segzoo/training
	cd $(IMPORT_GRAPH) && $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

# Refreshes the lock file to the newest releases that fit setup.cfg's dev environment and TORCH.
lock: $(BIN)/.installed
	printf '%s\n%s\n' "$(TORCH)" "$(TORCHVISION)" | CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet \
		--upgrade --strip-extras --annotation-style line --no-emit-index-url --no-emit-find-links --extra dev \
		--output-file $(LOCK) setup.cfg -
	grep -vE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' $(LOCK) > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The suite against the newest release of everything (no lock), so that drift is found on purpose.
test-latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --upgrade --upgrade-strategy eager torch -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pytest

# Model cards, the README's generated tables, docs/zoo.png and docs/train_curve.png (from the recorded
# benchmarks/train_curve.json; matplotlib comes with the docs extra). The training
# package's generator goes second: it writes the cards again with their reproduction guides, and the training table.
docs: $(BIN)/.installed
	$(BIN)/pip install -e ".[docs]"
	$(BIN)/python -m segzoo.cards --write
	$(BIN)/python -m segzoo.training.guide --write
	$(BIN)/python benchmarks/figures.py
