"""What a pod shows of the trainer ranks it hosts: a log line per rank once it runs, and /metrics families.

The coordinator creates each rank as a named Ray actor (`tlt.api.ranks.RANK_ACTOR`) pinned
to its pod; the pod's own process (`tlt worker`) finds its ranks by name and asks them.
"""

from __future__ import annotations

import logging
import threading
import time

from tlt.api.ranks import RANK_ACTOR, trainer_ranks

log = logging.getLogger("tlt.worker")


class RankCollector:
    """Prometheus families of this pod's trainer ranks (a scrape skips a rank that does not answer)."""

    def __init__(self, namespace: str, ranks: range):
        self.namespace = namespace
        self.ranks = ranks
        self._handles: dict[int, object] = {}

    def handle(self, rank: int):
        import ray

        if rank not in self._handles:
            try:
                self._handles[rank] = ray.get_actor(RANK_ACTOR.format(rank), namespace=self.namespace)
            except ValueError:  # not created yet
                return None
        return self._handles[rank]

    def ask(self, rank: int, timeout: float = 2.0) -> dict | None:
        """The rank's `describe()`, None while it does not answer. (Not named `describe`: the Prometheus
        registry calls a collector's `describe()` for its metric names.)"""
        import ray

        handle = self.handle(rank)
        if handle is None:
            return None
        try:
            return ray.get(handle.describe.remote(), timeout=timeout)
        except ray.exceptions.RayActorError:
            self._handles.pop(rank, None)  # gone: a new one is looked up next time
        except ray.exceptions.GetTimeoutError:
            pass
        return None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info = GaugeMetricFamily("tlt_trainer_rank", "Trainer ranks running in this pod (1 each)",
                                 labels=["rank", "world_size", "backend", "zero_stage", "device"])
        updates = CounterMetricFamily("tlt_trainer_updates", "Optimizer steps taken by the rank", labels=["rank"])
        tokens = CounterMetricFamily("tlt_trainer_tokens", "Response tokens trained on by the rank's group",
                                     labels=["rank"])
        sent = CounterMetricFamily("tlt_trainer_policy_broadcast_bytes",
                                   "Policy bytes broadcast to the rollout workers (rank 0)", labels=["rank"])
        for rank in self.ranks:
            d = self.ask(rank)
            if d is None:
                continue
            r = str(d["rank"])
            info.add_metric([r, str(d["world_size"]), d["backend"], str(d["zero_stage"]), d["device"]], 1)
            updates.add_metric([r], d["updates"])
            tokens.add_metric([r], d["tokens"])
            sent.add_metric([r], d["sent_bytes"])
        yield from (info, updates, tokens, sent)


def serve_pod_ranks(spec, node: str, namespace: str, registry, alive=lambda: True) -> RankCollector | None:
    """For a pod hosting trainer ranks: their families in `registry` (the pod's /metrics), and a log
    line for each once it runs. None for other pods."""
    plan = trainer_ranks(spec)
    ranks = plan.ranks_on(node)
    if not ranks:
        return None
    collector = RankCollector(namespace, ranks)
    registry.register(collector)

    def announce():
        waiting = set(ranks)
        while waiting and alive():
            for rank in sorted(waiting):
                d = collector.ask(rank, timeout=30)
                if d is not None:
                    waiting.discard(rank)
                    stage = f" ZeRO-{d['zero_stage']}" if d["backend"] == "deepspeed" else ""
                    log.info("trainer rank %d of %d runs in this pod: %s%s, %s on %s (pid %d)", d["rank"],
                             d["world_size"], d["backend"], stage, d["process_group"], d["device"], d["pid"])
            time.sleep(2.0)

    threading.Thread(target=announce, name="trainer-ranks", daemon=True).start()
    return collector
