"""The spec does not lie: every leaf field of the ReasoningRLJob spec changes what tlt does.

The test walks every leaf field of `ReasoningRLJobSpec` (fields of list items and of
every pod template included) and fails unless the field has an entry in FIELDS:

- `Changes(observable, value)`: setting the field to `value` changes what one of tlt's
  own functions produces from the spec (the pods the operator creates, the arguments
  the rollout engine gets, the trainer's configuration, the elastic policy's decisions,
  the prompts, the advantages, ...): the behaviour is shown here.
- `ReadIn(module, code)`: the field is read by code that only runs inside a job (the
  RL loop, the operator's reconcile, the trainer start-up); the test checks that the
  exact expression is in that module, and the entry names the test that shows the
  behaviour.

EXCEPTIONS lists fields that are pure metadata (changing nothing but what is shown),
each with its reason. A field added to the model without an entry fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from specs import manifest, with_fields

from tlt.api.load import parse_job
from tlt.api.model import PodTemplate, ReasoningRLJobSpec

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------
# What tlt does with a spec, as plain values


def _job(spec: ReasoningRLJobSpec):
    from tlt.api.model import ReasoningRLJob

    return ReasoningRLJob.model_validate({"apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob",
                                          "metadata": {"name": "fields", "namespace": "ns"},
                                          "spec": spec.to_manifest()})


def children(spec):
    """Every object the operator creates for the job, except the ConfigMap holding the spec itself
    (and the pods' hash of it), which would show any change."""
    from tlt_operator.builders import ANNOTATION_POD_HASH, build_children

    out = []
    for obj in build_children(_job(spec)):
        if obj["kind"] == "ConfigMap":
            continue
        obj = json.loads(json.dumps(obj))
        obj["metadata"].get("annotations", {}).pop(ANNOTATION_POD_HASH, None)
        out.append(obj)
    return out


_DRAFTER_DIR = None


def rollout_engine(spec):
    """What a rollout shard runs: the speculation policy of the torch engine, vLLM's arguments, the preflight."""
    global _DRAFTER_DIR
    from tlt.coordinator.shard import preflight, speculation_controller
    from tlt.engine.vllm_config import llm_kwargs

    if _DRAFTER_DIR is None:
        import tempfile

        _DRAFTER_DIR = Path(tempfile.mkdtemp(prefix="tlt-fields-"))
        (_DRAFTER_DIR / "config.json").write_text("{}")
    controller = speculation_controller(spec, 4)
    policy = None if controller is None else (type(controller).__name__, repr(vars(controller)))
    return policy, llm_kwargs(spec, "/m", drafter_dir=_DRAFTER_DIR, threshold=8, max_model_len=512), preflight(spec)


def trainer_config(spec):
    from tlt.trainer.policy import TrainerConfig

    return dataclasses.asdict(TrainerConfig.from_algorithm(spec.algorithm))


def advantages(spec):
    """Shaped rewards and advantages of a fixed group of responses (one runs into the length limit)."""
    from tlt.trainer.algorithm import step_advantages

    raw = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    lengths = torch.tensor([10.0, float(spec.algorithm.max_response_tokens), 5.0, 900.0, 40.0, 60.0, 700.0, 30.0])
    return step_advantages(raw, lengths, spec.algorithm).tolist()


def elastic(spec):
    """The elastic policy's decisions for a step's rollout tail (two shards drained, two in the tail)."""
    from tlt.api.topology import shard_role
    from tlt.elastic import Progress, ShardState, Worker, plan

    role = shard_role(spec)
    states = [ShardState(), ShardState(running=3), ShardState(running=2), ShardState(finished=5)]
    workers = [Worker(name=f"{role}-{i}", role=role, index=i, shard=states[i % 4]) for i in range(spec.rollout.replicas)]
    return [repr(a) for a in plan(spec, workers, Progress(step=1, phase="rollout"))]


_TOKENIZER = None


def prompts(spec):
    """The training and held-out prompts a run draws (token ids)."""
    global _TOKENIZER
    from tlt.coordinator.prompts import PromptSource, reward_name

    if _TOKENIZER is None:
        import tempfile

        from transformers import AutoTokenizer

        from tlt.tasks.tokenizer import save_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="tlt-fields-tok-"))
        save_tokenizer(folder)
        _TOKENIZER = AutoTokenizer.from_pretrained(str(folder))
    source = PromptSource(spec, _TOKENIZER)
    items, _ = source.take(0, 4)
    return ([(i.ids, i.answer) for i in items], [(i.ids, i.answer) for i in source.heldout], len(source.train),
            reward_name(spec))


@dataclass(frozen=True)
class Changes:
    observable: typing.Callable
    value: typing.Any
    base: str = "task"  # "task": the built-in task; "data": a JSONL dataset (DATA_SPEC)
    also: tuple = ()  # other fields set with it (in both specs), when the value needs them


@dataclass(frozen=True)
class ReadIn:
    module: str
    code: str
    shown_by: str  # "tests/file.py::test_name" showing the behaviour


# ---------------------------------------------------------------------------------
# Pod templates: the same fields under spec.template and each role's template

TEMPLATE_VALUES = {
    "image": "registry.example/tlt:custom",
    "image_pull_policy": "Always",
    "image_pull_secrets.name": [{"name": "regcred"}],
    "resources.requests": {"memory": "64Gi"},
    "resources.limits": {"memory": "80Gi"},
    "node_selector": {"pool": "a100"},
    "tolerations": [{"key": "spot", "operator": "Exists"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
    "env.name": [{"name": "EXTRA", "value": "1"}],
    "env.value": [{"name": "EXTRA", "value": "1"}],
    "env.value_from": [{"name": "EXTRA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "volume_mounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "priority_class_name": "high",
    "scheduler_name": "volcano",
    "shm_size": "2Gi",
    "labels": {"team": "rl"},
    "annotations": {"owner": "rl"},
}
TEMPLATE_ROLES = {"template": {}, "rollout.template": {}, "trainer.template": {},
                  "drafter.template": {"drafter.dedicatedReplicas": 1}}


def _template_entries() -> dict:
    out = {}
    for prefix, also in TEMPLATE_ROLES.items():
        for leaf, value in TEMPLATE_VALUES.items():
            out[f"{prefix}.{leaf}"] = Changes(children, value, also=tuple(also.items()))
    return out


SHORT = (("algorithm.steps", 2),)  # a short job draws few problems from the task
DATA_SPEC = {"data": {"path": "DATA/train.jsonl", "promptField": "problem", "answerField": "solution"}}

FIELDS: dict[str, Changes | ReadIn] = {
    # what to train on
    "model.path": ReadIn("tlt.models.resolve", "folder = Path(model.path)", "tests/test_coordinator.py::test_short_run_trains_lends_and_writes_everything"),
    "model.hub_id": ReadIn("tlt.models.resolve", "snapshot_download(model.hub_id, revision=model.revision",
                           "tests/test_worker_pod.py"),
    "model.builtin": ReadIn("tlt.models.resolve", "_builtin(model.builtin", "tests/test_coordinator.py"),
    "model.revision": ReadIn("tlt.models.resolve", "revision=model.revision", "tests/test_worker_pod.py"),
    "model.token_secret.name": Changes(children, "hub-token", also=(("model", {"hubId": "org/m", "tokenSecret": {"name": "x"}}),)),
    "model.token_secret.key": Changes(children, "hf", also=(("model", {"hubId": "org/m", "tokenSecret": {"name": "x"}}),)),
    "model.dtype": Changes(rollout_engine, "float16"),
    "model.tokenizer": ReadIn("tlt.coordinator.prompts", "AutoTokenizer.from_pretrained(spec.model.tokenizer or str(model_dir))",
                              "tests/test_spec_fields.py::test_model_tokenizer_is_the_tokenizer_a_run_loads"),
    "model.chat_template": Changes(prompts, "{{ messages[0]['content'] }} =", base="data", also=SHORT),
    "data.path": Changes(prompts, "DATA/other.jsonl", base="data", also=SHORT),
    "data.prompt_field": Changes(prompts, "question", base="data", also=SHORT),
    "data.answer_field": Changes(prompts, "final", base="data", also=SHORT),
    "data.max_prompt_tokens": Changes(prompts, 30, base="data", also=SHORT),
    "data.eval_path": Changes(prompts, "DATA/other.jsonl", base="data", also=SHORT),
    "data.eval_fraction": Changes(prompts, 0.5, base="data", also=SHORT),
    "task.name": ReadIn("tlt.coordinator.prompts", "get_task(spec.task.name", "tests/test_tasks.py"),
    "task.seed": Changes(prompts, 5, also=SHORT),
    "task.length_sigma": Changes(prompts, 2.5, also=SHORT),
    "reward.verifier": Changes(prompts, "exact", also=SHORT),
    "reward.plugin": Changes(prompts, "my_rewards:score", also=SHORT),
    "reward.workers": ReadIn("tlt.coordinator.loop", "workers=spec.reward.workers", "tests/test_rewards.py"),
    "reward.timeout_seconds": ReadIn("tlt.coordinator.loop", "timeout=spec.reward.timeout_seconds",
                                     "tests/test_rewards.py::test_a_reward_running_past_the_timeout_scores_zero_is_logged_and_frees_its_worker"),
    "eval.every_steps": ReadIn("tlt.coordinator.loop", "step % spec.eval.every_steps == 0", "tests/test_coordinator.py"),
    "eval.num_prompts": Changes(prompts, 3, also=SHORT),
    "eval.temperature": ReadIn("tlt.coordinator.loop", "a.temperature if ev.temperature is None else ev.temperature",
                               "tests/test_eval.py"),
    # the algorithm
    "algorithm.name": Changes(trainer_config, "dapo"),
    "algorithm.steps": ReadIn("tlt.coordinator.loop", "for step in range(start_step + 1, spec.algorithm.steps + 1)",
                              "tests/test_coordinator.py"),
    "algorithm.prompts_per_step": ReadIn("tlt.coordinator.loop", "want = a.prompts_per_step", "tests/test_coordinator.py"),
    "algorithm.group_size": Changes(advantages, 2),
    "algorithm.max_response_tokens": Changes(advantages, 900, also=(("algorithm.overlongPenalty", {"enabled": True, "bufferTokens": 100}),)),
    "algorithm.temperature": Changes(trainer_config, 0.7),
    "algorithm.top_p": ReadIn("tlt.coordinator.loop", "top_p=a.top_p", "tests/test_coordinator.py"),
    "algorithm.learning_rate": Changes(trainer_config, 3e-6),
    "algorithm.ppo_epochs": Changes(trainer_config, 2),
    "algorithm.mini_batch_size": Changes(trainer_config, 4),
    "algorithm.kl_coef": Changes(trainer_config, 0.01),
    "algorithm.clip_ratio_low": Changes(trainer_config, 0.1),
    "algorithm.clip_ratio_high": Changes(trainer_config, 0.4),
    "algorithm.loss_aggregation": Changes(trainer_config, "token-mean"),
    "algorithm.overlong_penalty.enabled": Changes(advantages, True, also=(("algorithm.maxResponseTokens", 1000),)),
    "algorithm.overlong_penalty.buffer_tokens": Changes(advantages, 500, also=(("algorithm.overlongPenalty.enabled", True), ("algorithm.maxResponseTokens", 1000))),
    "algorithm.overlong_penalty.penalty": Changes(advantages, 0.5, also=(("algorithm.overlongPenalty.enabled", True), ("algorithm.maxResponseTokens", 1000))),
    "algorithm.dynamic_sampling.enabled": ReadIn("tlt.coordinator.loop", "if not a.dynamic_sampling.enabled:",
                                                 "tests/test_losses.py"),
    "algorithm.dynamic_sampling.max_rounds": Changes(prompts, 1, also=SHORT),
    "algorithm.seed": Changes(trainer_config, 3),
    # workers
    "placement": Changes(children, "colocated"),
    "rollout.replicas": Changes(children, 3),
    "rollout.gpus_per_replica": Changes(rollout_engine, 2),
    "rollout.engine": Changes(rollout_engine, "vllm"),
    "rollout.max_batch_size": Changes(rollout_engine, 64),
    "rollout.gpu_memory_utilization": Changes(rollout_engine, 0.5),
    "trainer.replicas": Changes(children, 2),
    "trainer.gpus_per_replica": Changes(children, 4),
    "trainer.deepspeed.enabled": ReadIn("tlt.trainer.policy", "ds.enabled", "tests/test_trainer.py"),
    "trainer.deepspeed.zero_stage": ReadIn("tlt.trainer.policy", "ds.zero_stage", "tests/test_trainer.py"),
    "trainer.deepspeed.offload": ReadIn("tlt.trainer.policy", "ds.offload", "tests/test_trainer.py"),
    "drafter.enabled": Changes(rollout_engine, False),
    "drafter.architecture": Changes(rollout_engine, "ngram"),
    "drafter.init_checkpoint": Changes(rollout_engine, "/nowhere/drafter"),
    "drafter.dedicated_replicas": Changes(children, 2),
    "drafter.gpus_per_replica": Changes(children, 2, also=(("drafter.dedicatedReplicas", 1),)),
    "drafter.train_on_idle": Changes(elastic, False, also=(("rollout.replicas", 4),)),
    "drafter.learning_rate": ReadIn("tlt.coordinator.shard", "TrainConfig(lr=spec.drafter.learning_rate, decay_steps=DRAFTER_LR_DECAY_STEPS)", "tests/test_drafter.py"),
    "drafter.sync_every": ReadIn("tlt.coordinator.loop", "step % spec.drafter.sync_every == 0", "tests/test_coordinator.py"),
    "drafter.window_tokens": ReadIn("tlt.coordinator.shard", "max_response_tokens=self.spec.drafter.window_tokens",
                                    "tests/test_drafter.py"),
    "drafter.buffer_steps": ReadIn("tlt.coordinator.shard", "RolloutBuffer(keep_steps=spec.drafter.buffer_steps)",
                                   "tests/test_drafter.py"),
    # speculation and elasticity
    "speculative.mode": Changes(rollout_engine, "always"),
    "speculative.batch_threshold": ReadIn("tlt.coordinator.loop", "value = self.spec.speculative.batch_threshold",
                                          "tests/test_coordinator.py"),
    "speculative.strategies": Changes(rollout_engine, ["3_1_3"]),
    "speculative.bucket_bounds": Changes(rollout_engine, [1, 4, 16]),
    "speculative.epsilon": Changes(rollout_engine, 0.3),
    "speculative.window": Changes(rollout_engine, 8),
    "speculative.max_verify_tokens_per_batch": Changes(rollout_engine, 64),
    "elasticity.lend_idle": Changes(elastic, False, also=(("rollout.replicas", 4),)),
    "elasticity.consolidate_tail.enabled": Changes(elastic, False, also=(("rollout.replicas", 4),)),
    "elasticity.consolidate_tail.threshold": Changes(elastic, 1, also=(("rollout.replicas", 4),)),
    # lifecycle and output
    "run_policy.suspend": ReadIn("tlt_operator.reconcile", "spec.run_policy.suspend", "tests/test_operator_reconcile.py"),
    "run_policy.backoff_limit": ReadIn("tlt_operator.reconcile", "backoff_limit", "tests/test_operator_reconcile.py"),
    "run_policy.max_restarts": ReadIn("tlt_operator.reconcile", "max_restarts", "tests/test_operator_reconcile.py"),
    "run_policy.terminating_timeout_seconds": ReadIn("tlt_operator.reconcile", "terminating_timeout_seconds",
                                                     "tests/test_operator_reconcile.py"),
    "run_policy.active_deadline_seconds": ReadIn("tlt_operator.reconcile", "active_deadline_seconds",
                                                 "tests/test_operator_reconcile.py"),
    "run_policy.ttl_seconds_after_finished": ReadIn("tlt_operator.reconcile", "ttl_seconds_after_finished",
                                                    "tests/test_operator_reconcile.py"),
    "run_policy.checkpoint.every_steps": ReadIn("tlt.coordinator.loop", "step % spec.run_policy.checkpoint.every_steps == 0",
                                                "tests/test_coordinator.py"),
    "run_policy.checkpoint.path": ReadIn("tlt.coordinator.loop", "spec.run_policy.checkpoint.path",
                                         "tests/test_checkpoint_path.py::test_checkpoints_go_to_runpolicy_checkpoint_path_and_resume_from_there"),
    "run_policy.checkpoint.keep": ReadIn("tlt.coordinator.loop", "keep = self.spec.run_policy.checkpoint.keep",
                                         "tests/test_checkpoint_path.py::test_checkpoints_go_to_runpolicy_checkpoint_path_and_resume_from_there"),
    "output.path": ReadIn("tlt.coordinator.loop", "run_dir or self.spec.output.path", "tests/test_coordinator.py"),
    "output.export_drafter": ReadIn("tlt.coordinator.loop", "if self.spec.output.export_drafter", "tests/test_coordinator.py"),
    "storage.name": Changes(children, [{"name": "models", "claimName": "c", "mountPath": "/models"}]),
    "storage.claim_name": Changes(children, [{"name": "m", "claimName": "models", "mountPath": "/models"}]),
    "storage.mount_path": Changes(children, [{"name": "m", "claimName": "c", "mountPath": "/models"}]),
    "storage.read_only": Changes(children, [{"name": "m", "claimName": "c", "mountPath": "/models", "readOnly": True}]),
    "storage.sub_path": Changes(children, [{"name": "m", "claimName": "c", "mountPath": "/models", "subPath": "x"}]),
    "queue_name": Changes(children, "team-queue"),
    **_template_entries(),
}

# Pure metadata: shown to people, changing nothing tlt does.
EXCEPTIONS: dict[str, str] = {}


# ---------------------------------------------------------------------------------
# The walk


def _models(annotation) -> list[type[BaseModel]]:
    found = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        found += [a for a in typing.get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)]
    return found


def leaf_fields(model: type[BaseModel] = ReasoningRLJobSpec, prefix: str = "") -> list[str]:
    """Dotted snake_case paths of every leaf field (fields of list items and nested models included)."""
    out = []
    for name, info in model.model_fields.items():
        subs = _models(info.annotation)
        out += leaf_fields(subs[0], f"{prefix}{name}.") if subs else [f"{prefix}{name}"]
    return out


def test_every_leaf_field_changes_behaviour_or_is_a_documented_exception():
    fields = set(leaf_fields())
    assert len(fields) > 100 and "rollout.template.resources.limits" in fields  # the walk reaches everything
    missing = sorted(fields - set(FIELDS) - set(EXCEPTIONS))
    assert not missing, f"spec fields nothing is shown to read (add them to FIELDS, or remove them): {missing}"
    stale = sorted((set(FIELDS) | set(EXCEPTIONS)) - fields)
    assert not stale, f"entries for fields the model no longer has: {stale}"
    assert set(FIELDS).isdisjoint(EXCEPTIONS)
    assert all(len(reason) > 20 for reason in EXCEPTIONS.values())


def test_every_template_field_has_a_value_here():
    assert set(TEMPLATE_VALUES) == set(leaf_fields(PodTemplate))


def _camel(path: str) -> str:
    return ".".join(p.split("_")[0] + "".join(w.title() for w in p.split("_")[1:]) for p in path.split("."))


def _field_of(path: str) -> str:
    """The spec field a leaf's value is set on: a list's items are set through the list."""
    parts = path.split(".")
    node: type[BaseModel] = ReasoningRLJobSpec
    for i, part in enumerate(parts):
        info = node.model_fields[part]
        if typing.get_origin(info.annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(info.annotation)):
            return ".".join(parts[: i + 1])
        subs = _models(info.annotation)
        if not subs:
            break
        node = subs[0]
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rows = [{"problem": f"What is {i} + {i}?" + " Think." * (i % 5), "solution": str(2 * i),
             "question": f"Q{i}: {i} times 3?", "final": str(3 * i), "prompt": f"p{i}", "answer": str(i)}
            for i in range(40)]
    for name, chosen in (("train.jsonl", rows), ("other.jsonl", rows[::-1][:20])):
        (folder / name).write_text("\n".join(json.dumps(r) for r in chosen) + "\n")
    return folder


def _resolve(value, data_dir):
    if isinstance(value, str) and value.startswith("DATA/"):
        return str(data_dir / value[5:])
    if isinstance(value, dict):
        return {k: _resolve(v, data_dir) for k, v in value.items()}
    return value


def _spec(entry: Changes, data_dir, extra: dict):
    body = manifest("fields", DATA_SPEC if entry.base == "data" else None)
    if entry.base == "data":
        body["spec"].pop("task")
        body["spec"]["data"] = _resolve(body["spec"]["data"], data_dir)
    changes = {_camel(k): _resolve(v, data_dir) for k, v in (*entry.also, *extra.items())}
    return parse_job(with_fields(body, **changes)).spec


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def score(prompt, response, answer, **meta):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))


SHOWN = sorted((p, e) for p, e in FIELDS.items() if isinstance(e, Changes))


@pytest.mark.parametrize("path, entry", SHOWN, ids=[p for p, _ in SHOWN])
def test_setting_the_field_changes_what_tlt_does(path, entry, data_dir, plugin):
    target = _field_of(path)
    default = _spec(entry, data_dir, {})
    changed = _spec(entry, data_dir, {target: entry.value})
    assert entry.observable(changed) != entry.observable(default), f"{path} = {entry.value!r} changed nothing"


READ = sorted((p, e) for p, e in FIELDS.items() if isinstance(e, ReadIn))


@pytest.mark.parametrize("path, entry", READ, ids=[p for p, _ in READ])
def test_a_field_read_inside_a_job_is_read_where_the_entry_says(path, entry):
    source = inspect.getsource(importlib.import_module(entry.module))
    assert entry.code in source, f"{path}: `{entry.code}` is no longer in {entry.module}"
    test_file, _, test_name = entry.shown_by.partition("::")
    shown = (ROOT / test_file).read_text()
    assert not test_name or f"def {test_name}(" in shown, f"{path}: {entry.shown_by} does not exist"


def test_model_tokenizer_is_the_tokenizer_a_run_loads(tmp_path):
    from tlt.coordinator.prompts import load_tokenizer
    from tlt.tasks.tokenizer import save_tokenizer

    save_tokenizer(tmp_path / "tok")
    (tmp_path / "model").mkdir()  # a model folder without a tokenizer of its own
    spec = parse_job(with_fields(manifest(), **{"model": {"path": str(tmp_path / "model"), "tokenizer": str(tmp_path / "tok")}})).spec
    from transformers import AutoTokenizer

    assert load_tokenizer(spec, tmp_path / "model")("12+3")["input_ids"] == \
        AutoTokenizer.from_pretrained(str(tmp_path / "tok"))("12+3")["input_ids"]
    with pytest.raises((OSError, ValueError)):  # without it, the model folder's own is looked for
        load_tokenizer(parse_job(with_fields(manifest(), **{"model": {"path": str(tmp_path / "model")}})).spec, tmp_path / "model")
