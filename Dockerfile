# exchange-eems-exporter: a small, non-root image. Build: docker build -t exchange-eems-exporter:0.1.0 .
# tests/artifacts/test_dockerfile.py lints this file with hadolint and checks it against pyproject.toml,
# exporter/config.py and deploy/statefulset.yaml.
FROM python:3.11.11-slim-bookworm

# No .pyc writes at run time: the root filesystem is read-only in deploy/statefulset.yaml.
# MALLOC_ARENA_MAX=2: glibc gives each of the poll threads its own arena, and the memory they fragment is
# not returned; with two arenas RSS stays flat under faults (bench/soak.py: +3% instead of +14%).
ENV PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# No simulator in the image (it is not part of the product, and its demo scenario holds a published password):
# it is its own distribution (simulator/pyproject.toml), so this one installs the exporter only.
# The dependencies come from requirements.lock, every file checked against its hash (`make lock` refreshes
# it from pyproject.toml); the exporter itself is then built with the locked setuptools, nothing else
# fetched. The lock holds the exporter's dependencies only: nothing of the simulator or the tests.
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY exporter/ exporter/
RUN pip install --no-cache-dir --require-hashes --only-binary :all: -r requirements.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation . \
 && rm -rf build exchange_eems_exporter.egg-info

WORKDIR /
# 65534 (nobody) is the UID deploy/statefulset.yaml runs as; numeric so runAsNonRoot can verify it.
USER 65534:65534
EXPOSE 10061

# No HEALTHCHECK: with --web.config.file (TLS, basic auth) a fixed plain-HTTP probe would mark a healthy
# container unhealthy. Orchestrators probe /-/healthy and /-/ready themselves.
ENTRYPOINT ["exchange-eems-exporter"]
CMD ["run", "--config.file", "/etc/exchange-eems-exporter/config.yml"]
