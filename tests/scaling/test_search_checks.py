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


def test_distinct_prefixes_are_averaged_per_setting_and_budget():
  rows = (_rows("beam", "M=4,k=0", 16, set(), distinct=3.0)
          + _rows("beam", "M=4,k=0,distinct=0", 16, set(), questions=[0, 1], distinct=1.0)
          + _rows("best_of_n", "", 16, set()))
  assert search_checks.distinct_prefixes(rows) == {"beam M=4,k=0": {16: 3.0},
                                                   "beam M=4,k=0,distinct=0": {16: 1.0}}
