"""Evaluation: held-out accuracy and response-length tail; `score` is the one scoring path
(`tlt eval` and the evaluation inside a run), `generate` decodes with the rollout engine."""

from tlt.eval.evaluate import EvalItem, EvalResult, evaluate, load_jsonl, percentile, score, task_items
from tlt.eval.generate import generate, load_policy

__all__ = ["EvalItem", "EvalResult", "evaluate", "generate", "load_jsonl", "load_policy",
           "percentile", "score", "task_items"]
