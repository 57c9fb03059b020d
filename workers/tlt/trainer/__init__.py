"""GRPO/DAPO policy training: pure losses, rollout batches, the trainer (torch or DeepSpeed ZeRO).

    from tlt.trainer import PolicyTrainer, Rollouts, dynamic_sampling, step_advantages

    trainer = PolicyTrainer.from_spec(spec, model_folder)   # backend/stage from spec.trainer.deepspeed
    # DAPO: sample rounds until dynamic_sampling(...) says stop; keep its groups
    adv = step_advantages(rewards, response_lengths, spec.algorithm)   # overlong penalty + group norm
    metrics = trainer.train(Rollouts(prompts, responses, adv, old_logprobs))
    engine.update_policy_weights(trainer.state_dict())      # Hugging Face names
    trainer.save_checkpoint(folder); trainer.load_checkpoint(folder); trainer.export_hf(out)

Data parallel: start one process per rank with MASTER_ADDR/PORT, RANK, WORLD_SIZE
set; each calls `train` with the same whole batch and trains on its share.
"""

from tlt.trainer.algorithm import shaped_rewards, step_advantages
from tlt.trainer.batch import Collated, Rollouts, collate, pack, pad_per_token, plan_micro_batches
from tlt.trainer.losses import (
    AGGREGATIONS,
    SamplingDecision,
    aggregate,
    aggregation_weight,
    dynamic_sampling,
    group_advantages,
    is_mixed,
    k3_kl,
    overlong_penalty,
    ppo_clip_loss,
)
from tlt.trainer.policy import PolicyTrainer, TrainerConfig

__all__ = [
    "AGGREGATIONS", "Collated", "PolicyTrainer", "Rollouts", "SamplingDecision", "TrainerConfig", "aggregate",
    "aggregation_weight", "collate", "dynamic_sampling", "group_advantages", "is_mixed", "k3_kl",
    "overlong_penalty", "pack", "pad_per_token", "plan_micro_batches", "ppo_clip_loss", "shaped_rewards", "step_advantages",
]
