# The two commands a fresh machine needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser demo test bench

install: $(BIN)/nanodreamer

$(BIN)/nanodreamer: pyproject.toml
	[ -x $(BIN)/python ] || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# headless Chromium for the browser test of `nanodreamer play` (Debian/Ubuntu packages)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/nanodreamer demo

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist worksteal -q

bench: install
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/dynamics.py
