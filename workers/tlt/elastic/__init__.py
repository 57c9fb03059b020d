"""The pure elastic policy shared by the operator, the embedded loop and the simulator."""

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
    "plan",
]
