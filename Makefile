# Two entry points on a fresh clone: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak lint install system-deps clean lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[simulator,test]'
	touch $(STAMP)

install: $(STAMP)

# promtool (Debian `prometheus`), amtool and Alertmanager (Debian `prometheus-alertmanager`) for the rule,
# config and integration tests. Installed only when missing; needs root or sudo.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null; then \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	fi
	@command -v promtool >/dev/null || { echo "promtool is missing after installing Debian's prometheus" >&2; exit 1; }

demo: $(STAMP)
	$(BIN)/exchange-eems-simulator demo

test: system-deps $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# MALLOC_ARENA_MAX=2 as the shipped image and manifests run the exporter (see the Dockerfile).
soak: $(STAMP)
	MALLOC_ARENA_MAX=2 $(BIN)/python bench/soak.py $(SOAK_ARGS)

# requirements.lock: the image's dependencies, pinned with every file's hash (the Dockerfile installs it with
# --require-hashes). Run after changing [project] dependencies in pyproject.toml; commit the result.
lock: $(STAMP)
	$(BIN)/pip install --quiet 'pip-tools>=7.4,<8'
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --build-deps-for wheel --strip-extras \
	  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --custom-compile-command 'make lock' \
	  --output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
