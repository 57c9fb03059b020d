"""Manifests that must be rejected, each with the field its error names.

Shared by the offline tests (`tlt validate`) and the control-plane tier, which checks
that the real API server rejects the ones the CRD schema or a CEL rule can express
(`server_rejects`), naming the same field (CEL rules carry a `fieldPath`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def base_manifest() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[last] = value


def _del(doc: dict, path: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[key]
    del doc[last]


@dataclass
class BadManifest:
    name: str
    changes: dict  # dotted path -> new value (DELETE removes the field)
    field: str  # the field path the offline error names
    server_rejects: bool = True
    manifest: dict = field(init=False)

    def __post_init__(self):
        doc = copy.deepcopy(base_manifest())
        doc["metadata"]["name"] = f"bad-{self.name}"[:40].rstrip("-")
        for path, value in self.changes.items():
            if value is DELETE:
                _del(doc, path)
            else:
                _set(doc, path, value)
        self.manifest = doc


DELETE = object()

BAD_MANIFESTS = [
    BadManifest("zero-rollout-replicas", {"spec.rollout.replicas": 0}, "spec.rollout.replicas"),
    BadManifest("strategy-not-triple", {"spec.speculative.strategies": ["4_1_4", "8_x_16"]}, "spec.speculative.strategies[1]"),
    BadManifest("strategy-topk-over-verify", {"spec.speculative.strategies": ["2_8_4"]}, "spec.speculative.strategies[0]"),
    BadManifest("strategy-verify-over-tree", {"spec.speculative.strategies": ["2_1_5"]}, "spec.speculative.strategies[0]"),
    BadManifest("grpo-group-of-one", {"spec.algorithm.groupSize": 1}, "spec.algorithm.groupSize"),
    BadManifest(
        "drafter-replicas-negative",
        {"spec.drafter.dedicatedReplicas": -1},
        "spec.drafter.dedicatedReplicas",
    ),
    BadManifest("unknown-algorithm-field", {"spec.algorithm.stepz": 3}, "spec.algorithm.stepz"),
    BadManifest("unknown-spec-field", {"spec.rolout": {"replicas": 2}}, "spec.rolout"),
    BadManifest("unknown-algorithm", {"spec.algorithm.name": "ppo"}, "spec.algorithm.name"),
    BadManifest("zero-temperature", {"spec.algorithm.temperature": 0}, "spec.algorithm.temperature"),
    BadManifest("top-p-above-one", {"spec.algorithm.topP": 1.5}, "spec.algorithm.topP"),
    BadManifest("negative-learning-rate", {"spec.algorithm.learningRate": -1.0e-5}, "spec.algorithm.learningRate"),
    BadManifest("max-tokens-as-string", {"spec.algorithm.maxResponseTokens": "1024"}, "spec.algorithm.maxResponseTokens"),
    BadManifest("unknown-loss-aggregation", {"spec.algorithm.lossAggregation": "mean"}, "spec.algorithm.lossAggregation"),
    BadManifest("algorithm-not-a-mapping", {"spec.algorithm": "grpo"}, "spec.algorithm"),
    BadManifest("dapo-with-kl", {"spec.algorithm.name": "dapo", "spec.algorithm.klCoef": 0.1}, "spec.algorithm.klCoef"),
    BadManifest("mini-batch-over-batch", {"spec.algorithm.miniBatchSize": 1000}, "spec.algorithm.miniBatchSize"),
    BadManifest(
        "overlong-buffer-over-limit",
        {"spec.algorithm.overlongPenalty": {"enabled": True, "bufferTokens": 4096}},
        "spec.algorithm.overlongPenalty.bufferTokens",
    ),
    BadManifest("model-path-and-builtin", {"spec.model.path": "/models/x"}, "spec.model"),
    BadManifest("model-missing-source", {"spec.model": {"dtype": "float32"}}, "spec.model"),
    BadManifest("model-token-without-hub", {"spec.model.tokenSecret": {"name": "hf"}}, "spec.model.tokenSecret"),
    BadManifest("data-and-task", {"spec.data": {"path": "/data/train.jsonl"}}, "spec.task"),
    BadManifest("neither-data-nor-task", {"spec.task": DELETE}, "spec.task"),
    BadManifest(
        "task-verifier-on-data",
        {"spec.task": DELETE, "spec.data": {"path": "/data/train.jsonl"}, "spec.reward.verifier": "task"},
        "spec.reward.verifier",
    ),
    BadManifest("reward-plugin-malformed", {"spec.reward": {"plugin": "not a function"}}, "spec.reward.plugin"),
    BadManifest("batch-threshold-word", {"spec.speculative.batchThreshold": "fast"}, "spec.speculative.batchThreshold"),
    BadManifest("batch-threshold-zero", {"spec.speculative.batchThreshold": 0}, "spec.speculative.batchThreshold"),
    BadManifest("bucket-bounds-unsorted", {"spec.speculative.bucketBounds": [1, 4, 2]}, "spec.speculative.bucketBounds"),
    BadManifest("epsilon-above-one", {"spec.speculative.epsilon": 1.5}, "spec.speculative.epsilon"),
    BadManifest("speculative-mode-typo", {"spec.speculative.mode": "sometimes"}, "spec.speculative.mode"),
    BadManifest(
        "vllm-without-gpus",
        {"spec.rollout.engine": "vllm", "spec.rollout.gpusPerReplica": 0},
        "spec.rollout.engine",
    ),
    BadManifest(
        "offload-params-without-zero3",
        {"spec.trainer.deepspeed": {"zeroStage": 2, "offload": "all"}},
        "spec.trainer.deepspeed.offload",
    ),
    BadManifest(
        "vllm-with-top-p",
        {"spec.rollout.engine": "vllm", "spec.rollout.gpusPerReplica": 1, "spec.algorithm.topP": 0.9},
        "spec.algorithm.topP",
    ),
    BadManifest(
        "batch-smaller-than-group",
        {"spec.rollout.maxBatchSize": 2},
        "spec.rollout.maxBatchSize",
    ),
    BadManifest(
        "storage-relative-mount",
        {"spec.storage": [{"name": "data", "claimName": "data", "mountPath": "data"}]},
        "spec.storage[0].mountPath",
    ),
    BadManifest("zero-stage-four", {"spec.trainer.deepspeed.zeroStage": 4}, "spec.trainer.deepspeed.zeroStage"),
    BadManifest("negative-backoff", {"spec.runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
    BadManifest("name-too-long", {"metadata.name": "x" * 50}, "metadata.name"),
    BadManifest("shm-size-not-quantity", {"spec.template": {"shmSize": "lots"}}, "spec.template.shmSize", server_rejects=False),
    BadManifest("wrong-kind", {"kind": "RLJob"}, "kind", server_rejects=False),
    BadManifest("wrong-api-version", {"apiVersion": "tlt.dev/v1"}, "apiVersion", server_rejects=False),
]
