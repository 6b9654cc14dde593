# The two quick-start commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
# The torch the dev environment is pinned to (a CPU or CUDA build of it both work; timm's torchvision
# needs this version).
TORCH ?= torch==2.14.1
BIN := $(VENV)/bin

.PHONY: demo test docs

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/segzoo --verbose predict --out demo.png

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# Model cards, the README's generated tables and docs/zoo.png (matplotlib comes with the docs extra).
docs: $(BIN)/.installed
	$(BIN)/pip install -e ".[docs]"
	$(BIN)/python -m segzoo.cards --write
	$(BIN)/python benchmarks/figures.py
