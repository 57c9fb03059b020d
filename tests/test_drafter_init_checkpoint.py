"""drafter.initCheckpoint: a shard starts from a `tlt drafter warmup` folder (a resumed job from its checkpoint)."""

import pytest
import torch
from specs import manifest, spec_of

from tlt.coordinator.shard import RolloutShard, initial_drafter, preflight
from tlt.drafter.warmup import WarmupConfig, warmup
from tlt.models import ModelConfig, random_model, save_model
from tlt.models.config import ConfigError
from tlt.models.drafter import EagleDrafter

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """A tiny policy and the folder `tlt drafter warmup` wrote for it."""
    root = tmp_path_factory.mktemp("warm")
    target = random_model(CONFIG, seed=3)
    save_model(target, root / "policy")
    cfg = WarmupConfig(prompts=4, max_tokens=12, steps=3, warmup_steps=1, checkpoint_every=100, num_slots=4)
    warmup(target, lambda: [[1, 2, 3 + i] for i in range(4)], root / "drafter", cfg, stop_ids=[0], progress=False,
           log=lambda s: None)
    return root


def job_spec(root, **changes):
    return spec_of(manifest(), **{"model": {"path": str(root / "policy"), "dtype": "float32"},
                                  "rollout.engine": "torch", "rollout.maxBatchSize": 8, **changes})


def test_a_shard_starts_from_the_warmed_up_drafter(warmed):
    exported = EagleDrafter.load(warmed / "drafter", random_model(CONFIG, seed=3)).state_dict()
    shard = RolloutShard("rollout-0", str(warmed / "policy"), job_spec(warmed, **{"drafter.initCheckpoint": str(warmed / "drafter")}))
    for name, value in exported.items():
        assert torch.equal(shard.eagle.state_dict()[name], value), name
    assert shard.engine.drafter is shard.eagle  # the engine drafts with it
    assert shard.trainer.drafter is shard.eagle  # and idle time trains on from it
    fresh = RolloutShard("rollout-1", str(warmed / "policy"), job_spec(warmed))
    assert not torch.equal(fresh.eagle.state_dict()["fc.weight"], exported["fc.weight"])


def test_a_resumed_job_starts_from_its_checkpoint_not_the_init_folder(warmed):
    spec = job_spec(warmed, **{"drafter.initCheckpoint": str(warmed / "drafter")})
    target = random_model(CONFIG, seed=3)
    checkpointed = {k: v + 1.0 for k, v in EagleDrafter.for_target(target).state_dict().items()}
    drafter = initial_drafter(spec, target, state=checkpointed)
    assert torch.equal(drafter.state_dict()["fc.weight"], checkpointed["fc.weight"])


def test_a_folder_that_is_no_drafter_is_refused_naming_the_field(warmed, tmp_path):
    spec = job_spec(warmed, **{"drafter.initCheckpoint": str(tmp_path / "nothing")})
    problem = preflight(spec)
    assert "spec.drafter.initCheckpoint" in problem and "tlt drafter warmup --out DIR" in problem
    with pytest.raises(ConfigError, match="spec.drafter.initCheckpoint"):
        initial_drafter(spec, random_model(CONFIG, seed=3))
    other = ModelConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
    EagleDrafter.for_target(random_model(other)).save(tmp_path / "wide")
    with pytest.raises(ConfigError, match="initCheckpoint.*does not fit target"):
        initial_drafter(job_spec(warmed, **{"drafter.initCheckpoint": str(tmp_path / "wide")}), random_model(CONFIG))
    assert preflight(job_spec(warmed, **{"drafter.initCheckpoint": str(warmed / "drafter")})) is None
