# Two commands do all the set-up on a fresh machine:
#   make demo   -> a virtualenv with autotl, then a search on the bundled digits sample
#   make test   -> the same virtualenv with the test extras (and the onnx, mlflow, dashboard extras),
#                  then lint, import layers and the whole test suite
#   make serving -> the Java inference service (serving/java) over an exported SavedModel
#   make docs   -> the documentation site (docs/, mkdocs.yml) built with --strict into site/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := $(VENV)/.installed-extras
DOCS   := $(VENV)/.installed-docs

# Offline machines: weights come from AUTOTL_WEIGHTS_DIR; the sibling ../shared/weights is used when present.
SHARED_WEIGHTS := $(wildcard $(abspath ..)/shared/weights)
ifneq ($(SHARED_WEIGHTS),)
export AUTOTL_WEIGHTS_DIR ?= $(SHARED_WEIGHTS)
endif

.PHONY: demo test test-fast lint bench install serving docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,postgres]"
	touch $(STAMP)

# the optional extras the tests exercise (ONNX export, MLflow, optuna-dashboard); `make demo` does without
$(EXTRAS): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,postgres,onnx,mlflow,dashboard]"
	touch $(EXTRAS)

install: $(EXTRAS)

# mkdocs-material and mkdocstrings-python (the `docs` extra); griffe reads autotl's source without
# importing it, so the build needs no TensorFlow at run time and no network
$(DOCS): $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS)

docs: $(DOCS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

demo: $(STAMP)
	$(BIN)/autotl search --sample digits --space fast --test-fraction 0.2 --out runs/digits

# with every optional extra installed: mypy checks the integrations against the libraries they import
lint: $(EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# coverage of the package by the unit tests (tests marked slow run untraced: see tests/conftest.py);
# two processes (pytest-xdist): much of the suite waits on processes, servers and containers, so
# two overlap (the whole suite in 21 min against 25-57 min in one process on 2 cores)
test: lint $(EXTRAS)
	$(BIN)/python -m pytest -n 2 --durations=15 --cov --cov-report=term

# the inner loop: the same checks, and every test not marked slow (under two minutes)
test-fast: lint $(EXTRAS)
	$(BIN)/python -m pytest -m "not slow" -q -n auto

serving: $(STAMP)
	$(MAKE) -C serving/java PYTHON=$(abspath $(BIN))/python

bench: $(STAMP)
	$(BIN)/python benchmarks/search_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache site
