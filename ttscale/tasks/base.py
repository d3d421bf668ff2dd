"""What a task is: the example record and the protocol every task implements.

A task owns the text format of one kind of question: how the policy is
prompted, how a solution splits into steps, how its final answer is read and
graded, and (when the task allows it) which steps are exactly right. Tasks are
pure Python so that data, training, search and analysis can all share them.
"""

from __future__ import annotations

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Example:
  """One question with its reference solution.

  Attributes:
    question: the question text, e.g. "37+48*3-19".
    solution: the reference solution; steps joined by "\\n", the last line
      states the final answer ("Answer: 236" for the arithmetic task).
    answer: the reference final answer, e.g. "236".
    level: the difficulty level (arithmetic task: number of operations).
  """

  question: str
  solution: str
  answer: str
  level: int


class Task(typing.Protocol):
  """The text format of one kind of question.

  Attributes:
    name: the task's name, as written in configs (`task.name`).
    step_delimiter: the string separating steps ("\\n" for every task).
  """

  name: str
  step_delimiter: str

  def prompt(self, question: str) -> str:
    """Returns the text the policy is conditioned on; ends with the delimiter."""
    ...

  def split_steps(self, solution: str) -> list[str]:
    """Returns the steps of a possibly partial or malformed solution.

    The final-answer line counts as a step; empty lines are dropped.
    """
    ...

  def extract_answer(self, solution: str) -> str | None:
    """Returns the final answer, or None when there is no well-formed one."""
    ...

  def grade(self, answer: str | None, reference: str) -> bool:
    """Returns whether `answer` matches `reference`; None is never correct."""
    ...

  def step_labels(self, question: str, solution: str) -> list[bool] | None:
    """Returns exact per-step correctness, one per `split_steps` entry.

    Returns None for tasks without exact step labels.
    """
    ...
