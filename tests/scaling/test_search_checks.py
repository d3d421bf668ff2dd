"""Search checks from hand-made outcome rows: intervals, paired gaps, diversity."""

import numpy as np
import pytest

from ttscale.scaling import search_checks


def _rows(method, params, budget, right, questions=range(4), distinct=None):
  return [{"question_index": q, "method": method, "params": params, "budget": budget,
           "correct": q in right, "distinct_prefixes": distinct} for q in questions]


def test_mean_interval_brackets_the_mean_and_narrows_with_questions():
  rng = np.random.default_rng(0)
  few, many = rng.random(20) < 0.5, rng.random(2000) < 0.5
  low, high = search_checks.mean_interval(few, seed=1)
  assert low < few.mean() < high
  low_many, high_many = search_checks.mean_interval(many, seed=1)
  assert high_many - low_many < (high - low) / 5
  assert search_checks.mean_interval(np.ones(5)) == [1.0, 1.0]


def test_paired_gap_uses_the_same_questions_for_both_strategies():
  rows = _rows("beam", "M=4,k=0", 4, {0, 1, 2}) + _rows("best_of_n", "", 4, {0})
  bins = {0: 1, 1: 2, 2: 2, 3: 2}
  gap = search_checks.paired_gap(rows, bins, {2}, ("beam", "M=4,k=0", 4),
                                 ("best_of_n", "", 4))
  assert gap["gap"] == pytest.approx(2 / 3) and gap["num_questions"] == 3
  assert gap["interval"][0] <= 2 / 3 <= gap["interval"][1]
  # A strategy without rows for every question of the bins: no gap.
  assert search_checks.paired_gap(rows, bins, {2}, ("dvts", "M=4,k=0", 4),
                                  ("best_of_n", "", 4)) is None


def test_engine_check_takes_the_two_hardest_bins_and_each_verifiers_baseline():
  rows = (_rows("best_of_n", "verifier=exact", 4, {0}) + _rows("beam", "M=4,k=0,verifier=exact",
                                                               4, {0, 1, 2, 3})
          + _rows("best_of_n", "", 4, {0, 3}) + _rows("beam", "M=4,k=0", 4, {0}))
  bins = {0: 1, 1: 2, 2: 3, 3: 3}
  check = search_checks.engine_check(rows, bins)
  assert check["bins"] == [2, 3]
  assert check["exact"]["beam M=4,k=0"]["gap_to_best_of_n"]["gap"] == 1.0
  assert check["prm"]["beam M=4,k=0"]["gap_to_best_of_n"]["gap"] == pytest.approx(-1 / 3)
  assert "dvts M=4,k=0" not in check["prm"]


@pytest.mark.parametrize("subtrees, width, expected", [
    (4, 1, 1 - 0.75 ** 4),                 # best-of-4: some whole sample right
    (1, 4, (1 - 0.5 ** 4) ** 2),           # beam N = M = 4: each step, some of 4 right
    (2, 2, 1 - (1 - 0.75 ** 2) ** 2),      # DVTS N=4, M=2: some subtree of 2 survives
])
def test_perfect_search_on_hand_computed_rates(subtrees, width, expected):
  assert search_checks.perfect_search([0.5, 0.5], subtrees, width) == pytest.approx(expected)
  # A step the policy never writes right cannot be searched past.
  assert search_checks.perfect_search([1.0, 0.0], subtrees, width) == 0.0


def test_engine_check_predicts_only_the_exact_rows_it_can():
  rows = (_rows("best_of_n", "verifier=exact", 4, {0}) + _rows("beam", "M=4,k=0,verifier=exact",
                                                               4, {0, 1})
          + _rows("lookahead", "M=4,k=3,verifier=exact", 4, {0})
          + _rows("best_of_n", "", 4, {0}) + _rows("beam", "M=4,k=0", 4, {0}))
  bins = {0: 1, 1: 2, 2: 3, 3: 3}
  rates = {q: [0.5, 0.5] for q in (1, 2, 3)}
  check = search_checks.engine_check(rows, bins, step_rates=rates)
  assert check["exact"]["best_of_n"]["predicted"] == pytest.approx(1 - 0.75 ** 4)
  assert check["exact"]["beam M=4,k=0"]["predicted"] == pytest.approx((1 - 0.5 ** 4) ** 2)
  assert "predicted" not in check["exact"]["lookahead M=4,k=3"]
  assert "predicted" not in check["prm"]["beam M=4,k=0"]
  # Rates missing for a checked question: no prediction at all.
  partial = search_checks.engine_check(rows, bins, step_rates={1: [0.5]})
  assert "predicted" not in partial["exact"]["best_of_n"]


def test_distinct_prefixes_are_averaged_per_setting_and_budget():
  rows = (_rows("beam", "M=4,k=0", 16, set(), distinct=3.0)
          + _rows("beam", "M=4,k=0,distinct=0", 16, set(), questions=[0, 1], distinct=1.0)
          + _rows("best_of_n", "", 16, set()))
  assert search_checks.distinct_prefixes(rows) == {"beam M=4,k=0": {16: 3.0},
                                                   "beam M=4,k=0,distinct=0": {16: 1.0}}
