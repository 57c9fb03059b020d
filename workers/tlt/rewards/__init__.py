"""Rewards: verifiers by name ("task", "math", "exact", "module:function") and a scoring pool."""

from tlt.rewards.math_answer import answers_match, extract_answer, math_reward, normalize
from tlt.rewards.pool import RewardPool
from tlt.rewards.registry import (BUILTIN, RewardError, RewardFn, exact_reward, get_reward,
                                  task_reward)

__all__ = [
    "BUILTIN", "RewardError", "RewardFn", "RewardPool", "answers_match", "exact_reward",
    "extract_answer", "get_reward", "math_reward", "normalize", "task_reward",
]
