"""The pure elastic policy shared by the operator, the embedded loop and the simulator."""

from tlt.api.topology import dedicated_drafters, lending_enabled, shard_role  # what the policy reads of the topology
from tlt.elastic.policy import (
    PHASES,
    ROLES,
    Action,
    Consolidate,
    Lend,
    Phase,
    Progress,
    Replace,
    Return,
    Role,
    ScaleDrafters,
    ShardState,
    Worker,
    apply_actions,
    consolidation_capacity,
    plan,
)

__all__ = [
    "PHASES",
    "ROLES",
    "Action",
    "Consolidate",
    "Lend",
    "Phase",
    "Progress",
    "Replace",
    "Return",
    "Role",
    "ScaleDrafters",
    "ShardState",
    "Worker",
    "apply_actions",
    "consolidation_capacity",
    "dedicated_drafters",
    "lending_enabled",
    "plan",
    "shard_role",
]
