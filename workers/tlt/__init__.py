"""tlt: reasoning-RL training that tames the rollout long tail."""

__version__ = "0.1.0"
