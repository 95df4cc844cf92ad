# One image for the LEAF services; Cloud Run picks the entry point with FUNCTION_TARGET (the CloudEvent
# functions of functions/main.py). It holds the core dependencies and the `service` extra only
# (locks/service.txt): no local engine, numba, plotting or Dask. Every dependency is a binary wheel pinned by
# hash (--require-hashes), so no compiler is needed in either stage.
# Base: the Docker Official Image python:3.11.14-slim-bookworm (Debian 12 + CPython 3.11.14; its Dockerfile is
# published in github.com/docker-library/python), pinned by the digest of its multi-architecture index.
# tests/test_image.py replays this file's install into a clean environment and boots it as CMD does.
#checkov:skip=CKV_DOCKER_2:Cloud Run ignores HEALTHCHECK; it probes the container's PORT itself (startup probe).

# --- build stage: the service virtual environment, from the lock, plus leaf_engine built as a wheel ---
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY locks/build.txt locks/service.txt locks/
# pip and setuptools live in /opt/build only; /opt/venv (what ships) gets neither.
# Pruned after the install: third-party test folders, and google-api-python-client's static discovery
# documents (110 MB; earthengine-api builds its client from the discovery document it fetches).
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r locks/build.txt \
    && python -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --require-hashes --no-deps -r locks/service.txt \
    && find /opt/venv/lib/python3.11/site-packages -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/googleapiclient/discovery_cache/documents
COPY pyproject.toml README.md ./
COPY leaf_engine ./leaf_engine
# --no-deps: the lock above is the whole dependency set; pip must not resolve anything itself.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps /tmp/dist/leaf_engine-*.whl \
    && rm -rf /tmp/dist

# --- runtime stage: interpreter, the venv and the functions source; nothing else ---
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# The user gets a home of its own: gunicorn (under functions-framework) puts its control socket in $HOME.
# The base image's installer tooling is not needed at run time: removed with the user setup.
RUN groupadd --system --gid 10001 leaf \
    && useradd --system --uid 10001 --gid leaf --home-dir /home/leaf --create-home --shell /usr/sbin/nologin leaf \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY functions ./functions

# PORT is set by Cloud Run; functions-framework reads FUNCTION_TARGET, FUNCTION_SOURCE,
# FUNCTION_SIGNATURE_TYPE and PORT from the environment. FUNCTION_TARGET has no default on
# purpose: a service deployed without it must fail to start rather than run the wrong handler.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/leaf \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FUNCTION_SOURCE=/app/functions/main.py \
    FUNCTION_SIGNATURE_TYPE=cloudevent \
    PORT=8080

USER 10001:10001
EXPOSE 8080
CMD ["functions-framework"]
