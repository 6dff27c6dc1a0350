# Bolt: `make run` and `make test` set up everything they need on a fresh Debian 12 / Ubuntu 22.04+
# host (as root): missing apt packages, then a .venv with the project installed.

PYTHON      ?= /usr/bin/python3
VENV        := .venv
BIN         := $(VENV)/bin
HOST        ?= 0.0.0.0
PORT        ?= 5000
CONFIG      ?= /etc/bolt/config.json
DATA_DIR    ?= /var/bolt
TESTS       ?= tests

# Debian package names; installed only when missing.
APT_PACKAGES := python3 python3-venv python3-dev gcc libc6-dev debootstrap iptables iproute2 \
                util-linux mount procps openssl ca-certificates curl telnet socat netcat-openbsd

SOURCES := setup.py $(shell find bolt twisted -name '*.py' 2>/dev/null)

.PHONY: run test deps venv bench clean

run: venv
	$(BIN)/twistd -n --pidfile= bolt --host $(HOST) --port $(PORT) --config $(CONFIG) --data-dir $(DATA_DIR)

test: venv
	$(BIN)/python -m twisted.trial --temp-directory=/tmp/bolt-trial $(TESTS)

bench: venv
	$(BIN)/python -m bench

deps: $(VENV)/.apt-ok

$(VENV)/.apt-ok: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing missing packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: deps $(VENV)/.installed

$(VENV)/.installed: $(VENV)/.apt-ok $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q '.[test]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp
