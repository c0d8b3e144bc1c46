# Plumb developer entry points. `make demo` runs the main job, `make test` sets
# up everything the tests need and runs them (CI runs exactly `make test`).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# Debian packages the test suite needs beyond a stock Debian 12.
DEB_PACKAGES = python3-venv python3-dev gcc nftables iproute2 debootstrap systemd-container dnf rpm createrepo-c dpkg-dev fakeroot faketime chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test deps venv protos lint bench clean packages

venv: $(VENV)/.installed

# Progress goes to stderr, so `make bench` prints nothing but its JSON on stdout.
$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV): Python packages from pyproject.toml" >&2
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip >&2
	@$(PY) -m pip install --quiet -e '.[server,test]' >&2
	@touch $@

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: deps venv
	bash examples/demo.sh

test: deps venv lint
	$(PY) -m pytest

# The agent's and the server's .deb, and the agent's .rpm, into dist/.
packages: deps venv
	rm -rf dist/agent-tree
	$(PY) packaging/build.py tree --component agent --out dist/agent-tree
	$(PY) packaging/build.py deb --tree dist/agent-tree --out dist
	$(PY) packaging/build.py rpm --tree dist/agent-tree --out dist
	$(PY) packaging/build.py deb --component server --out dist
	rm -rf dist/agent-tree

# Each benchmark prints one JSON object; all of them together take < 10 minutes.
BENCHMARKS = ingest agent_footprint drift network_drift fanout reconnect plan
bench: deps venv
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py" >&2; $(PY) bench/$$b.py || exit 1; done

protos: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/plumb.proto

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
