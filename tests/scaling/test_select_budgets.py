"""Compute-optimal selection's check that the outcome table covers the budget grid."""

import pytest

from ttscale.scaling.compute_optimal import check_budgets


def _row(question, method, budget):
  return {"question_index": question, "level": 1, "method": method, "params": "",
          "budget": budget, "seed": 0, "answer": None, "correct": False,
          "generations": budget, "flops": 1.0, "seconds": 0.0}


QUESTIONS = [0, 1, 2]


def _table(skip=()):
  return [_row(q, "best_of_n", n) for q in QUESTIONS for n in (1, 2, 4, 8)
          if (q, n) not in skip]


def test_check_budgets_accepts_a_complete_table():
  """Fails if a table with every (question, budget) of the grid is rejected."""
  check_budgets(_table(), QUESTIONS, {"best_of_n": [1, 2, 4, 8]})


def test_check_budgets_names_the_method_and_budget_missing_a_question():
  """Fails if best_of_n lacking N=8 for question 1 passes or is not named on one line."""
  with pytest.raises(ValueError) as error:
    check_budgets(_table(skip={(1, 8)}), QUESTIONS, {"best_of_n": [1, 2, 4, 8]})
  message = str(error.value)
  assert "\n" not in message
  assert "best_of_n" in message
  assert "N=8" in message
  assert "1 of the 3" in message
  assert "question 1" in message


def test_check_budgets_names_a_method_with_no_rows_at_all():
  """Fails if a needed method absent from the table (revisions) is not reported."""
  with pytest.raises(ValueError, match=r"no revisions rows at budget N=1 for 3 of the 3"):
    check_budgets(_table(), QUESTIONS, {"best_of_n": [1, 2, 4, 8], "revisions": [1, 2]})


def test_check_budgets_ignores_budgets_not_needed_and_unstudied_questions():
  """Fails if a missing budget outside the grid, or an unstudied question, is an error."""
  rows = _table(skip={(1, 8)}) + [_row(7, "best_of_n", 1)]
  check_budgets(rows, QUESTIONS, {"best_of_n": [1, 2, 4]})

