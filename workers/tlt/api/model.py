"""The ReasoningRLJob spec: the one source of truth.

The CRD schema (`tlt crd`), the docs table of fields and `tlt validate` are all
generated from these classes. Field names are snake_case in Python and camelCase in
YAML; every field has a description, and defaults live here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from tlt.api.base import Rule, SpecModel

API_GROUP = "tlt.dev"
API_VERSION = "v1alpha1"
KIND = "ReasoningRLJob"
PLURAL = "reasoningrljobs"
SINGULAR = "reasoningrljob"
SHORT_NAMES = ["rlj"]

# Child objects are named "<job>-<role>-<index>"; 40 characters leave room for that
# within the 63-character limit of label values and hostnames.
MAX_JOB_NAME_LENGTH = 40
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STRATEGY_PATTERN = r"^[1-9][0-9]*_[1-9][0-9]*_[1-9][0-9]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"

# A Kubernetes quantity: "8Gi", "500m", or a plain number.
Quantity = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]
# An object passed through to Kubernetes as is (tolerations, env valueFrom, ...).
RawObject = dict[str, Any]


def _count_set(*values) -> int:
    return sum(v is not None for v in values)


# ---------------------------------------------------------------------------------
# What to train on


class SecretKeyRef(SpecModel):
    """A key of a Secret in the job's namespace."""

    name: str = Field(min_length=1, description="Name of the Secret.")
    key: str = Field("token", min_length=1, description="Key within the Secret.")


class ModelSpec(SpecModel):
    """The policy model to train. Exactly one of `path`, `hubId` or `builtin`."""

    path: str | None = Field(
        None, min_length=1, description="Folder of a Hugging Face model on a mounted volume (config.json + safetensors)."
    )
    hub_id: str | None = Field(
        None, min_length=1, description="Hugging Face hub id, downloaded by the pods (e.g. Qwen/Qwen2.5-7B-Instruct)."
    )
    builtin: Literal["tiny-arith"] | None = Field(
        None, description="A built-in tiny model that ships trained with tlt (for laptops, CI and the quickstart)."
    )
    revision: str | None = Field(None, min_length=1, description="Hub revision (branch, tag or commit) with `hubId`.")
    token_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the hub token, with `hubId`; never copied into status, events or logs."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; `auto` is bfloat16 on GPUs and float32 on CPUs."
    )
    tokenizer: str | None = Field(None, min_length=1, description="Tokenizer folder or hub id; defaults to the model's own.")
    chat_template: str | None = Field(
        None,
        description="Chat template (Jinja) applied to prompts of real datasets; `none` sends prompts raw. "
        "Defaults to the tokenizer's own template.",
    )

    rules: ClassVar = (
        Rule(
            field="",
            check=lambda m: None
            if _count_set(m.path, m.hub_id, m.builtin) == 1
            else "set exactly one of path, hubId or builtin",
            cel="[has(self.path), has(self.hubId), has(self.builtin)].filter(x, x).size() == 1",
            cel_message="set exactly one of path, hubId or builtin",
        ),
        Rule(
            field="tokenSecret",
            check=lambda m: "tokenSecret is only used with hubId"
            if m.token_secret is not None and m.hub_id is None
            else None,
            cel="!has(self.tokenSecret) || has(self.hubId)",
            cel_message="tokenSecret is only used with hubId",
        ),
        Rule(
            field="revision",
            check=lambda m: "revision is only used with hubId" if m.revision is not None and m.hub_id is None else None,
            cel="!has(self.revision) || has(self.hubId)",
            cel_message="revision is only used with hubId",
        ),
    )


class DataSpec(SpecModel):
    """A JSONL dataset of prompts and reference answers."""

    path: str = Field(min_length=1, description="JSONL file (or folder of JSONL files) on a mounted volume.")
    prompt_field: str = Field("prompt", min_length=1, description="Field holding the prompt text.")
    answer_field: str = Field("answer", min_length=1, description="Field holding the reference answer.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Longer prompts are dropped (and counted) when loading.")
    eval_path: str | None = Field(None, min_length=1, description="Held-out JSONL; when unset, `evalFraction` is split off.")
    eval_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Fraction of `path` held out for evaluation when `evalPath` is unset."
    )


class TaskSpec(SpecModel):
    """A built-in synthetic reasoning task (no dataset needed)."""

    name: Literal["arith"] = Field("arith", description="The built-in task: multi-step arithmetic with long-tailed lengths.")
    seed: int = Field(0, ge=0, description="Seed of problem generation (train and held-out splits).")
    length_sigma: float = Field(
        1.1, gt=0.0, le=3.0,
        description="Spread of reasoning lengths: a problem's number of steps is log-normal (median 3) with this "
        "sigma, capped so the response fits `algorithm.maxResponseTokens`; larger means a heavier long tail.",
    )


class RewardSpec(SpecModel):
    """How a response is scored. Exactly one of `verifier` or `plugin`."""

    verifier: Literal["auto", "task", "math", "exact"] | None = Field(
        None,
        description="Built-in verifier: `task` (built-in task), `math` (final \\boxed{} or last number, normalized), "
        "`exact` (string match); `auto` picks `task` for a built-in task and `math` for data. Default when `plugin` is unset: auto.",
    )
    plugin: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="A reward function `package.module:function(prompt, response, answer, **meta) -> float`.",
    )
    workers: int = Field(2, ge=1, le=256, description="Reward processes, overlapped with generation.")
    timeout_seconds: float = Field(
        30.0, gt=0, description="A reward call running longer than this scores 0 and is logged (the step goes on)."
    )

    rules: ClassVar = (
        Rule(
            field="plugin",
            check=lambda r: "set either verifier or plugin, not both"
            if r.verifier is not None and r.plugin is not None
            else None,
            cel="!(has(self.verifier) && has(self.plugin))",
            cel_message="set either verifier or plugin, not both",
        ),
    )


class EvalSpec(SpecModel):
    """Held-out evaluation during training."""

    every_steps: int = Field(5, ge=0, description="Evaluate every N steps (and at the start and end); 0 turns it off.")
    num_prompts: int = Field(64, ge=1, description="Held-out prompts per evaluation.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0,
        description="Besides greedy accuracy, pass@1 is measured at this temperature (one sample per prompt, "
        "the rollout's top-p); default: the rollout's temperature; 0: greedy accuracy only.",
    )


# ---------------------------------------------------------------------------------
# The RL algorithm


class OverlongPenalty(SpecModel):
    """DAPO's soft overlong punishment: a linear penalty over the last `bufferTokens` of the limit."""

    enabled: bool = Field(False, description="Penalize responses that run into the length limit.")
    buffer_tokens: int = Field(256, ge=1, description="Length of the penalty ramp before maxResponseTokens.")
    penalty: float = Field(1.0, ge=0.0, description="Penalty at the limit (reward minus up to this much).")


class DynamicSampling(SpecModel):
    """DAPO's dynamic sampling: keep sampling until enough groups have mixed rewards."""

    enabled: bool = Field(False, description="Drop groups whose rewards are all equal and sample more prompts.")
    max_rounds: int = Field(3, ge=1, description="At most this many extra sampling rounds per step.")


LossAggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]


class AlgorithmSpec(SpecModel):
    """The policy-gradient algorithm and its hyperparameters."""

    name: Literal["grpo", "dapo"] = Field("grpo", description="GRPO, or DAPO (clip-higher, token-mean, no KL, dynamic sampling).")
    steps: int = Field(100, ge=1, description="RL steps (rollout + train) to run.")
    prompts_per_step: int = Field(32, ge=1, description="Prompts per step; each is sampled `groupSize` times.")
    group_size: int = Field(8, ge=1, description="Responses per prompt; advantages are normalized within a group.")
    max_response_tokens: int = Field(1024, ge=1, description="Length limit of a response.")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="Rollout sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Rollout nucleus sampling threshold.")
    learning_rate: float = Field(1e-6, gt=0.0, description="Policy learning rate.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's batch.")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Sequences per optimizer step; default: the whole step's batch (one update per epoch)."
    )
    kl_coef: float = Field(0.0, ge=0.0, description="Weight of the k3 KL penalty to the frozen initial policy (GRPO).")
    clip_ratio_low: float = Field(0.2, gt=0.0, lt=1.0, description="PPO clip: ratio >= 1 - clipRatioLow.")
    clip_ratio_high: float | None = Field(
        None, gt=0.0, description="PPO clip: ratio <= 1 + clipRatioHigh. Default: 0.2 for grpo, 0.28 for dapo (clip-higher)."
    )
    loss_aggregation: LossAggregation | None = Field(
        None, description="How token losses are averaged. Default: seq-mean-token-mean for grpo, token-mean for dapo."
    )
    overlong_penalty: OverlongPenalty = Field(default_factory=OverlongPenalty, description=OverlongPenalty.__doc__)
    dynamic_sampling: DynamicSampling = Field(default_factory=DynamicSampling, description=DynamicSampling.__doc__)
    seed: int = Field(0, ge=0, description="Seed of sampling, data order and initialization.")

    def model_post_init(self, _context) -> None:
        # Algorithm-dependent defaults: resolved here so every consumer sees concrete values.
        if self.clip_ratio_high is None:
            self.clip_ratio_high = 0.28 if self.name == "dapo" else 0.2
        if self.loss_aggregation is None:
            self.loss_aggregation = "token-mean" if self.name == "dapo" else "seq-mean-token-mean"

    rules: ClassVar = (
        Rule(
            field="groupSize",
            check=lambda a: f"must be >= 2 for {a.name} (advantages are normalized within a group), got {a.group_size}"
            if a.group_size < 2
            else None,
            cel="self.groupSize >= 2",
            cel_message="groupSize must be >= 2 (advantages are normalized within a group)",
        ),
        Rule(
            field="klCoef",
            check=lambda a: f"dapo uses no KL term; set klCoef: 0 (got {a.kl_coef}) or use name: grpo"
            if a.name == "dapo" and a.kl_coef > 0
            else None,
            cel="self.name != 'dapo' || !has(self.klCoef) || self.klCoef == 0.0",
            cel_message="dapo uses no KL term; set klCoef: 0 or use name: grpo",
        ),
        Rule(
            field="miniBatchSize",
            check=lambda a: (
                f"must be <= promptsPerStep x groupSize = {a.prompts_per_step * a.group_size}, got {a.mini_batch_size}"
            )
            if a.mini_batch_size is not None and a.mini_batch_size > a.prompts_per_step * a.group_size
            else None,
            cel="!has(self.miniBatchSize) || self.miniBatchSize <= self.promptsPerStep * self.groupSize",
            cel_message="miniBatchSize must be <= promptsPerStep x groupSize",
        ),
        Rule(
            field="overlongPenalty.bufferTokens",
            check=lambda a: (
                f"must be < maxResponseTokens ({a.max_response_tokens}), got {a.overlong_penalty.buffer_tokens}"
            )
            if a.overlong_penalty.enabled and a.overlong_penalty.buffer_tokens >= a.max_response_tokens
            else None,
            cel="!self.overlongPenalty.enabled || self.overlongPenalty.bufferTokens < self.maxResponseTokens",
            cel_message="overlongPenalty.bufferTokens must be < maxResponseTokens",
        ),
    )


# ---------------------------------------------------------------------------------
# Pods: templates, storage, roles


class EnvVar(SpecModel):
    """An environment variable, as in a Kubernetes container."""

    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    value_from: RawObject | None = Field(None, description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef).")


class ImagePullSecret(SpecModel):
    """A Secret of the job's namespace holding registry credentials (kubernetes.io/dockerconfigjson)."""

    name: str = Field(min_length=1, description="Name of the Secret.")


class Resources(SpecModel):
    """Container resources, as in Kubernetes (`nvidia.com/gpu` is set from gpusPerReplica)."""

    requests: dict[str, Quantity] | None = Field(None, description="Requested resources, e.g. cpu: 8, memory: 64Gi.")
    limits: dict[str, Quantity] | None = Field(None, description="Resource limits.")


class PodTemplate(SpecModel):
    """Overrides of the pods of one role (or, under `spec.template`, of every role)."""

    image: str | None = Field(None, min_length=1, description="Container image; default: the operator's worker image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="Image pull policy.")
    image_pull_secrets: list[ImagePullSecret] | None = Field(
        None, description="Registry credentials of the pods; also set on the pods' ServiceAccounts."
    )
    resources: Resources | None = Field(None, description=Resources.__doc__)
    node_selector: dict[str, str] | None = Field(None, description="Node labels the pods must match.")
    tolerations: list[RawObject] | None = Field(None, description="Kubernetes tolerations.")
    affinity: RawObject | None = Field(None, description="Kubernetes affinity.")
    env: list[EnvVar] | None = Field(None, description="Extra environment variables.")
    volumes: list[RawObject] | None = Field(None, description="Extra Kubernetes volumes.")
    volume_mounts: list[RawObject] | None = Field(None, description="Extra Kubernetes volume mounts of the main container.")
    priority_class_name: str | None = Field(None, min_length=1, description="PriorityClass of the pods.")
    scheduler_name: str | None = Field(None, min_length=1, description="Scheduler of the pods (e.g. volcano).")
    shm_size: Quantity | None = Field(
        None, description="Size of /dev/shm (memory-backed) for Ray's object store and NCCL; default 16Gi on GPUs, 1Gi on CPUs."
    )
    labels: dict[str, str] | None = Field(None, description="Extra pod labels.")
    annotations: dict[str, str] | None = Field(None, description="Extra pod annotations.")

    @field_validator("shm_size")
    @classmethod
    def _quantity(cls, v):
        if isinstance(v, str) and not re.match(QUANTITY_PATTERN, v):
            raise ValueError(f'"{v}" is not a Kubernetes quantity (e.g. 16Gi, 512Mi)')
        return v


class VolumeMount(SpecModel):
    """A PersistentVolumeClaim mounted into every pod of the job (models, data, checkpoints)."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Volume name (DNS label).")
    claim_name: str = Field(min_length=1, description="PersistentVolumeClaim in the job's namespace.")
    mount_path: str = Field(pattern=r"^/", description="Absolute mount path in the pods.")
    read_only: bool = Field(False, description="Mount read-only.")
    sub_path: str | None = Field(None, min_length=1, description="Sub-path within the volume.")


class DeepSpeedSpec(SpecModel):
    """DeepSpeed ZeRO for the trainer."""

    enabled: bool = Field(True, description="Train with DeepSpeed; false trains with plain torch (DDP).")
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage.")
    offload: Literal["none", "optimizer", "all"] = Field(
        "none", description="Offload optimizer state (zeroStage >= 1), or optimizer state and parameters (zeroStage 3), "
        "to CPU memory.",
    )

    rules: ClassVar = (
        Rule(
            field="offload",
            check=lambda d: None
            if d.offload == "none" or (d.offload == "optimizer" and d.zero_stage >= 1) or d.zero_stage == 3
            else f"offload: {d.offload} needs zeroStage {'>= 1' if d.offload == 'optimizer' else '3'} "
            f"(got {d.zero_stage}); raise zeroStage or set offload: none",
            cel="self.offload == 'none' || (self.offload == 'optimizer' && self.zeroStage >= 1) || self.zeroStage == 3",
            cel_message="offload: optimizer needs zeroStage >= 1, offload: all needs zeroStage 3",
        ),
    )


class RolloutSpec(SpecModel):
    """Rollout shards: each decodes its share of the step's requests."""

    replicas: int = Field(1, ge=1, description="Rollout shards (pods in disaggregated placement).")
    gpus_per_replica: int = Field(
        1, ge=0,
        description="GPUs per shard pod; 0 runs on CPU. The torch engine uses one of them (no tensor parallelism); "
        "vLLM splits the model over all of them (`tensor_parallel_size`).",
    )
    engine: Literal["torch", "vllm"] = Field(
        "torch",
        description="`torch`: tlt's engine, with every tlt feature (adaptive speculation per batch size, token-identical "
        "sampling, tail consolidation); `vllm`: vLLM on GPUs with a fixed EAGLE speculation config, switched off above "
        "the batch threshold (needs the worker-cuda image; see engine/VLLM.md).",
    )
    max_batch_size: int = Field(256, ge=1, description="Sequences decoded at once per shard.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0.0, le=1.0,
        description="Fraction of a rollout GPU's memory the engine may use for weights and KV cache "
        "(vLLM's `gpu_memory_utilization`).",
    )
    template: PodTemplate | None = Field(None, description="Pod overrides of rollout pods.")


class TrainerSpec(SpecModel):
    """The policy trainer."""

    replicas: int = Field(1, ge=1, description="Trainer pods (data parallel; disaggregated placement).")
    gpus_per_replica: int = Field(1, ge=0, description="GPUs per trainer pod; 0 runs on CPU.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description=DeepSpeedSpec.__doc__)
    template: PodTemplate | None = Field(None, description="Pod overrides of trainer pods.")


class DrafterSpec(SpecModel):
    """The adaptive drafter, trained on idle workers."""

    enabled: bool = Field(True, description="Train and use a drafter.")
    architecture: Literal["eagle", "ngram"] = Field(
        "eagle", description="`eagle`: a one-layer draft model on the target's hidden states; `ngram`: model-free."
    )
    init_checkpoint: str | None = Field(
        None, min_length=1,
        description="EAGLE drafter folder to start from (what `tlt drafter warmup --out DIR` writes); "
        "default: a fresh drafter. A resumed job starts from its checkpoint's drafter instead.",
    )
    dedicated_replicas: int = Field(
        0, ge=0, description="Pods that only train the drafter, on every worker's rollouts (each with gpusPerReplica GPUs)."
    )
    gpus_per_replica: int = Field(1, ge=0, description="GPUs per dedicated drafter pod.")
    train_on_idle: bool = Field(True, description="Train on workers the long tail leaves idle.")
    learning_rate: float = Field(
        1e-4, gt=0.0,
        description="Peak drafter learning rate: reached after 20 warmup optimizer steps, then decayed as "
                    "1/sqrt(1 + steps/30) (online training has no last step). A drafter started from "
                    "initCheckpoint wants a lower peak than a fresh one.",
    )
    sync_every: int = Field(1, ge=1, description="Average replicas into a new drafter version every N RL steps.")
    window_tokens: int = Field(512, ge=16, description="Train on windows of at most this many response tokens.")
    buffer_steps: int = Field(2, ge=1, description="Steps of rollouts each worker keeps as drafter training data.")
    template: PodTemplate | None = Field(None, description="Pod overrides of dedicated drafter pods.")


# The API server's version of SpeculativeSpec._strategies_are_sane, per item.
_S, _K, _V = ("int(self.split('_')[%d])" % i for i in range(3))
_STRATEGY_CEL = {
    "x-kubernetes-validations": [
        {"rule": f"{_K} <= {_V}", "message": "topk must be <= verifyTokens in steps_topk_verifyTokens"},
        {
            "rule": f"{_V} <= {_K} + ({_S} - 1) * {_K} * {_K}",
            "message": "verifyTokens exceeds the nodes a tree of steps and topk has",
        },
    ]
}


def _check_strategy(text: str) -> str:
    steps, topk, verify = (int(x) for x in text.split("_"))
    if topk > verify:
        raise ValueError(f'"{text}": topk ({topk}) must be <= verifyTokens ({verify})')
    most = topk + (steps - 1) * topk * topk
    if verify > most:
        raise ValueError(f'"{text}": verifyTokens ({verify}) exceeds the {most} nodes of a tree with steps={steps}, topk={topk}')
    return text


Strategy = Annotated[
    str, Field(pattern=STRATEGY_PATTERN, max_length=32, json_schema_extra=_STRATEGY_CEL), AfterValidator(_check_strategy)
]


class SpeculativeSpec(SpecModel):
    """Adaptive speculative decoding in the rollout engine."""

    mode: Literal["adaptive", "always", "off"] = Field(
        "adaptive", description="`adaptive` speculates only while the running batch is small; `always`; `off`."
    )
    batch_threshold: Annotated[
        Annotated[int, Field(ge=1)] | Literal["auto"],
        Field(
            json_schema_extra={
                "x-kubernetes-int-or-string": True,
                "x-kubernetes-validations": [
                    {"rule": "type(self) == int ? self >= 1 : self == 'auto'", "message": 'must be >= 1 or "auto"'}
                ],
            }
        ),
    ] = Field(
        "auto",
        description="Speculate when a shard's running batch is at or below this size; `auto` measures where speculation pays.",
    )
    strategies: list[Strategy] = Field(
        default_factory=lambda: ["4_1_4", "6_1_6", "4_2_8", "6_4_16"],
        min_length=1,
        max_length=16,
        description="Bandit arms, each `steps_topk_verifyTokens` (draft depth, candidates per level, tokens verified).",
    )
    bucket_bounds: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256],
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Upper bounds of running-batch-size buckets; the bandit learns per bucket.",
    )
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="Exploration rate of the bandit: the share of its decisions that may try another arm; an arm k times slower than the leader is tried 1/k as often.")
    window: int = Field(32, ge=1, description="Rewards per arm the bandit keeps (sliding window; median is used).")
    max_verify_tokens_per_batch: int = Field(
        512, ge=1, description="Compute guard: verifyTokens x running batch stays within this budget."
    )

    rules: ClassVar = (
        Rule(
            field="bucketBounds",
            check=lambda s: None
            if all(a < b for a, b in zip(s.bucket_bounds, s.bucket_bounds[1:]))
            else f"must be strictly increasing, got {s.bucket_bounds}",
            # With list-type "set" (unique items), sorted means strictly increasing.
            cel="self.bucketBounds.isSorted()",
            cel_message="bucketBounds must be strictly increasing",
        ),
    )


class ConsolidateTail(SpecModel):
    """Tail consolidation: move the last sequences onto fewer shards."""

    enabled: bool = Field(True, description="Consolidate the tail onto fewer shards.")
    threshold: int = Field(
        8, ge=1, description="Consolidate when shards run this many sequences or fewer each (moves re-prefill the prefix)."
    )


class ElasticitySpec(SpecModel):
    """How idle workers are reclaimed."""

    lend_idle: bool = Field(True, description="Lend drained rollout shards (and idle trainers) to drafter training.")
    consolidate_tail: ConsolidateTail = Field(default_factory=ConsolidateTail, description=ConsolidateTail.__doc__)


class CheckpointSpec(SpecModel):
    """Checkpoints of policy, optimizer, drafter, data position and RNG state."""

    every_steps: int = Field(1, ge=1, description="Checkpoint every N steps.")
    path: str | None = Field(None, min_length=1, description="Folder for checkpoints; default: `<output.path>/checkpoints`.")
    keep: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")


class RunPolicy(SpecModel):
    """Lifecycle of the job (as in Kubeflow's runPolicy)."""

    suspend: bool = Field(False, description="Suspended: pods deleted, progress kept; false resumes.")
    backoff_limit: int = Field(
        3, ge=0,
        description="Pod failures tolerated before the job fails. Disruptions (pods with a DisruptionTarget or Kueue's "
        "TerminationTarget condition: preemption, eviction, drain) and the operator's own deletions are not failures.",
    )
    max_restarts: int | None = Field(
        None, ge=0,
        description="Restarts of the whole job (a head pod failure restarts every pod from the last checkpoint) tolerated "
        "before it fails, as JobSet's failurePolicy.maxRestarts; unset: only backoffLimit bounds them. A failed rollout "
        "or drafter pod is replaced alone and is no restart.",
    )
    terminating_timeout_seconds: int = Field(
        120, ge=0,
        description="A pod still terminating this long after its deletion grace period ended (its node is lost) is "
        "replaced by a new pod under a new name.",
    )
    active_deadline_seconds: int | None = Field(None, ge=1, description="The job fails when it has run this long.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the job this long after it finished.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description=CheckpointSpec.__doc__)


class OutputSpec(SpecModel):
    """Where the trained policy, drafter and report go."""

    path: str = Field("/tlt/output", min_length=1, description="Output folder (a mounted volume on clusters).")
    export_drafter: bool = Field(True, description="Also export the final drafter (EAGLE folder layout for vLLM/SGLang).")


class ReasoningRLJobSpec(SpecModel):
    """Desired state of a reasoning-RL job."""

    model: ModelSpec = Field(description=ModelSpec.__doc__)
    data: DataSpec | None = Field(None, description=DataSpec.__doc__ + " Exactly one of data or task.")
    task: TaskSpec | None = Field(None, description=TaskSpec.__doc__ + " Exactly one of data or task.")
    reward: RewardSpec = Field(default_factory=RewardSpec, description=RewardSpec.__doc__)
    eval: EvalSpec = Field(default_factory=EvalSpec, description=EvalSpec.__doc__)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec, description=AlgorithmSpec.__doc__)
    placement: Literal["disaggregated", "colocated"] = Field(
        "disaggregated",
        description="`disaggregated`: separate rollout, trainer and drafter pods; "
        "`colocated`: every worker runs rollout, then training (veRL's hybrid engine).",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description=RolloutSpec.__doc__)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description=TrainerSpec.__doc__)
    drafter: DrafterSpec = Field(default_factory=DrafterSpec, description=DrafterSpec.__doc__)
    speculative: SpeculativeSpec = Field(default_factory=SpeculativeSpec, description=SpeculativeSpec.__doc__)
    elasticity: ElasticitySpec = Field(default_factory=ElasticitySpec, description=ElasticitySpec.__doc__)
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description=RunPolicy.__doc__)
    output: OutputSpec = Field(default_factory=OutputSpec, description=OutputSpec.__doc__)
    storage: list[VolumeMount] = Field(default_factory=list, max_length=32, description=VolumeMount.__doc__)
    template: PodTemplate | None = Field(None, description="Pod overrides of every role; a role's own template wins.")
    queue_name: str | None = Field(
        None, min_length=1, description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on the pods."
    )

    rules: ClassVar = (
        Rule(
            field="task",
            check=lambda s: None if _count_set(s.data, s.task) == 1 else "set exactly one of data or task",
            cel="has(self.data) != has(self.task)",
            cel_message="set exactly one of data or task",
        ),
        Rule(
            field="reward.verifier",
            check=lambda s: 'verifier "task" needs a built-in task (spec.task)'
            if s.reward.verifier == "task" and s.task is None
            else None,
            cel="!has(self.reward) || !has(self.reward.verifier) || self.reward.verifier != 'task' || has(self.task)",
            cel_message='reward verifier "task" needs a built-in task (spec.task)',
        ),
        Rule(
            field="rollout.maxBatchSize",
            check=lambda s: (
                f"must be >= groupSize ({s.algorithm.group_size}): all samples of a prompt group run on one shard, "
                f"got {s.rollout.max_batch_size}"
            )
            if s.rollout.max_batch_size < s.algorithm.group_size
            else None,
            cel="self.rollout.maxBatchSize >= self.algorithm.groupSize",
            cel_message="rollout.maxBatchSize must be >= algorithm.groupSize (a prompt group runs on one shard)",
        ),
        Rule(
            field="drafter.architecture",
            check=lambda s: "ngram drafters are not trained: set dedicatedReplicas: 0 or architecture: eagle"
            if s.drafter.enabled and s.drafter.architecture == "ngram" and s.drafter.dedicated_replicas > 0
            else None,
            cel="!self.drafter.enabled || self.drafter.architecture != 'ngram' || self.drafter.dedicatedReplicas == 0",
            cel_message="ngram drafters are not trained: dedicatedReplicas must be 0",
        ),
        Rule(
            field="rollout.engine",
            check=lambda s: "the vllm engine needs GPUs: set rollout.gpusPerReplica >= 1 or engine: torch"
            if s.rollout.engine == "vllm" and s.rollout.gpus_per_replica == 0
            else None,
            cel="self.rollout.engine != 'vllm' || self.rollout.gpusPerReplica >= 1",
            cel_message="the vllm engine needs GPUs: set rollout.gpusPerReplica >= 1 or engine: torch",
        ),
        Rule(
            field="algorithm.topP",
            check=lambda s: (
                f"the vllm engine reports log-probs renormalized within the top-p nucleus, which are not the "
                f"trainer's; set algorithm.topP: 1 (got {s.algorithm.top_p}) or rollout.engine: torch"
            )
            if s.rollout.engine == "vllm" and s.algorithm.top_p < 1
            else None,
            cel="self.rollout.engine != 'vllm' || !has(self.algorithm.topP) || self.algorithm.topP == 1.0",
            cel_message="the vllm engine needs algorithm.topP: 1 (its log-probs are renormalized within the nucleus)",
        ),
    )


# ---------------------------------------------------------------------------------
# Status (written by the operator and the coordinator)


class Condition(SpecModel):
    """A condition, as in Kubernetes (Created, Running, Updating, Suspended, Succeeded, Failed, Invalid, Degraded,
    Blocked: children of the job's names owned by another object; ReconcileError: the API server refused a write)."""

    type: str = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(min_length=1, description="CamelCase reason an SRE can grep (never empty).")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="When the status last changed (RFC 3339).")


class RoleCounts(SpecModel):
    """Workers of one role."""

    desired: int = Field(0, ge=0, description="Pods wanted.")
    ready: int = Field(0, ge=0, description="Pods ready.")
    lent: int = Field(0, ge=0, description="Workers of this role lent to drafter training now.")


class RoleStatus(SpecModel):
    """Worker counts per role."""

    rollout: RoleCounts = Field(default_factory=RoleCounts, description="Rollout workers.")
    trainer: RoleCounts = Field(default_factory=RoleCounts, description="Trainer workers.")
    drafter: RoleCounts = Field(default_factory=RoleCounts, description="Dedicated drafter workers.")


class ShardProgress(SpecModel):
    """Live progress of one rollout shard, reported by the coordinator."""

    shard: int = Field(ge=0, description="Shard index.")
    running: int = Field(0, ge=0, description="Sequences decoding now.")
    waiting: int = Field(0, ge=0, description="Requests queued.")
    finished: int = Field(0, ge=0, description="Sequences finished this step.")
    generated_tokens: int = Field(0, ge=0, description="Tokens generated this step.")
    speculating: bool = Field(False, description="Speculation is on.")
    role: str = Field("rollout", description="Role the worker runs now (rollout, drafter, trainer, idle).")


class ProgressStatus(SpecModel):
    """Live rollout progress, rate-limited."""

    step: int = Field(0, ge=0, description="Step the progress belongs to.")
    phase: str = Field("", description="Phase of the step: rollout, reward, train, sync.")
    batch_threshold: int | None = Field(
        None, ge=1, description="Speculation's batch threshold the shards run (`auto` as measured); tail consolidation keeps each shard within it."
    )
    shards: list[ShardProgress] = Field(default_factory=list, description="Per-shard progress.")
    updated_at: str | None = Field(None, description="When the coordinator wrote it (RFC 3339).")


class DrafterStatus(SpecModel):
    """The drafter in use."""

    version: int = Field(0, ge=0, description="Drafter version pushed to the rollout engines.")
    acceptance_length: float = Field(0.0, ge=0.0, description="Mean accepted tokens per verification, last step.")


class ReasoningRLJobStatus(SpecModel):
    """Observed state of a reasoning-RL job."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    phase: Literal["Pending", "Created", "Running", "Suspended", "Succeeded", "Failed", "Invalid"] = Field(
        "Pending", description="Phase of the job."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions of the job, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int = Field(0, ge=0, description="The spec generation this status describes.")
    step: int = Field(0, ge=0, description="Completed RL steps.")
    total_steps: int = Field(0, ge=0, description="Steps the job runs.")
    roles: RoleStatus = Field(default_factory=RoleStatus, description=RoleStatus.__doc__)
    progress: ProgressStatus | None = Field(None, description=ProgressStatus.__doc__)
    drafter: DrafterStatus = Field(default_factory=DrafterStatus, description=DrafterStatus.__doc__)
    failures: int = Field(0, ge=0, description="Pod failures and deletions counted against runPolicy.backoffLimit.")
    restarts: int = Field(0, ge=0, description="Restarts of the whole job after its head pod failed (runPolicy.maxRestarts).")
    last_failure_time: str | None = Field(
        None, description="When the last counted pod failure was seen (RFC 3339); replacements back off from it."
    )
    replacing: list[str] = Field(
        default_factory=list, description="Pods that failed or were deleted, counted, and waiting to be recreated after backoff."
    )
    start_time: str | None = Field(None, description="When the job started running (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job finished (RFC 3339).")
    # Preformatted for `kubectl get rlj` printer columns, written with the rest of the status.
    step_text: str = Field("", description="completed/total steps, e.g. 3/10.")
    rollout_text: str = Field("", description="ready/desired rollout workers and lent ones, e.g. 4/4 (2 lent).")


# ---------------------------------------------------------------------------------
# The whole object


class ObjectMeta(SpecModel):
    """The parts of Kubernetes metadata that tlt reads; the rest is kept as is."""

    model_config = SpecModel.model_config | {"extra": "allow"}

    name: str = Field(pattern=DNS_LABEL, max_length=MAX_JOB_NAME_LENGTH, description="Job name (DNS label, <= 40 chars).")
    namespace: str | None = Field(None, pattern=DNS_LABEL, max_length=63, description="Namespace.")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ReasoningRLJob(SpecModel):
    """A reasoning-RL training job."""

    api_version: Literal["tlt.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ReasoningRLJob"]
    metadata: ObjectMeta
    spec: ReasoningRLJobSpec
    status: ReasoningRLJobStatus | None = None
