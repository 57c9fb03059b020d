# syntax=docker/dockerfile:1
# The tlt operator: kopf, the kubernetes client and the pure parts of tlt (tlt.api,
# tlt.elastic); no torch, Ray or CUDA.
#   docker build -f images/operator.Dockerfile -t tlt/operator:0.1.0 .
# Runs as UID 10001 on a read-only root filesystem (the Helm chart mounts /tmp).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY images/requirements-operator.txt /src/images/requirements-operator.txt
RUN /opt/venv/bin/pip install -r /src/images/requirements-operator.txt
COPY pyproject.toml README.md /src/
COPY workers /src/workers
COPY operator /src/operator
# tlt's own dependencies (torch, Ray, ...) are for job pods: --no-deps.
RUN /opt/venv/bin/pip install --no-deps /src \
    && /opt/venv/bin/python -c "import tlt_operator, tlt.api, tlt.elastic"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tlt-operator" \
      org.opencontainers.image.description="Kubernetes operator for ReasoningRLJobs (tlt)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tlt \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin tlt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TLT_HEALTH_PORT=8080 \
    TLT_METRICS_PORT=9090
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090
# For `docker run`; in Kubernetes the chart's liveness and readiness probes do this.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['TLT_HEALTH_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "tlt_operator"]
