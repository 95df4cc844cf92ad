# One image for both LEAF services; Cloud Run picks the entrypoint with FUNCTION_TARGET
# (start_production or catalogue_output, both CloudEvent functions in functions/main.py).
# Every dependency is a binary wheel, so no compiler is needed in either stage.
#checkov:skip=CKV_DOCKER_2:Cloud Run ignores HEALTHCHECK; it probes the container's PORT itself (startup probe).

# --- build stage: a virtual environment with the pinned runtime requirements and leaf_engine ---
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.txt ./
RUN /opt/venv/bin/pip install -r requirements.txt
COPY pyproject.toml ./
COPY leaf_engine ./leaf_engine
# --no-deps: the pins above are the whole dependency set; pip must not re-resolve them.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall --yes pip

# --- runtime stage: interpreter, the venv and the functions source; nothing else ---
FROM python:3.11.14-slim-bookworm

# The base image's own installer tooling is not needed at run time: remove it with the user setup.
RUN groupadd --system --gid 10001 leaf \
    && useradd --system --uid 10001 --gid leaf --no-create-home --shell /usr/sbin/nologin leaf \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY functions ./functions

# PORT is set by Cloud Run; functions-framework reads FUNCTION_TARGET, FUNCTION_SOURCE,
# FUNCTION_SIGNATURE_TYPE and PORT from the environment. FUNCTION_TARGET has no default on
# purpose: a service deployed without it must fail to start rather than run the wrong handler.
# NUMBA_CACHE_DIR: site-packages is read-only for the non-root user, so numba caches in /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    FUNCTION_SOURCE=/app/functions/main.py \
    FUNCTION_SIGNATURE_TYPE=cloudevent \
    PORT=8080

USER 10001:10001
EXPOSE 8080
CMD ["functions-framework"]
