"""Trace-driven cluster simulator of a ReasoningRLJob, driving the real elastic policy and adaptive manager."""

from tlt.sim.acceptance import AcceptanceModel
from tlt.sim.cluster import CATEGORIES, ClusterSimulator, SimOptions, SimResult, StepResult
from tlt.sim.costs import BUILTIN_PROFILES, CostTable, CostTableError, Profile, load_profile, profile_from_dict
from tlt.sim.lengths import LengthModel, LengthSpecError, parse_lengths, read_lengths
from tlt.sim.run import (
    PAPER_SPEEDUP,
    Comparison,
    baseline_spec,
    compare,
    paper_job,
    predict_rollout_seconds,
    sample_lengths,
    scale_spec,
)

__all__ = [
    "AcceptanceModel",
    "BUILTIN_PROFILES",
    "CATEGORIES",
    "ClusterSimulator",
    "Comparison",
    "CostTable",
    "CostTableError",
    "LengthModel",
    "LengthSpecError",
    "PAPER_SPEEDUP",
    "Profile",
    "SimOptions",
    "SimResult",
    "StepResult",
    "baseline_spec",
    "compare",
    "load_profile",
    "paper_job",
    "parse_lengths",
    "predict_rollout_seconds",
    "profile_from_dict",
    "read_lengths",
    "sample_lengths",
    "scale_spec",
]
