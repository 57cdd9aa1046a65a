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
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN pip install --no-cache-dir . && rm -rf build exchange_eems_exporter.egg-info

WORKDIR /
# 65534 (nobody) is the UID deploy/statefulset.yaml runs as; numeric so runAsNonRoot can verify it.
USER 65534:65534
EXPOSE 10061

# No HEALTHCHECK: with --web.config.file (TLS, basic auth) a fixed plain-HTTP probe would mark a healthy
# container unhealthy. Orchestrators probe /-/healthy and /-/ready themselves.
ENTRYPOINT ["exchange-eems-exporter"]
CMD ["run", "--config.file", "/etc/exchange-eems-exporter/config.yml"]
