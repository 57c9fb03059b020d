"""Tasks: the built-in long-tailed reasoning task, its tiny base model and the task registry."""

from tlt.tasks.base import SPLITS, Problem, Task, get_task, register_task, task_names
from tlt.tasks import arith as _arith  # noqa: F401  (registers "arith")
from tlt.tasks.bootstrap import ensure_base_model
from tlt.tasks.tokenizer import TaskCodec

__all__ = ["SPLITS", "Problem", "Task", "TaskCodec", "ensure_base_model", "get_task",
           "register_task", "task_names"]
