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
                util-linux mount procps openssl ca-certificates curl telnet socat netcat-openbsd busybox-static \
                libseccomp-dev

HELPER  := bolt/host/native/bolt-sandbox
SOURCES := setup.py $(shell find bolt twisted -name '*.py' -o -name '*.c' 2>/dev/null)

.PHONY: run test deps venv bench clean deb

run: venv
	$(BIN)/twistd -n --pidfile= --logger=bolt.logs.observer bolt --host $(HOST) --port $(PORT) --config $(CONFIG) --data-dir $(DATA_DIR)

test: venv
	$(BIN)/python -m twisted.trial --temp-directory=/tmp/bolt-trial $(TESTS)

# wrk (the HTTP load generator of the API figure) is installed here only, not with the runtime packages.
bench: venv
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends wrk; } || echo "wrk could not be installed: the API figure uses Python clients"
	$(BIN)/python -m bench $(BENCH)

deps: $(VENV)/.apt-ok

$(VENV)/.apt-ok: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing missing packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: deps $(VENV)/.installed $(HELPER)

# The sandbox helper, also built in place so tests run from the checkout use the current source.
$(HELPER): $(HELPER).c $(VENV)/.apt-ok
	cc -O2 -Wall -Wextra -Werror -o $@ $< -lseccomp

$(VENV)/.installed: $(VENV)/.apt-ok $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q '.[test]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

# The Debian package (packaging/debian, built with dh-virtualenv): build/bolt_<version>_<arch>.deb.
# It is built from a copy of the tree in build/deb, so the source tree gets no debian/ directory and
# no build products.  Build dependencies come from debian/control: the missing ones are installed
# with apt, as `deps` does for the runtime packages.
DEB_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' bolt/__init__.py)
DEB_STAGE   := build/deb/bolt-$(DEB_VERSION)

deb:
	@dpkg-query -W -f='$${Status}\n' dpkg-dev 2>/dev/null | grep -q '^install ok installed' || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev; }
	rm -rf build/deb && mkdir -p $(DEB_STAGE)
	tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='./_trial_temp*' \
	  --exclude=./.hypothesis --exclude='*.egg-info' --exclude=__pycache__ --exclude=dropin.cache \
	  --exclude=./bolt/host/native/bolt-sandbox . | tar -xf - -C $(DEB_STAGE)
	cp -r packaging/debian $(DEB_STAGE)/debian
	@# The package version is Bolt's: a changelog entry is added when bolt/__init__.py is ahead.
	@cd $(DEB_STAGE) && if [ "$$(dpkg-parsechangelog -S Version)" != "$(DEB_VERSION)" ]; then \
	  { printf 'bolt (%s) unstable; urgency=medium\n\n  * Built from the source tree at version %s.\n\n -- %s  %s\n\n' \
	      "$(DEB_VERSION)" "$(DEB_VERSION)" "$$(dpkg-parsechangelog -S Maintainer)" "$$(date -R)"; \
	    cat debian/changelog; } > debian/changelog.new && mv debian/changelog.new debian/changelog; fi
	@cd $(DEB_STAGE) && dpkg-checkbuilddeps 2>/dev/null || { \
	  echo "installing missing build dependencies"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./; }
	cd $(DEB_STAGE) && dpkg-buildpackage -b -us -uc
	cp build/deb/bolt_$(DEB_VERSION)_*.deb build/
	@ls build/bolt_$(DEB_VERSION)_*.deb

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp $(HELPER)
