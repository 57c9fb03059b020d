"""`python -m tlt_operator`: the operator process (what the Helm chart's Deployment runs).

Environment: TLT_WATCH_NAMESPACES (comma-separated; empty = every namespace),
TLT_HEALTH_PORT (liveness, /healthz), TLT_METRICS_PORT (Prometheus, 0 = off),
TLT_LOG_LEVEL, TLT_WORKER_IMAGE_CUDA / TLT_WORKER_IMAGE_CPU / TLT_WORKER_IMAGE_PULL_POLICY,
TLT_BACKOFF_SECONDS (base of the pod replacement backoff), TLT_RESYNC_SECONDS.
"""

from __future__ import annotations

import logging
import os

import kopf
from prometheus_client import start_http_server

import tlt_operator.handlers  # noqa: F401  (registers the handlers)


def main() -> None:
    level = os.environ.get("TLT_LOG_LEVEL", "INFO").upper()
    kopf.configure(verbose=level == "DEBUG", log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level)
    metrics_port = int(os.environ.get("TLT_METRICS_PORT", "9090") or 0)
    if metrics_port:
        start_http_server(metrics_port)
    namespaces = [n.strip() for n in os.environ.get("TLT_WATCH_NAMESPACES", "").split(",") if n.strip()]
    health_port = int(os.environ.get("TLT_HEALTH_PORT", "8080") or 0)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )


if __name__ == "__main__":
    main()
