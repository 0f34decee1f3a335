# kamengsite — the two commands of the README, and what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test install clean-demo browser-deps bench-deps bench-storefront screenshots

# $(call apt_install,FILE,PACKAGE): Debian's PACKAGE unless FILE is there; as root, or with
# password-less sudo; otherwise say how. (Playwright's own browser download does not work here.)
apt_install = if [ -e "$(1)" ]; then :; \
  elif [ "$$(id -u)" = 0 ]; then SUDO=; \
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
  else echo "$(1) is missing: install it with  sudo apt-get update && sudo apt-get install -y $(2)"; exit 0; fi; \
  [ -e "$(1)" ] || { echo "apt-get install $(2)"; \
    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; }

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
	@$(BIN)/kamengsite i18n compile >/dev/null  # the zh_CN and en catalogs (.po → .mo)

## make demo: set up the demo instance on SQLite and serve it on http://main.localhost:$(PORT)/
demo: install
	$(BIN)/kamengsite --instance instance demo --port $(PORT)

## make test: the whole test suite (SQLite, PostgreSQL, MariaDB)
test: install browser-deps
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

## make browser-deps: what tests/browser/ needs: Debian's chromium and the playwright package (never `playwright install`)
browser-deps: install
	@$(call apt_install,$(CHROMIUM),chromium)
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install --quiet playwright

## make bench-deps: wrk, the load generator of bench/storefront.py (it falls back to a Python one without)
bench-deps: install
	@$(call apt_install,/usr/bin/wrk,wrk)

## make bench-storefront: storefront home vs a bare Flask "hello" under the same server; one JSON line
bench-storefront: bench-deps
	$(BIN)/python bench/storefront.py

## make screenshots: docs/screenshots/*.png, each theme's home and product page, phone and desktop
screenshots: browser-deps
	@$(call apt_install,/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc,fonts-noto-cjk)
	@$(call apt_install,/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf,fonts-noto-color-emoji)
	$(BIN)/python docs/screenshots/take.py

clean-demo:
	rm -rf instance
