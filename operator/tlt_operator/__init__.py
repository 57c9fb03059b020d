"""The tlt Kubernetes operator (kopf): ReasoningRLJob -> pods, lending, rebalancing."""
