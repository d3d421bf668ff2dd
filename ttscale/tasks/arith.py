"""The arithmetic-chain task: a running value transformed one operation per line.

Format
------
A question is a chain of operations on a running value, evaluated strictly
left to right (no operator precedence)::

    37+48*3-19

The prompt is the question followed by the step delimiter ("\\n"). The
reference solution writes one operation per line, each line
`<value><op><operand>=<result>`, and ends with the final-answer line::

    37+48=85
    85*3=255
    255-19=236
    Answer: 236

Running values may be negative (`5-9=-4`, `-4*2=-8`); operands never are, so
`--` never occurs. Numbers are written without leading zeros.

Knobs (fields of `ArithTask`, keys of the `task` config)
--------------------------------------------------------
- `min_ops`, `max_ops`: the number of operations, drawn uniformly in
  [min_ops, max_ops]. This is the difficulty `level` of an example.
- `max_operand`: the first value and the operands of `+` and `-` are uniform in
  [1, max_operand].
- `max_multiplier`: the operand of `*` is uniform in [2, max_multiplier].
- `max_abs_value`: every running value keeps |value| <= max_abs_value. An
  operation is drawn uniformly from {+, -, *} with its operand; if the result
  would leave the range, that operation is struck off and another is drawn
  from the ones left. The operation moving towards zero (`-` from a value
  >= 0, `+` from a negative value) always stays in range because
  max_operand <= max_abs_value, so at most three draws are needed.

Difficulty levels
-----------------
The level is the number of operations, hence the number of steps before the
answer line. Every step is a single small computation, so a model's chance of
finishing without a slip falls roughly geometrically with the level; the
range of values (up to max_abs_value) makes multiplications and carries
harder than in the first step. Per-step correctness is exact (`step_labels`).

Generation is deterministic: the same knobs and seed give the same examples on
every platform (Python's `random.Random`, whose integer draws are specified).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ttscale.tasks import base

OPERATIONS = ("+", "-", "*")
ANSWER_PREFIX = "Answer: "
ERROR_KINDS = ("slip", "operands", "early_answer", "wrong_answer", "extra_step", "no_answer")

# Numbers are written without leading zeros so every question has exactly one
# spelling, and canonical steps can quote its operands verbatim.
_NUMBER = r"(?:0|[1-9][0-9]*)"
_QUESTION = re.compile(rf"{_NUMBER}(?:[+\-*]{_NUMBER})+")
_OPERATION = re.compile(rf"([+\-*])({_NUMBER})")
_INTEGER = re.compile(r"-?[0-9]+")
_ANSWER_LINE = re.compile(r"Answer: (-?[0-9]+)")


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
  """Splits a question into its first value and its operations.

  Args:
    question: e.g. "37+48*3-19".

  Returns:
    (first value, [(operation, operand), ...]), e.g. (37, [("+", 48), ("*", 3),
    ("-", 19)]).

  Raises:
    ValueError: the question is not a chain of at least one operation.
  """
  if not _QUESTION.fullmatch(question):
    raise ValueError(
      f"malformed arithmetic question {question!r}: expected a number "
      "followed by one or more of +N, -N, *N, e.g. '37+48*3-19'"
    )
  first_number = re.match(_NUMBER, question)
  assert first_number is not None  # guaranteed by the full match above
  operations = [
    (op, int(operand))
    for op, operand in _OPERATION.findall(question, first_number.end())
  ]
  return int(first_number.group()), operations


def apply_operation(value: int, operation: str, operand: int) -> int:
  """Returns `value <operation> operand` for one of OPERATIONS."""
  if operation == "+":
    return value + operand
  if operation == "-":
    return value - operand
  if operation == "*":
    return value * operand
  raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")


def format_question(first_value: int, operations: list[tuple[str, int]]) -> str:
  """Returns the question text, e.g. "37+48*3-19"."""
  return str(first_value) + "".join(f"{op}{operand}" for op, operand in operations)


def evaluate(question: str) -> int:
  """Returns the value of the question, evaluated left to right."""
  value, operations = parse_question(question)
  for operation, operand in operations:
    value = apply_operation(value, operation, operand)
  return value


def canonical_steps(question: str) -> list[str]:
  """Returns the reference steps: one line per operation, then "Answer: N"."""
  value, operations = parse_question(question)
  steps = []
  for operation, operand in operations:
    result = apply_operation(value, operation, operand)
    steps.append(f"{value}{operation}{operand}={result}")
    value = result
  steps.append(f"{ANSWER_PREFIX}{value}")
  return steps


def canonical_solution(question: str) -> str:
  """Returns the reference solution: the canonical steps joined by "\\n"."""
  return "\n".join(canonical_steps(question))


def _check_knob(
  config_value: Any, field_name: str, minimum: int, minimum_name: str = ""
) -> None:
  # bool is an int subclass; a `True` in a config is a typo, not a count.
  if not isinstance(config_value, int) or isinstance(config_value, bool):
    raise TypeError(f"task.{field_name} must be an integer, got {config_value!r}")
  if config_value < minimum:
    bound = f"task.{minimum_name} ({minimum})" if minimum_name else str(minimum)
    raise ValueError(f"task.{field_name} must be >= {bound}, got {config_value}")


@dataclasses.dataclass(frozen=True)
class ArithTask:
  """The arithmetic-chain task; see the module docstring for the format."""

  min_ops: int = 1
  max_ops: int = 9
  max_operand: int = 19
  max_multiplier: int = 5
  max_abs_value: int = 999
  name: str = dataclasses.field(default="arith", init=False)
  step_delimiter: str = dataclasses.field(default="\n", init=False)

  def __post_init__(self):
    _check_knob(self.min_ops, "min_ops", 1)
    _check_knob(self.max_ops, "max_ops", self.min_ops, "min_ops")
    _check_knob(self.max_operand, "max_operand", 1)
    _check_knob(self.max_multiplier, "max_multiplier", 2)
    # The operation towards zero must always stay in range (see the module
    # docstring), which needs every operand to fit in the range.
    _check_knob(self.max_abs_value, "max_abs_value", self.max_operand, "max_operand")

  @classmethod
  def from_config(cls, task_config: Mapping[str, Any]) -> ArithTask:
    """Builds the task from the `task` config's knobs (`name` is ignored).

    Missing knobs take their defaults.

    Raises:
      ValueError: a key is unknown or a knob is out of range.
      TypeError: a knob is not an integer.
    """
    knobs = {key: value for key, value in task_config.items() if key != "name"}
    known = [field.name for field in dataclasses.fields(cls) if field.init]
    unknown = sorted(set(knobs) - set(known))
    if unknown:
      raise ValueError(
        f"unknown field task.{unknown[0]} for task 'arith'; "
        f"known fields: {', '.join(['name', *known])}"
      )
    return cls(**knobs)

  def prompt(self, question: str) -> str:
    """Returns the question followed by the step delimiter."""
    return question + self.step_delimiter

  def split_steps(self, solution: str) -> list[str]:
    """Returns the lines of `solution` that are not blank, unmodified."""
    return [line for line in solution.split(self.step_delimiter) if line.strip()]

  def extract_answer(self, solution: str) -> str | None:
    """Returns N when the last non-blank line is exactly "Answer: N", else None.

    N is an integer with an optional leading minus, returned as written.
    """
    steps = self.split_steps(solution)
    if not steps:
      return None
    match = _ANSWER_LINE.fullmatch(steps[-1])
    return match.group(1) if match else None

  def grade(self, answer: str | None, reference: str) -> bool:
    """Returns whether `answer` and `reference` are equal integers.

    "007" equals "7"; None or a non-integer answer is never correct.

    Raises:
      ValueError: `reference` is not an integer (a data error, not a
        policy error, so it must not pass silently as "incorrect").
    """
    if not _INTEGER.fullmatch(reference):
      raise ValueError(f"reference answer {reference!r} is not an integer")
    if answer is None or not _INTEGER.fullmatch(answer):
      return False
    return int(answer) == int(reference)

  def step_labels(self, question: str, solution: str) -> list[bool]:
    """Returns exact correctness of every step of `solution`.

    Correctness is a prefix property: operation step i is correct iff it is
    exactly the i-th canonical step and every earlier step is correct, so
    once a solution is off track every later step is False, even one that
    computes consistently from a wrong value. The answer line is correct
    iff it comes right after all the canonical operation steps, all of
    them correct, and states the right answer (as `grade` judges it).
    Steps past the answer line are False.

    Returns:
      one bool per entry of `split_steps(solution)`.
    """
    reference_steps = canonical_steps(question)
    num_operations = len(reference_steps) - 1
    reference_answer = str(evaluate(question))
    labels = []
    on_track = True
    for index, step in enumerate(self.split_steps(solution)):
      if index < num_operations:
        correct = step == reference_steps[index]
      elif index == num_operations:
        match = _ANSWER_LINE.fullmatch(step)
        correct = match is not None and self.grade(match.group(1), reference_answer)
      else:
        correct = False
      on_track = on_track and correct
      labels.append(on_track)
    return labels

  def first_error(self, question: str, solution: str) -> str | None:
    """The kind of the first wrong step of `solution`, or None when it is right.

    Kinds (`ERROR_KINDS`): "slip" (the right operation on the right values,
    a wrong result), "operands" (an operation step that does not apply the
    next operation to the running value), "early_answer" (the answer line
    before every operation is done), "wrong_answer" (every operation right,
    the answer line wrong), "extra_step" (a step where the answer line
    belongs), "no_answer" (every step right, the answer line missing).
    """
    reference = canonical_steps(question)
    steps = self.split_steps(solution)
    labels = self.step_labels(question, solution)
    if steps and all(labels) and len(steps) == len(reference):
      return None
    index = labels.index(False) if False in labels else len(steps)
    if index == len(steps):
      return "no_answer"
    step, num_operations = steps[index], len(reference) - 1
    if index == num_operations:
      return "wrong_answer" if _ANSWER_LINE.fullmatch(step) else "extra_step"
    if _ANSWER_LINE.fullmatch(step) or index > num_operations:
      return "early_answer" if index < num_operations else "extra_step"
    expected_left = reference[index].split("=")[0]
    return "slip" if step.split("=")[0] == expected_left else "operands"

  def evaluate(self, question: str) -> int:
    """Returns the value of the question, evaluated left to right."""
    return evaluate(question)

  def canonical_solution(self, question: str) -> str:
    """Returns the reference solution of `question`."""
    return canonical_solution(question)

  def sample(self, rng: random.Random) -> base.Example:
    """Draws one example with the task's knobs from `rng`."""
    num_operations = rng.randint(self.min_ops, self.max_ops)
    first_value = rng.randint(1, self.max_operand)
    value = first_value
    operations = []
    for _ in range(num_operations):
      candidates = list(OPERATIONS)
      while True:
        operation = rng.choice(candidates)
        if operation == "*":
          operand = rng.randint(2, self.max_multiplier)
        else:
          operand = rng.randint(1, self.max_operand)
        result = apply_operation(value, operation, operand)
        if abs(result) <= self.max_abs_value:
          break
        candidates.remove(operation)
      operations.append((operation, operand))
      value = result
    question = format_question(first_value, operations)
    return base.Example(
      question=question,
      solution=canonical_solution(question),
      answer=str(value),
      level=num_operations,
    )

  def stream(self, seed: int) -> Iterator[base.Example]:
    """Yields examples without end, deterministically from `seed`."""
    rng = random.Random(seed)
    while True:
      yield self.sample(rng)

  def generate(self, num_examples: int, seed: int) -> Iterator[base.Example]:
    """Yields `num_examples` examples, the first ones of `stream(seed)`."""
    stream = self.stream(seed)
    for _ in range(num_examples):
      yield next(stream)
