"""`python -m tlt_operator`: the operator process (what the Helm chart's Deployment runs).

Environment: TLT_WATCH_NAMESPACES (comma-separated; empty = every namespace),
TLT_HEALTH_PORT (liveness, /healthz), TLT_METRICS_PORT (Prometheus, 0 = off),
TLT_LOG_LEVEL, TLT_WORKER_IMAGE_CUDA / TLT_WORKER_IMAGE_CPU / TLT_WORKER_IMAGE_PULL_POLICY,
TLT_BACKOFF_SECONDS (base of the pod replacement backoff), TLT_RESYNC_SECONDS,
TLT_OPERATOR_NAMESPACE (its own namespace: the Lease's, and metrics may reach job pods from it),
TLT_METRICS_NAMESPACES (more namespaces whose pods may scrape job pods), TLT_LEADER_ELECTION
(default on: one replica reconciles, the others wait), TLT_LEADER_ELECTION_ID (the Lease's name),
TLT_LEASE_SECONDS (15).
"""

from __future__ import annotations

import http.server
import logging
import os
import threading

import kopf
from prometheus_client import start_http_server

import tlt_operator.handlers  # noqa: F401  (registers the handlers)

log = logging.getLogger("tlt_operator")


def _standby_health(port: int) -> http.server.HTTPServer | None:
    """/healthz of a replica waiting to lead (kopf serves it once this one leads)."""
    if not port:
        return None

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = b"standby\n"
            self.send_response(200 if self.path.startswith("/healthz") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def lead(health_port: int) -> None:
    """Wait to hold the Lease (answering /healthz meanwhile), then keep it; losing it ends the process."""
    from tlt_operator.kube import Kube
    from tlt_operator.leader import LeaderElection

    election = LeaderElection.from_env(Kube.login())
    server = _standby_health(health_port)
    try:
        election.acquire(threading.Event())
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    # Two leaders must never reconcile at once: a leader that cannot renew stops at once (the kubelet restarts it).
    election.keep(on_lost=lambda: os._exit(1))
    tlt_operator.handlers.RUNTIME.on_shutdown.append(election.release)


def main() -> None:
    level = os.environ.get("TLT_LOG_LEVEL", "INFO").upper()
    kopf.configure(verbose=level == "DEBUG", log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level)
    metrics_port = int(os.environ.get("TLT_METRICS_PORT", "9090") or 0)
    if metrics_port:
        start_http_server(metrics_port)
    namespaces = [n.strip() for n in os.environ.get("TLT_WATCH_NAMESPACES", "").split(",") if n.strip()]
    health_port = int(os.environ.get("TLT_HEALTH_PORT", "8080") or 0)
    if os.environ.get("TLT_LEADER_ELECTION", "true").lower() not in ("false", "0", "no"):
        lead(health_port)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )


if __name__ == "__main__":
    main()
