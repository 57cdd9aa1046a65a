# exchange-eems-exporter: a small, non-root image. Build: docker build -t exchange-eems-exporter:0.1.0 .
# tests/artifacts/test_dockerfile.py lints this file with hadolint and checks it against pyproject.toml,
# exporter/config.py and deploy/statefulset.yaml.

# The kerberos extra: python-gssapi and python-krb5 publish no Linux wheels, so this stage builds them from their
# sources, each checked against its hash in requirements-kerberos.lock, against MIT's headers (libkrb5-dev), with
# the locked Cython and setuptools and no build isolation (nothing unpinned is fetched). The image below takes
# the wheels, not the compiler.
FROM python:3.11.11-slim-bookworm AS kerberos-wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 libkrb5-dev=1.20.1-2+deb12u5 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY requirements-kerberos.lock ./
RUN awk '/^[a-z]/ { keep = /^(cython|setuptools)==/ } keep' requirements-kerberos.lock > build-tools.lock \
 && pip install --no-cache-dir --require-hashes --only-binary :all: -r build-tools.lock \
 && pip wheel --no-cache-dir --require-hashes --no-deps --no-build-isolation -r requirements-kerberos.lock -w /wheels

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

# The kerberos extra: the wheels built above (not their build tools), and MIT's GSSAPI library they load.
# No krb5.conf: mount the site's and set KRB5_CONFIG (docs/kerberos.md).
COPY --from=kerberos-wheels /wheels /wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgssapi-krb5-2=1.20.1-2+deb12u5 \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir --no-index --no-deps /wheels/gssapi-*.whl /wheels/krb5-*.whl /wheels/decorator-*.whl \
 && rm -rf /wheels

WORKDIR /
# 65534 (nobody) is the UID deploy/statefulset.yaml runs as; numeric so runAsNonRoot can verify it.
USER 65534:65534
EXPOSE 10061

# No HEALTHCHECK: with --web.config.file (TLS, basic auth) a fixed plain-HTTP probe would mark a healthy
# container unhealthy. Orchestrators probe /-/healthy and /-/ready themselves.
ENTRYPOINT ["exchange-eems-exporter"]
CMD ["run", "--config.file", "/etc/exchange-eems-exporter/config.yml"]
