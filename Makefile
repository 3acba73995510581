# Two commands: `make demo` (set up + whole DAG on the built-in synthetic export) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test lint clean

setup: $(STAMP) browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the dashboard's browser tests: Debian's package, driven by Playwright
# through executable_path (Playwright's own browser download does not work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: setup
	$(BIN)/mrifoundry demo

# Two pytest workers, one test file at a time each (module fixtures stay in one process): much of the suite
# waits on subprocesses, servers and sockets, so two files side by side keep both cores busy.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

clean:
	rm -rf var .pytest_cache
