"""Tests of the MATH task: prompt, answer extraction, normalisation and grading."""

from __future__ import annotations

import builtins

import pytest

from ttscale.tasks import get_task
from ttscale.tasks.math import MathTask, is_equivalent, normalize_answer
from ttscale.tasks.math_fuzz import fuzzed_answers

TASK = MathTask()

# (first, second, equivalent). Each pair is checked in both orders.
EQUIVALENCE_CASES = [
  # Fractions and decimals: exact values, never a float tolerance.
  ("\\frac{1}{2}", "0.5", True),
  ("\\dfrac{3}{4}", "3/4", True),
  ("\\tfrac12", "0.5", True),
  ("\\frac12", "\\frac{1}{2}", True),
  ("\\frac1b", "\\frac{1}{b}", True),
  ("\\frac{2}{4}", "\\frac{1}{2}", True),  # equal values, though not in lowest terms
  ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
  ("-3/4", "-0.75", True),
  ("11/2", "5.5", True),
  ("\\frac{1}{3}", "0.33", False),
  ("\\frac{1}{3}", "0.333333333333", False),
  ("\\frac{1}{2}", "\\frac{1}{3}", False),
  ("\\frac{1}{0}", "\\frac{2}{0}", False),  # a zero denominator is not a number
  ("0.5", ".5", True),
  ("-.5", "-0.5", True),
  ("0.50", "0.5", True),
  ("3.0", "3", True),
  ("3.00", "3", True),
  ("3.", "3", True),
  ("3.10", "3.1", True),
  ("2", "2.001", False),
  ("-0", "0", True),
  ("1e3", "1000", False),  # exponents are never parsed
  # Integers and thousands separators.
  ("2", "3", False),
  ("-2", "2", False),
  ("007", "7", True),
  ("1,000", "1000", True),
  ("1,000,000", "1000000", True),
  ("1{,}000", "1000", True),
  ("1,\\!000", "1000", True),
  ("\\$1,000.00", "1000", True),
  ("1,00", "100", False),  # a group of 2 digits: a list, not a number
  ("12,34", "1234", False),
  ("1,2", "12", False),
  ("1234,567", "1234567", False),  # a first group of 4 digits is no separator
  # Roots.
  ("\\sqrt2", "\\sqrt{2}", True),
  ("2\\sqrt2", "2\\sqrt{2}", True),
  ("\\sqrt{8}", "2\\sqrt{2}", False),  # no algebra
  ("\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt2}2", True),
  ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", False),
  # Signs, units, spacing and wrappers.
  ("10\\%", "10", True),
  ("10%", "10", True),
  ("10\\%", "0.1", False),  # the percent sign is dropped, not applied
  ("5^\\circ", "5", True),
  ("90^{\\circ}", "90", True),
  ("45°", "45", True),
  ("\\$5", "5", True),
  ("$5$", "5", True),
  ("5 dollars", "5", True),
  ("5\\text{ cm}", "5", True),
  ("5\\text{ cm}^2", "5", True),
  ("12 square units", "12", True),
  ("3 inches", "3", True),
  ("90 degrees", "90", True),
  ("\\frac{1}{2}\\text{ hours}", "0.5", True),
  ("\\text{units}", "", False),  # a word alone is not a unit after a number
  ("\\text{(A)}", "(A)", True),
  ("\\textbf{(C)}", "(C)", True),
  ("\\mbox{(B)}", "(B)", True),
  ("\\mathrm{Evelyn}", "Evelyn", True),
  ("(A)", "A", False),  # a tuple is not its element
  ("(A)", "(B)", False),
  ("x", "X", False),  # case-sensitive
  ("x^2 + 1", "x^2+1", True),
  ("x^2+1", "1+x^2", False),  # no algebra
  ("\\pi", "3.14159", False),
  ("2\\,\\!\\;\\quad 3", "23", True),
  ("\\displaystyle\\frac{1}{2}", "0.5", True),
  # Boxes, braces, variable prefixes, periods.
  ("\\boxed{5}", "5", True),
  ("\\fbox{5}", "5", True),
  ("{5}", "5", True),
  ("\\boxed{\\boxed{\\frac12}}", "0.5", True),
  ("x=3", "3", True),
  ("y = -2", "-2", True),
  ("k=\\frac{1}{2}", "0.5", True),
  ("x=3", "y=4", False),
  ("5.", "5", True),
  # Tuples, intervals and lists: element-wise, in order, same brackets.
  ("\\left(1,2\\right)", "(1,2)", True),
  ("\\left( 1, 2 \\right)", "(1,2)", True),
  ("(0.5, 3)", "(\\frac{1}{2}, 3)", True),
  ("(1, 2.0)", "(1,2)", True),
  ("(1,2)", "(2,1)", False),
  ("(1,2)", "(1,2,3)", False),
  ("[1,2)", "(1,2)", False),
  ("[1,2)", "[1, 2)", True),
  ("(-\\infty, 3]", "(-\\infty,3]", True),
  ("1,2", "(1,2)", False),  # a list is not a tuple
  ("1, 2", "1,2.0", True),
  ("(1,2),(3,4)", "(1,2.0),(3,\\frac{8}{2})", True),
  ("((1,2),(3,4))", "((1,2),(3,5))", False),
  ("(1)+(2)", "(1)+(\\frac{4}{2})", False),  # not one tuple: compared as strings
  # Empty answers equal nothing, not even each other.
  ("", "", False),
  ("\\$", "$", False),
  ("", "0", False),
  # Long numbers: parsed up to 100 digits, compared as strings beyond.
  ("1" * 90 + ".0", "1" * 90, True),
  ("0" + "1" * 90, "1" * 90, True),
  ("0" + "1" * 150, "1" * 150, False),
  ("1" * 150 + ".0", "1" * 150, True),  # the ".0" rule is a string rule
]


@pytest.mark.parametrize(("first", "second", "equivalent"), EQUIVALENCE_CASES)
def test_is_equivalent_on_hand_written_pairs(first, second, equivalent):
  """Fails when a normalisation rule is missing, too eager, or asymmetric."""
  assert is_equivalent(first, second) is equivalent
  assert is_equivalent(second, first) is equivalent


def test_there_are_at_least_60_equivalence_cases():
  """Fails when the hand-written table shrinks below the agreed coverage."""
  assert len(EQUIVALENCE_CASES) >= 60
  assert sum(not equivalent for _, _, equivalent in EQUIVALENCE_CASES) >= 20


@pytest.mark.parametrize(
  ("answer", "normal_form"),
  [
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
    ("x = 5 \\text{ cm}", "5"),
    ("\\$1,000.00", "1000"),
    ("-3/4", "-\\frac{3}{4}"),
    ("\\frac{\\frac12}{3}", "\\frac{\\frac{1}{2}}{3}"),
    ("\\frac123", "\\frac{1}{2}3"),  # LaTeX: a brace-less argument is one character
    ("\\fracab", "\\fracab"),  # not a fraction: a longer command name
    ("\\leftarrow", "\\leftarrow"),  # \left is removed only as a whole command
    ("\\text{5", "\\text{5"),  # an unbalanced wrapper is left alone
  ],
)
def test_normalize_answer_spells_out_the_normal_form(answer, normal_form):
  """Fails when a rule rewrites to a different spelling than documented."""
  assert normalize_answer(answer) == normal_form


@pytest.mark.parametrize(
  ("solution", "expected"),
  [
    ("so $\\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not groups
    ("\\boxed 5$.", "5"),
    ("\\boxed {4}", "4"),
    ("\\fbox{3}", "3"),
    ("The answer is 7.", "7"),
    ("So the answer is 3.5.\nDone", "3.5"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "$\\frac{1}{2}$"),
    ("the answer is: 12", "12"),
    ("The answer is 1. Wait, the answer is 2.", "2"),
    ("\\boxed{1", None),  # unbalanced
    ("\\boxed{1} and \\boxed{2", None),  # the last box is unbalanced: no fallback
    ("\\boxed{}", None),
    ("The answer is .", None),
    ("The answer is", None),
    ("2 + 2 = 4", None),
    ("", None),
  ],
)
def test_extract_answer(solution, expected):
  """Fails when brace matching, the choice of the last answer or a fallback breaks."""
  assert TASK.extract_answer(solution) == expected


def test_grade_never_accepts_none_and_uses_equivalence():
  """Fails when a missing answer counts as correct or grading ignores normalisation."""
  assert not TASK.grade(None, "5")
  assert not TASK.grade(None, "")
  assert TASK.grade(TASK.extract_answer("so \\boxed{\\dfrac{1}{2}}"), "0.5")
  assert not TASK.grade("0.33", "\\frac{1}{3}")


def test_split_steps_drops_blank_lines_and_step_labels_are_none():
  """Fails when blank lines become steps or MATH claims exact step labels."""
  solution = "First line.\n\n   \nThen $x=2$.\nSo \\boxed{2}.\n"
  assert TASK.split_steps(solution) == ["First line.", "Then $x=2$.", "So \\boxed{2}."]
  assert TASK.split_steps("") == []
  assert TASK.step_labels("What is 1+1?", solution) is None


def test_prompt_format_ends_with_the_step_delimiter():
  """Fails when the documented prompt format or its closing delimiter changes."""
  assert TASK.name == "math"
  assert TASK.step_delimiter == "\n"
  assert TASK.prompt("What is $1+1$?") == "Problem:\nWhat is $1+1$?\nSolution:\n"


def test_few_shot_file_becomes_the_prompt_prefix(tmp_path):
  """Fails when the file's text is not put verbatim before the problem."""
  prefix = "Problem:\nWhat is $2+2$?\nSolution:\n$2+2=\\boxed{4}$.\n\n"
  path = tmp_path / "few_shot.txt"
  path.write_text(prefix, encoding="utf-8")
  task = get_task({"name": "math", "few_shot_file": str(path)})
  assert task == MathTask(few_shot_prefix=prefix)
  assert task.prompt("What is 1+1?") == prefix + "Problem:\nWhat is 1+1?\nSolution:\n"
  assert task.prompt("What is 1+1?").endswith(task.step_delimiter)


def test_missing_few_shot_file_is_a_one_line_error_naming_field_and_path(tmp_path):
  """Fails when a bad path surfaces as a bare OSError or a multi-line message."""
  path = tmp_path / "missing.txt"
  with pytest.raises(ValueError, match="task.few_shot_file") as error:
    MathTask.from_config({"name": "math", "few_shot_file": str(path)})
  assert str(path) in str(error.value)
  assert "\n" not in str(error.value)


def test_non_utf8_few_shot_file_is_a_value_error(tmp_path):
  """Fails when an undecodable file raises UnicodeDecodeError instead."""
  path = tmp_path / "latin1.txt"
  path.write_bytes(b"caf\xe9")
  with pytest.raises(ValueError, match="task.few_shot_file"):
    MathTask.from_config({"few_shot_file": str(path)})


def test_from_config_rejects_unknown_key_and_defaults_to_no_prefix():
  """Fails when a typo in the task config is silently ignored."""
  with pytest.raises(ValueError, match="task.few_shot_fil\\b"):
    get_task({"name": "math", "few_shot_fil": "x.txt"})
  assert get_task({"name": "math"}) == MathTask()
  assert get_task({"name": "math", "few_shot_file": ""}) == MathTask()


@pytest.mark.timeout(120)  # a hang is the bug; `launch.bench --bench=grader` times it
def test_fuzzed_answers_never_raise_or_hang_and_never_evaluate(monkeypatch):
  """Fails when any input makes grading raise, return a non-bool, run
  eval/exec, or not end (the timeout)."""

  def forbidden(*args, **kwargs):
    raise AssertionError("grading must never call eval or exec")

  monkeypatch.setattr(builtins, "eval", forbidden)
  monkeypatch.setattr(builtins, "exec", forbidden)
  strings = fuzzed_answers()
  for index, text in enumerate(strings):
    answer = TASK.extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(normalize_answer(text), str)
    other = strings[index - 1]
    for graded in (TASK.grade(answer, text), TASK.grade(text, other), TASK.grade(text, text)):
      assert isinstance(graded, bool)
