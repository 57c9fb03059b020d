# syntax=docker/dockerfile:1
# tlt for CPU job pods (gpusPerReplica: 0): torch, Ray, DeepSpeed (no compiled ops),
# transformers and tlt; no vLLM, no CUDA.
#   docker build -f images/worker-cpu.Dockerfile -t tlt/worker-cpu:0.1.0 .
# torch comes from PyPI by default, whose Linux build bundles CUDA libraries (several
# GB, runs on CPUs too). For a small image pass PyTorch's CPU-only wheel index:
#   --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index URL>
# The operator runs job pods as UID 1000 with the command `tlt worker ...`; jobs write
# to spec.output.path (default /tlt/output, owned by that user) or a mounted volume.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DS_BUILD_OPS=0
RUN python -m venv /opt/venv
# torch first and pinned, so that no later package pulls another build.
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY workers /src/workers
COPY operator /src/operator
RUN /opt/venv/bin/pip install /src "torch==${TORCH_VERSION}" "deepspeed==${DEEPSPEED_VERSION}" \
    && /opt/venv/bin/tlt --version \
    && /opt/venv/bin/tlt worker --help >/dev/null \
    && /opt/venv/bin/python -c "import ray, ray.scripts.scripts, prometheus_client, kubernetes"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tlt-worker-cpu" \
      org.opencontainers.image.description="tlt job pod image for CPU workers" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 tlt \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/tlt --shell /bin/bash tlt \
    && mkdir -p /tlt/output && chown -R 1000:1000 /tlt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tlt \
    HF_HOME=/home/tlt/.cache/huggingface \
    RAY_USAGE_STATS_ENABLED=0 \
    TOKENIZERS_PARALLELISM=false
USER 1000:1000
WORKDIR /home/tlt
# `tlt worker` (the pods' command): Ray's GCS on 6379 in the head pod, /metrics and
# /healthz on 8080 in every pod (the ports the operator's pods and Service declare).
# Ray writes its session to /tmp/ray and the built-in model is cached in ~/.cache/tlt.
EXPOSE 6379 8080
# No HEALTHCHECK: job pods are batch workers whose liveness the operator and Ray track.
HEALTHCHECK NONE
CMD ["tlt", "--help"]
