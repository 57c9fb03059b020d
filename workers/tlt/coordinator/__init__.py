"""The RL loop: rollout shards and trainer as Ray actors, driven by the elastic policy."""
