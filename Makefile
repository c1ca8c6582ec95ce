# Every target sets itself up: a fresh clone needs nothing but python3 (3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test soak demo lint typecheck bench clean node-ipc docs

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[trio,uvloop]" --group test --group lint
	touch $(STAMP)

# The suite in WORKERS processes (pytest-xdist; WORKERS=0: in this one). Its leak checks look
# at this process's own children, sockets and descriptors, so they hold in each worker. Three on
# two cores: the tests wait on processes, sockets and timers more than they compute (with two
# workers the load average stays ~1.7), and a third took a whole run from 13.0 to 10.8 minutes.
WORKERS ?= 3
test: $(STAMP) node-ipc
	$(BIN)/python -m pytest $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist worksteal) $(PYTEST_ARGS)

# node-ipc 9.2.1, @achrinza/node-ipc 10.1.11 and node-ipc 14.0.0 for the interop tests
# (tests/test_nodeipc.py), exactly as tests/node/package-lock.json pins them, install scripts off;
# reused while the lock is unchanged. Never 9.2.2, 10.1.1-10.1.3 or 11.x (malicious releases).
# Without node or npm the interop tests skip, saying so; a failed install fails here.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
node-ipc:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		$(MAKE) --no-print-directory $(NODE_STAMP); \
	else echo "node or npm is missing: the node-ipc interop tests will be skipped"; fi

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The soak test for SOAK_SECONDS per backend, transport and mode (plain, and acked: the
# accounting acked + reported == sent is printed and checked; make test runs each for 1.5 s);
# FAULT_SEED=<n> replays a failed run's random choices.
SOAK_SECONDS ?= 60
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest tests/test_soak.py -rP $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python examples/hello_world.py
	$(BIN)/python examples/neural_graph.py

lint: $(STAMP)
	$(BIN)/ruff check ipcactors tests examples benchmarks
	$(BIN)/ruff format --check ipcactors tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The site (mkdocs.yml: tutorial, how-tos, explanations, the API reference from the docstrings)
# into build/site, --strict: a broken link or a docstring mkdocstrings cannot read fails it.
DOCS_STAMP := $(VENV)/.docs-installed
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --group docs
	touch $(DOCS_STAMP)

bench: $(STAMP)
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install --quiet matplotlib \
		|| echo "matplotlib could not be installed: the run goes on without a chart"
	@$(BIN)/python -c "import loky, zmq" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[bench]" \
		|| echo "loky or pyzmq could not be installed: their cells report them as not available"
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info $(NODE_DIR)/node_modules
