"""Tasks: what a question is, and how its solutions are read and graded.

`get_task(config.task)` is the one way the rest of ttscale obtains a task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ttscale.tasks.arith import ArithTask
from ttscale.tasks.base import Example, Task
from ttscale.tasks.math import MathTask

__all__ = ["ArithTask", "Example", "MathTask", "Task", "get_task"]

_TASK_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Task]] = {
  "arith": ArithTask.from_config,
  "math": MathTask.from_config,
}


def get_task(task_config: Mapping[str, Any]) -> Task:
  """Returns the task named by `task_config.name`, built from its other keys.

  Args:
    task_config: the `task` config (an `ml_collections.ConfigDict` or a dict),
      with `name` and the chosen task's knobs.

  Raises:
    ValueError: the name is missing or unknown, or a knob is out of range.
    TypeError: a knob has the wrong type.
  """
  known_names = ", ".join(sorted(_TASK_BUILDERS))
  name = dict(task_config.items()).get("name")
  if name not in _TASK_BUILDERS:
    raise ValueError(f"unknown task.name {name!r}; known names: {known_names}")
  return _TASK_BUILDERS[name](task_config)
