# syntax=docker/dockerfile:1
# tlt for GPU job pods: CUDA, torch (the build vLLM pins), vLLM (tlt's `gpu` extra),
# DeepSpeed with its fused and CPU Adam ops compiled ahead of time, and tlt.
#   docker build -f images/worker-cuda.Dockerfile -t tlt/worker-cuda:0.1.0 .
# Two stages: the CUDA devel image compiles DeepSpeed's ops (nvcc); the runtime
# image gets only the virtualenv. The operator runs job pods as UID 1000 with the
# command `tlt worker ...`.

ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
# vLLM 0.33.0 pins torch 2.14.0 (built for CUDA 13).
ARG VLLM_VERSION=0.33.0
ARG TORCH_VERSION=2.14.0
ARG DEEPSPEED_VERSION=0.19.8
# Ampere, Hopper, Blackwell.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0;10.0;12.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" "vllm==${VLLM_VERSION}" ninja packaging wheel "setuptools>=68"
# Fused Adam (GPU) and CPU Adam (optimizer offload) built now: the runtime image has no nvcc.
RUN DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 \
    /opt/venv/bin/pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
COPY pyproject.toml README.md /src/
COPY workers /src/workers
COPY operator /src/operator
RUN /opt/venv/bin/pip install "/src[gpu]" "torch==${TORCH_VERSION}" "vllm==${VLLM_VERSION}" "deepspeed==${DEEPSPEED_VERSION}" \
    && /opt/venv/bin/tlt --version \
    && /opt/venv/bin/tlt worker --help >/dev/null \
    && /opt/venv/bin/python -c "import ray, ray.scripts.scripts, prometheus_client, kubernetes"

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
LABEL org.opencontainers.image.title="tlt-worker-cuda" \
      org.opencontainers.image.description="tlt job pod image for GPU workers (vLLM, DeepSpeed)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libnuma1 ca-certificates procps \
    && rm -rf /var/lib/apt/lists/*
# Ubuntu images ship a user `ubuntu` with UID 1000: job pods run as 1000, so it becomes `tlt`.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && groupadd --gid 1000 tlt \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/tlt --shell /bin/bash tlt \
    && mkdir -p /tlt/output && chown -R 1000:1000 /tlt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tlt \
    HF_HOME=/home/tlt/.cache/huggingface \
    RAY_USAGE_STATS_ENABLED=0 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
WORKDIR /home/tlt
# `tlt worker` (the pods' command): Ray's GCS on 6379 in the head pod, /metrics and
# /healthz on 8080 in every pod (the ports the operator's pods and Service declare).
# Ray writes its session to /tmp/ray and the built-in model is cached in ~/.cache/tlt.
EXPOSE 6379 8080
# No HEALTHCHECK: job pods are batch workers whose liveness the operator and Ray track.
HEALTHCHECK NONE
CMD ["tlt", "--help"]
