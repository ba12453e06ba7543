# syncxr: one command each for a new user. `make demo` and `make test` set up first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.syncxr-installed
OUT     ?= out/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch/torchvision first, pinned: this machine serves exactly these builds from its own disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m workflows.demo --config configs/local.yaml --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(OUT) .pytest_cache
