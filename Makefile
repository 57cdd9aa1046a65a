# Two entry points on a fresh clone: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERBEROS_STAMP := $(VENV)/.installed-kerberos
KERBEROS_PACKAGES := krb5-kdc krb5-admin-server libkrb5-dev faketime gcc
# What the tests run (tests/artifacts/test_ci.py checks that every program a test looks up is listed here).
# The MIT admin programs are in sbin, which a non-root PATH may lack: named by their path.
KERBEROS_PROGRAMS := /usr/sbin/krb5kdc /usr/sbin/kadmin.local /usr/sbin/kdb5_util krb5-config faketime gcc
SYSTEM_PACKAGES := prometheus prometheus-alertmanager systemd strace chromium chromium-driver
SYSTEM_PROGRAMS := promtool prometheus amtool prometheus-alertmanager systemd-analyze strace chromium chromedriver

.PHONY: demo demo-kerberos demo-psrp demo-stack dist test check bench soak install system-deps kerberos-deps clean rules lock

$(STAMP): pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[simulator,test]' -e ./simulator
	touch $(STAMP)

install: $(STAMP)

# MIT Kerberos: the KDC the Kerberos tests and `make demo-kerberos` run (Debian's krb5-kdc, krb5-admin-server),
# and the headers python-gssapi builds against (libkrb5-dev; gssapi has no Linux wheel); libfaketime runs a
# KDC whose clock is off for the clock-skew tests. Installed only when missing, the way system-deps installs
# Prometheus; waits for another apt instead of failing.
kerberos-deps:
	@HEADERS=$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	MISSING=; for p in $(KERBEROS_PROGRAMS); do command -v $$p >/dev/null || MISSING="$$MISSING $$p"; done; \
	if test -n "$$MISSING" || ! test -f "$$HEADERS/Python.h"; then \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  EXTRA=$$(test -f "$$HEADERS/Python.h" || echo python3-dev); \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
	    $(KERBEROS_PACKAGES) $$EXTRA >/dev/null; \
	fi
	@for p in $(KERBEROS_PROGRAMS); do command -v $$p >/dev/null \
	  || { echo "$$p is missing after installing $(KERBEROS_PACKAGES)" >&2; exit 1; }; done

# The exporter's `kerberos` extra (pyspnego[kerberos]: python-gssapi and python-krb5), built against libkrb5-dev.
$(KERBEROS_STAMP): $(STAMP) pyproject.toml
	$(MAKE) kerberos-deps
	$(BIN)/pip install --quiet -e '.[simulator,test,kerberos]' -e ./simulator
	touch $(KERBEROS_STAMP)

# promtool (Debian `prometheus`), amtool and Alertmanager (Debian `prometheus-alertmanager`) for the rule,
# config and integration tests; systemd-analyze (Debian `systemd`) for deploy/systemd/; chromium and
# chromium-driver for the browser tests of the exporter's pages (tests/system/test_browser.py). Installed only when
# missing; needs root or sudo.
system-deps:
	@MISSING=; for p in $(SYSTEM_PROGRAMS); do command -v $$p >/dev/null || MISSING="$$MISSING $$p"; done; \
	if test -n "$$MISSING"; then \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	fi
	@for p in $(SYSTEM_PROGRAMS); do command -v $$p >/dev/null \
	  || { echo "$$p is missing after installing $(SYSTEM_PACKAGES)" >&2; exit 1; }; done

demo: $(STAMP)
	$(BIN)/exchange-eems-simulator demo

# The demo over PowerShell remoting only: the exporter's JEA endpoint (written by windows-endpoint) on every
# server and Exchange's /PowerShell for the organization; the fleet serves no WinRS shell. Exchange's endpoint
# takes Kerberos only: DEMO_ARGS=--kerberos adds the real KDC under which the organization collector succeeds.
demo-psrp: $(STAMP)
	$(BIN)/exchange-eems-simulator demo --psrp $(DEMO_ARGS)

# The demo fleet and exporter, Debian's Prometheus and Alertmanager with examples/ and alerts/, and a webhook that
# prints every page and ticket (tools/demo_stack.py; DEMO_ARGS=--fast: no `for:` waits).
demo-stack: system-deps $(STAMP)
	$(BIN)/python tools/demo_stack.py $(DEMO_ARGS)

# The same fleet behind a real MIT KDC on loopback, accepting Kerberos only; the exporter uses a keytab.
demo-kerberos: $(KERBEROS_STAMP)
	$(BIN)/exchange-eems-simulator demo --kerberos $(DEMO_ARGS)

# The shipped rule file and PrometheusRule are the generator's default output (a test compares them): after
# editing exporter/data/alert_rules.yml, regenerate both.
rules: $(STAMP)
	$(BIN)/exchange-eems-exporter rules --output alerts/exchange-eems.rules.yml
	$(BIN)/exchange-eems-exporter rules --format prometheusrule --output deploy/prometheusrule.yaml

# The sdist and the wheel of the exporter (the simulator is its own distribution, never in them), checked by twine.
DIST ?= dist
dist: $(STAMP)
	rm -rf $(DIST) build exchange_eems_exporter.egg-info
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir $(DIST) .
	$(BIN)/twine check --strict $(DIST)/*

# Four worker processes, each taking whole test files (a module's fixture, such as a Prometheus and Alertmanager
# stack, starts once). The suite mostly waits on sockets, deadlines, real ticket lifetimes and other programs: on
# two cores it took 216-226 s with four workers, 266 s with three and 375 s with two (test_kerberos.py alone,
# about 190 s, is the longest file). The files go out longest first (tests/conftest.py LONG_FILES), not in
# xdist's order of most tests first. PYTEST_WORKERS= runs it in one process.
PYTEST_WORKERS ?= -n 4 --dist loadfile --no-loadscope-reorder
# Python's own default, which some CI and sandbox images turn off: cache compiled modules (__pycache__, ignored by
# git). Without it every worker compiles the product and pytest rewrites every test module again, and so does every
# exporter process a test starts (make check: about 5 s of its CPU on two cores).
test check: export PYTHONDONTWRITEBYTECODE =

test: system-deps $(STAMP) $(KERBEROS_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

# The fast loop while you work: the unit tests, the PowerShell grammar checks among them. `make test` runs all.
# Some unit tests need what `test` installs for Kerberos (python-krb5, a real MIT KDC).
check: $(STAMP) $(KERBEROS_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) tests/unit

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/psrp_cost.py

# MALLOC_ARENA_MAX=2 as the shipped image and manifests run the exporter (see the Dockerfile).
soak: $(STAMP)
	MALLOC_ARENA_MAX=2 $(BIN)/python bench/soak.py $(SOAK_ARGS)

# requirements.lock: the image's dependencies, pinned with every file's hash (the Dockerfile installs it with
# --require-hashes). Run after changing [project] dependencies in pyproject.toml; commit the result.
# requirements-kerberos.lock: what the image's first stage builds the kerberos extra from (requirements-kerberos.in).
# pip-tools 7.7 dropped --custom-compile-command; the environment variable works in every 7.x.
lock: $(STAMP)
	$(BIN)/pip install --quiet 'pip-tools>=7.4,<8'
	CUSTOM_COMPILE_COMMAND='make lock' $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --build-deps-for wheel --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --output-file requirements.lock pyproject.toml
	CUSTOM_COMPILE_COMMAND='make lock' $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  --output-file requirements-kerberos.lock requirements-kerberos.in

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
