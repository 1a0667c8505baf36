# tfopt: `make demo` sets everything up and trains the quickstart; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TFOPT_DATA_DIR ?= $(abspath ../shared/datasets)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# tests run in this many worker processes (pytest-xdist), handed out one by one
TEST_WORKERS ?= 2

.PHONY: setup demo test test-slow test-lowest bench clean

# the package, editable, with the test and docs tools and JAX, at the exact versions of constraints.txt
$(BIN)/tfopt: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/tfopt

demo: setup
	$(BIN)/tfopt fit recipes/quickstart.yaml --overwrite

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist load; rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# the default suite on the oldest dependency versions pyproject.toml allows (constraints-lowest.txt)
LOWEST := .venv-lowest
$(LOWEST)/bin/tfopt: pyproject.toml constraints-lowest.txt
	$(PY) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet --upgrade pip
	$(LOWEST)/bin/pip install --quiet -c constraints-lowest.txt -e '.[dev]'
	touch $@

test-lowest: $(LOWEST)/bin/tfopt
	$(LOWEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist load

clean:
	rm -rf $(VENV) $(LOWEST) *.egg-info saved_models/*/ saved_models/*.partial
