"""The operator's Prometheus metrics (served on TLT_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("tlt_operator_reconciles_total", "Reconciles of ReasoningRLJobs, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "tlt_operator_reconcile_seconds",
    "Wall time of one reconcile, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMPUTE_SECONDS = Histogram(
    "tlt_operator_reconcile_compute_seconds",
    "Time of the pure part of a reconcile (no API calls).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
JOBS = Gauge("tlt_operator_jobs", "ReasoningRLJobs by phase.", ["phase"])
GPUS = Gauge("tlt_operator_gpus", "GPUs requested by job pods, by the role they were created for and what they do now.", ["role", "activity"])
LENDS = Counter("tlt_operator_gpu_lends_total", "Workers lent to drafter training.")
RETURNS = Counter("tlt_operator_gpu_returns_total", "Lent workers returned to their role.")
REPLACEMENTS = Counter("tlt_operator_pod_replacements_total", "Pods recreated after a failure or deletion.")
CONSOLIDATIONS = Counter("tlt_operator_tail_consolidations_total", "Tail consolidations requested.")
EVENTS = Counter("tlt_operator_events_total", "Kubernetes Events posted, by reason.", ["reason"])
