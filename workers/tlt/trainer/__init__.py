"""GRPO/DAPO policy training: pure losses, rollout batches, the trainer (torch or DeepSpeed ZeRO).

    from tlt.trainer import PolicyTrainer, TrainerConfig, Rollouts, group_advantages

    trainer = PolicyTrainer.from_spec(spec, model_folder)          # or PolicyTrainer(folder, TrainerConfig(...))
    adv = step_advantages(rewards, response_lengths, spec.algorithm)   # overlong penalty + group norm
    metrics = trainer.train(Rollouts(prompts, responses, adv, old_logprobs))
    engine.load_weights(trainer.state_dict())                       # HF names
    trainer.save_checkpoint(dir); trainer.load_checkpoint(dir); trainer.export_hf(out)
"""

from tlt.trainer.algorithm import shaped_rewards, step_advantages
from tlt.trainer.batch import Collated, Rollouts, collate, pad_per_token, plan_micro_batches
from tlt.trainer.losses import (
    AGGREGATIONS,
    SamplingDecision,
    aggregate,
    aggregation_weight,
    dynamic_sampling,
    group_advantages,
    is_mixed,
    k3_kl,
    masked_mean,
    overlong_penalty,
    ppo_clip_loss,
)
from tlt.trainer.policy import PolicyTrainer, TrainerConfig

__all__ = [
    "AGGREGATIONS", "Collated", "PolicyTrainer", "Rollouts", "SamplingDecision", "TrainerConfig", "aggregate",
    "aggregation_weight", "collate", "dynamic_sampling", "group_advantages", "is_mixed", "k3_kl", "masked_mean",
    "overlong_penalty", "pad_per_token", "plan_micro_batches", "ppo_clip_loss", "shaped_rewards", "step_advantages",
]
