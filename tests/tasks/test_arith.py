"""Tests of the arithmetic-chain task: format, grading, step labels, sampling."""

from __future__ import annotations

import ml_collections
import pytest

from ttscale.tasks import get_task
from ttscale.tasks.arith import (
  ArithTask,
  canonical_solution,
  canonical_steps,
  evaluate,
  parse_question,
)

QUESTION = "37+48*3-19"
SOLUTION = "37+48=85\n85*3=255\n255-19=236\nAnswer: 236"
TASK = ArithTask()


def test_canonical_solution_of_worked_example():
  assert canonical_solution(QUESTION) == SOLUTION
  assert evaluate(QUESTION) == 236


def test_evaluation_is_left_to_right_without_precedence():
  assert evaluate("2+3*4") == 20
  assert evaluate("2-5*3") == -9
  assert canonical_steps("2-5*3") == ["2-5=-3", "-3*3=-9", "Answer: -9"]


def test_prompt_is_question_then_step_delimiter():
  assert TASK.prompt(QUESTION) == QUESTION + "\n"
  assert TASK.step_delimiter == "\n"


def test_parse_question_splits_operations():
  assert parse_question(QUESTION) == (37, [("+", 48), ("*", 3), ("-", 19)])


@pytest.mark.parametrize(
  "question",
  ["", "37", "37+", "+3", "3++4", "3+-4", "3 + 4", "03+4", "3+04", "3/4", "3+4\n"],
)
def test_parse_question_rejects_malformed_question_naming_it(question):
  with pytest.raises(ValueError, match="malformed arithmetic question") as error:
    parse_question(question)
  assert repr(question) in str(error.value)


@pytest.mark.parametrize(
  ("solution", "expected"),
  [
    (SOLUTION, "236"),
    (SOLUTION + "\n\n", "236"),  # trailing blank lines are not steps
    ("5-9=-4\n-4*2=-8\nAnswer: -8", "-8"),
    ("Answer: 007", "007"),  # returned as written; grading compares values
    ("37+48=85\n85*3=255", None),  # no answer line
    ("Answer: 5\n5+1=6", None),  # answer line is not the last step
    ("Answer: 236 apples", None),
    ("Answer: 236.", None),
    ("Answer: 236 ", None),
    ("Answer:", None),
    ("Answer: ", None),
    ("Answer: -", None),
    ("answer: 236", None),
    ("Answer:236", None),
    ("Answer: +236", None),
    ("", None),
  ],
)
def test_extract_answer(solution, expected):
  assert TASK.extract_answer(solution) == expected


@pytest.mark.parametrize(
  ("answer", "reference", "expected"),
  [
    ("236", "236", True),
    ("007", "7", True),
    ("-8", "-8", True),
    ("8", "-8", False),
    ("-0", "0", True),
    ("235", "236", False),
    (None, "236", False),
    ("", "236", False),
    ("236.0", "236", False),
    (" 236", "236", False),
    ("two", "2", False),
  ],
)
def test_grade_compares_integers(answer, reference, expected):
  assert TASK.grade(answer, reference) is expected


def test_grade_rejects_non_integer_reference():
  with pytest.raises(ValueError, match="reference answer"):
    TASK.grade("3", "three")


def test_split_steps_keeps_answer_line_and_drops_blank_lines():
  assert TASK.split_steps("1+2=3\n\n  \nAnswer: 3\n") == ["1+2=3", "Answer: 3"]
  assert TASK.split_steps("") == []


@pytest.mark.parametrize(
  ("solution", "expected"),
  [
    (SOLUTION, [True, True, True, True]),
    ("37+48=85\n85*3=255", [True, True]),  # a partial solution
    # Off track at step 2; the later steps compute consistently from the wrong
    # value and the answer follows from them, yet all are wrong.
    ("37+48=85\n85*3=250\n250-19=231\nAnswer: 231", [True, False, False, False]),
    # Correct text after a wrong step is still off track.
    ("37+48=86\n85*3=255\n255-19=236\nAnswer: 236", [False, False, False, False]),
    ("37+48=85\n255-19=236\nAnswer: 236", [True, False, False]),  # skipped step
    ("37+48=85\nAnswer: 85", [True, False]),  # answered too early
    (SOLUTION + "\n236+0=236", [True, True, True, True, False]),  # extra step
    (
      "37+48=85\n85*3=255\n255-19=236\n236*1=236\nAnswer: 236",
      [True] * 3 + [False] * 2,
    ),
    ("37+48=85\n85*3=255\n255-19=236\nAnswer: 237", [True, True, True, False]),
    ("37+48=85\n85*3=255\n255-19=236\nAnswer: 0236", [True] * 4),  # graded value
    ("37+48=85\n85*3=255\n255-19=236\nAnswer: 236!", [True, True, True, False]),
    ("37 + 48 = 85\n85*3=255", [False, False]),  # not the canonical text
    ("37+48=85\n\n85*3=255\n", [True, True]),  # blank lines are not steps
    ("", []),
  ],
)
def test_step_labels(solution, expected):
  labels = TASK.step_labels(QUESTION, solution)
  assert labels == expected
  assert len(labels) == len(TASK.split_steps(solution))


def test_step_labels_reject_malformed_question():
  with pytest.raises(ValueError, match="malformed"):
    TASK.step_labels("37+", SOLUTION)


def test_generation_is_deterministic_by_seed():
  first = list(TASK.generate(200, seed=3))
  assert first == list(TASK.generate(200, seed=3))
  assert first != list(TASK.generate(200, seed=4))
  # A shorter draw is a prefix of a longer one from the same seed.
  assert list(TASK.generate(50, seed=3)) == first[:50]


def test_generation_is_pinned_for_seed_0():
  # Datasets are identified by (knobs, seed); a change in the sampling
  # algorithm silently changes every dataset, so it must show up here.
  task = ArithTask(max_operand=29, max_abs_value=999)  # knobs pinned too
  example = next(task.generate(1, seed=0))
  assert example.question == "25-2-17-13-16-19+17+10"
  assert example.answer == "-15"


@pytest.mark.parametrize(
  "task",
  [
    ArithTask(),
    # A tight range forces the redraw path on most operations.
    ArithTask(min_ops=3, max_ops=5, max_operand=29, max_multiplier=9, max_abs_value=30),
  ],
)
def test_generated_examples_respect_knobs(task):
  examples = list(task.generate(3000, seed=0))
  levels = {example.level for example in examples}
  assert levels == set(range(task.min_ops, task.max_ops + 1))
  saw_negative = False
  for example in examples:
    first_value, operations = parse_question(example.question)
    assert len(operations) == example.level
    assert 1 <= first_value <= task.max_operand
    for operation, operand in operations:
      if operation == "*":
        assert 2 <= operand <= task.max_multiplier
      else:
        assert 1 <= operand <= task.max_operand
    steps = task.split_steps(example.solution)
    for step in steps[:-1]:
      running_value = int(step.rsplit("=", 1)[1])
      assert abs(running_value) <= task.max_abs_value, example
      saw_negative = saw_negative or running_value < 0
  assert saw_negative


def test_generated_examples_agree_with_evaluator_and_grader():
  for example in TASK.generate(2000, seed=1):
    assert example.solution == canonical_solution(example.question)
    assert example.answer == str(evaluate(example.question))
    assert TASK.grade(TASK.extract_answer(example.solution), example.answer)
    assert TASK.step_labels(example.question, example.solution) == [True] * (
      example.level + 1
    )


def test_get_task_builds_arith_from_config_dict():
  config = ml_collections.ConfigDict(
    {
      "name": "arith",
      "min_ops": 2,
      "max_ops": 4,
      "max_operand": 9,
      "max_multiplier": 5,
      "max_abs_value": 99,
    }
  )
  task = get_task(config)
  assert task == ArithTask(
    min_ops=2, max_ops=4, max_operand=9, max_multiplier=5, max_abs_value=99
  )
  assert task.name == "arith"


def test_get_task_rejects_unknown_name_naming_field_value_and_known_names():
  with pytest.raises(ValueError, match="task.name") as error:
    get_task({"name": "chess"})
  assert "'chess'" in str(error.value)
  assert "arith" in str(error.value)
  assert "\n" not in str(error.value)


def test_get_task_rejects_unknown_knob():
  with pytest.raises(ValueError, match="task.max_op\\b"):
    get_task({"name": "arith", "max_op": 3})


@pytest.mark.parametrize(
  ("knobs", "field"),
  [
    ({"min_ops": 0}, "task.min_ops"),
    ({"min_ops": 5, "max_ops": 4}, "task.max_ops"),
    ({"max_multiplier": 1}, "task.max_multiplier"),
    ({"max_operand": 50, "max_abs_value": 40}, "task.max_abs_value"),
  ],
)
def test_invalid_knobs_are_rejected_naming_field(knobs, field):
  with pytest.raises(ValueError, match=field):
    ArithTask(**knobs)


def test_non_integer_knob_is_rejected():
  with pytest.raises(TypeError, match="task.max_ops"):
    ArithTask(max_ops=4.5)


@pytest.mark.parametrize("solution, kind", [
    ("37+48=85\n85*3=255\n255-19=236\nAnswer: 236", None),
    ("37+48=85\n85*3=245\n245-19=226\nAnswer: 226", "slip"),
    ("37+48=85\n85*2=170\n170-19=151\nAnswer: 151", "operands"),
    ("37+48=85\n85*3=255\nAnswer: 255", "early_answer"),
    ("37+48=85\n85*3=255\n255-19=236\nAnswer: 235", "wrong_answer"),
    ("37+48=85\n85*3=255\n255-19=236\n236+1=237", "extra_step"),
    ("37+48=85\n85*3=255\n255-19=236", "no_answer"),
    ("", "no_answer"),
])
def test_first_error_names_the_kind_of_the_first_wrong_step(solution, kind):
  assert ArithTask().first_error("37+48*3-19", solution) == kind
