"""Evaluation: held-out accuracy and response-length tail; `generate` is the one decoding entry."""

from tlt.eval.evaluate import EvalItem, EvalResult, evaluate, load_jsonl, percentile, task_items
from tlt.eval.generate import generate, load_model

__all__ = ["EvalItem", "EvalResult", "evaluate", "generate", "load_jsonl", "load_model",
           "percentile", "task_items"]
