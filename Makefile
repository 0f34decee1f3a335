# kamengsite — the two commands of the README, and what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: demo test install clean-demo

$(BIN)/kamengsite: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/kamengsite

## make demo: set up the demo instance on SQLite and serve it on http://main.localhost:$(PORT)/
demo: install
	$(BIN)/kamengsite --instance instance demo --port $(PORT)

## make test: the whole test suite (SQLite, PostgreSQL, MariaDB)
test: install
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

clean-demo:
	rm -rf instance
