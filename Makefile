# The two commands a fresh machine needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench

install: $(BIN)/nanodreamer

$(BIN)/nanodreamer: pyproject.toml
	[ -x $(BIN)/python ] || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/nanodreamer demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 -q

bench: install
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/dynamics.py
