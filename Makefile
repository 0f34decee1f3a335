# kamengsite — the two commands of the README, and what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: demo test install clean-demo

PLUGIN_PROJECTS := $(wildcard plugins/*/pyproject.toml)

$(BIN)/kamengsite: pyproject.toml $(PLUGIN_PROJECTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# every plugin package under plugins/ (payment channels, ...), editable
	@for project in $(PLUGIN_PROJECTS); do \
	  echo "pip install -e $$(dirname $$project)"; \
	  $(BIN)/pip install --quiet -e "$$(dirname $$project)" || exit 1; \
	done
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
