"""Compute-optimal selection: cross-validation, folds, matching budget, efficiency ratio."""

import numpy as np
import pytest

from ttscale.scaling import compute_optimal as co

BEAM = "beam M=4,k=0"


def _row(question, method, params, budget, generations, correct):
  return {"question_index": question, "level": 1, "method": method, "params": params,
          "budget": budget, "seed": 0, "answer": "1" if correct else "0",
          "correct": bool(correct), "generations": generations, "flops": 1.0,
          "seconds": 0.0}


def _rows(method, params, budget, correct_on, questions, generations=None):
  """One row per question, correct exactly on `correct_on`."""
  return [_row(q, method, params, budget, budget if generations is None else generations,
               q in correct_on) for q in questions]


# --- two_fold_choice -----------------------------------------------------------------------------


def test_two_fold_choice_never_scores_a_question_by_a_choice_made_on_it():
  """Fails if a strategy chosen on a fold is scored on that same fold (leakage: 1.0, not 0.0)."""
  folds = np.array([0, 0, 1, 1])
  correct = {"A": np.array([True, True, False, False]),   # right exactly on fold 0
             "B": np.array([False, False, True, True])}   # right exactly on fold 1
  choice = co.two_fold_choice(correct, folds)
  # Chosen on fold 0: A, scored on fold 1 -> 0; chosen on fold 1: B, scored on fold 0 -> 0.
  assert choice.accuracy == 0.0
  assert choice.chosen == ("A", "B")


def test_two_fold_choice_of_a_strategy_best_everywhere_is_its_accuracy():
  """Fails if the cross-validated accuracy of a dominant strategy is not its own accuracy."""
  folds = np.array([0, 1, 0, 1])
  correct = {"B": np.array([True, False, False, False]),
             "A": np.array([True, True, True, False])}
  choice = co.two_fold_choice(correct, folds)
  # Fold 0 (q0, q2): A 1.0 vs B 0.5 -> A, scores 1 on q1, q3; fold 1 (q1, q3): A 0.5 vs B 0 -> A,
  # scores 2 on q0, q2. (1 + 2) / 4 = A's accuracy.
  assert choice.accuracy == pytest.approx(0.75)
  assert choice.chosen == ("A", "A")


def test_two_fold_choice_breaks_ties_by_the_first_name_in_sorted_order():
  """Fails if a tie on the choosing fold goes to another strategy than the first sorted name."""
  folds = np.array([0, 0, 1, 1])
  correct = {"zeta": np.array([False, True, True, True]),   # inserted first, sorts last
             "alpha": np.array([True, False, False, False])}
  choice = co.two_fold_choice(correct, folds)
  # Fold 0: 0.5 each -> alpha, scored on fold 1: 0. Fold 1: zeta, scored on fold 0: 1. 1 / 4.
  # (Ties to zeta would give (2 + 1) / 4.)
  assert choice.chosen == ("alpha", "zeta")
  assert choice.accuracy == pytest.approx(0.25)


def test_two_fold_choice_gives_ties_to_the_preferred_strategy():
  """Fails if a tie goes to another strategy than `prefer` (the best-of-N baseline)."""
  folds = np.array([0, 0, 1, 1])
  same = np.array([True, False, True, False])
  choice = co.two_fold_choice({"beam": same, "best_of_n": same.copy()}, folds,
                              prefer="best_of_n")
  assert choice.chosen == ("best_of_n", "best_of_n")


def test_compute_optimal_keeps_best_of_n_where_strategies_tie():
  """Fails if a strategy that only ties best-of-N (everything wrong) is chosen over it."""
  rows = _rows("best_of_n", "", 1, set(), QUESTIONS) + _rows("beam", "M=4,k=0", 1, set(),
                                                               QUESTIONS)
  at1 = co.compute_optimal(rows, QUESTIONS, BINS, seed=0)["budgets"][1]
  assert all(v["chosen"] == ["best_of_n", "best_of_n"] for v in at1["per_bin"].values())


def test_two_fold_choice_needs_both_folds():
  """Fails if a fold assignment with an empty fold is accepted."""
  with pytest.raises(ValueError, match="both folds"):
    co.two_fold_choice({"A": np.array([True, False])}, np.array([1, 1]))


# --- balanced_folds ------------------------------------------------------------------------------


def test_balanced_folds_split_each_bin_in_halves():
  """Fails if a bin's halves differ by more than one question or folds are not 0/1."""
  bins = np.array([1, 2, 1, 3, 2, 1, 2, 2, 3, 3, 3, 1, 1, 2, 3])  # sizes 5, 5, 5
  bins = np.concatenate([bins, [4, 4, 4, 4, 5]])                  # and 4, 1
  folds = co.balanced_folds(bins, seed=3)
  assert set(folds.tolist()) <= {0, 1}
  for b, size in ((1, 5), (2, 5), (3, 5), (4, 4), (5, 1)):
    in_bin = folds[bins == b]
    assert len(in_bin) == size
    # The first size // 2 of a permutation go to fold 0, the rest to fold 1.
    assert (in_bin == 0).sum() == size // 2
    assert abs((in_bin == 0).sum() - (in_bin == 1).sum()) <= 1


def test_balanced_folds_are_deterministic_for_a_seed():
  """Fails if one seed gives two assignments, or every seed gives the same one."""
  bins = np.repeat([1, 2, 3], 16)
  first = co.balanced_folds(bins, seed=7)
  assert first.tolist() == co.balanced_folds(bins, seed=7).tolist()
  others = [co.balanced_folds(bins, seed=s).tolist() for s in range(8, 12)]
  assert any(o != first.tolist() for o in others)


# --- matching_budget -----------------------------------------------------------------------------

CURVE = {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.8}


def test_matching_budget_interpolates_in_log2_budget():
  """Fails if 0.65 (halfway from 2 to 4) does not need 2**1.5 generations."""
  assert co.matching_budget(0.65, CURVE) == pytest.approx(2 ** 1.5)
  assert co.matching_budget(0.75, CURVE) == pytest.approx(2 ** 2.5)
  assert co.matching_budget(0.7, CURVE) == pytest.approx(4.0)


def test_matching_budget_at_the_first_point_and_above_the_grid():
  """Fails if a target met at budget 1 is not 1, or one never met is not None."""
  assert co.matching_budget(0.5, CURVE) == 1.0
  assert co.matching_budget(0.3, CURVE) == 1.0
  assert co.matching_budget(0.8, CURVE) == pytest.approx(8.0)
  assert co.matching_budget(0.9, CURVE) is None


def test_matching_budget_of_a_non_monotone_curve_is_the_first_crossing():
  """Fails if a later crossing (4 -> 8) is returned instead of the first (1 -> 2)."""
  curve = {1: 0.5, 2: 0.8, 4: 0.6, 8: 0.9}
  # 1 -> 2: t = (0.7 - 0.5) / 0.3 = 2/3 -> 2**(2/3); the later one would be 4 * 2**(1/3).
  assert co.matching_budget(0.7, curve) == pytest.approx(2 ** (2 / 3))
  # Only the 4 -> 8 segment reaches 0.85: t = 0.25 / 0.3.
  assert co.matching_budget(0.85, curve) == pytest.approx(4 * 2 ** (0.25 / 0.3))


# --- correctness_by_strategy ---------------------------------------------------------------------


def test_correctness_is_grouped_by_generations_not_budget():
  """Fails if lookahead (N=2, k=1: 2·(1+1) = 4 generations) is filed under its budget N=2."""
  questions = [0, 1, 2]
  rows = (_rows("best_of_n", "", 4, {0}, questions)
          + _rows("lookahead", "M=2,k=1", 2, {1, 2}, questions, generations=4)
          + _rows("best_of_n", "", 4, {0, 1, 2}, [9]))   # not studied: ignored
  table = co.correctness_by_strategy(rows, questions)
  assert set(table) == {4}
  assert set(table[4]) == {"best_of_n", "lookahead M=2,k=1"}
  assert table[4]["best_of_n"].tolist() == [True, False, False]
  assert table[4]["lookahead M=2,k=1"].tolist() == [False, True, True]


def test_correctness_follows_the_order_of_the_questions_given():
  """Fails if the vectors are not in the order of `questions` (rows come in another order)."""
  rows = _rows("best_of_n", "", 1, {5}, [7, 5, 6])
  table = co.correctness_by_strategy(rows, [5, 6, 7])
  assert table[1]["best_of_n"].tolist() == [True, False, False]


# --- compute_optimal -----------------------------------------------------------------------------

QUESTIONS = list(range(8))
BINS = np.array([1, 1, 1, 1, 2, 2, 2, 2])
BON_CORRECT = {1: set(), 2: {0}, 4: {0, 4}, 8: set(range(8))}   # 0, 1/8, 2/8, 1


def _table(beam_questions=QUESTIONS):
  rows = []
  for n, right in BON_CORRECT.items():
    rows += _rows("best_of_n", "", n, right, QUESTIONS)
  # Beam at 4 generations is right everywhere, as best-of-N at 8: strictly better than
  # best-of-N at 4 on every half of every bin (best-of-N at 4 is right on one question per bin).
  rows += _rows("beam", "M=4,k=0", 4, set(range(8)), beam_questions)
  # A revision strategy at 4 generations, worse than best-of-N.
  rows += _rows("revisions", "s=4,p=1,select=majority", 4, {0}, QUESTIONS)
  return rows


def test_compute_optimal_efficiency_ratio_by_hand():
  """Fails if beam at 4 generations, matching best-of-N at 8, is not an efficiency ratio of 2."""
  result = co.compute_optimal(_table(), QUESTIONS, BINS, seed=0,
                              strategies=lambda name: not name.startswith("revisions"))
  assert result["best_of_n_curve"] == pytest.approx({1: 0.0, 2: 0.125, 4: 0.25, 8: 1.0})
  budgets = result["budgets"]
  assert sorted(budgets) == [1, 2, 4, 8]
  at4 = budgets[4]
  assert at4["accuracy"] == pytest.approx(1.0)
  assert at4["best_of_n"] == pytest.approx(0.25)
  assert at4["num_strategies"] == 2
  # 1.0 is best-of-N's accuracy at 8: t = (1.0 - 0.25) / 0.75 = 1 -> 8 generations; 8 / 4.
  assert at4["best_of_n_budget_to_match"] == pytest.approx(8.0)
  assert at4["efficiency_ratio"] == pytest.approx(2.0)
  for b in (1, 2):
    assert at4["per_bin"][b] == {"accuracy": pytest.approx(1.0), "chosen": [BEAM, BEAM],
                                 "best_of_n": pytest.approx(0.25)}
  # Only best-of-N at the other budgets: it matches itself.
  for g in (1, 2, 8):
    assert budgets[g]["accuracy"] == pytest.approx(result["best_of_n_curve"][g])
    assert budgets[g]["num_strategies"] == 1
    assert budgets[g]["efficiency_ratio"] == pytest.approx(1.0)


def test_compute_optimal_does_not_depend_on_the_seed_when_one_strategy_dominates():
  """Fails if the dominant strategy is not chosen on every fold for some seeds."""
  for seed in range(5):
    at4 = co.compute_optimal(_table(), QUESTIONS, BINS, seed=seed)["budgets"][4]
    assert at4["accuracy"] == pytest.approx(1.0)
    assert at4["efficiency_ratio"] == pytest.approx(2.0)
    assert all(v["chosen"] == [BEAM, BEAM] for v in at4["per_bin"].values())


def test_compute_optimal_family_predicate_excludes_strategies():
  """Fails if a strategy outside the family (beam, for revisions) is still chosen."""
  result = co.compute_optimal(_table(), QUESTIONS, BINS, seed=0,
                              strategies=lambda name: name.startswith("revisions"))
  at4 = result["budgets"][4]
  assert at4["num_strategies"] == 2   # the revision strategy and best-of-N, always kept
  chosen = {name for v in at4["per_bin"].values() for name in v["chosen"]}
  assert BEAM not in chosen
  # Revisions at 4 are right only where best-of-N is, so the accuracy is at most best-of-N's.
  assert at4["accuracy"] <= 0.25 + 1e-12
  assert result["budgets"][4]["efficiency_ratio"] <= 1.0 + 1e-12
  everything = co.compute_optimal(_table(), QUESTIONS, BINS, seed=0)["budgets"][4]
  assert everything["num_strategies"] == 3


def test_compute_optimal_names_a_strategy_with_missing_questions():
  """Fails if a strategy lacking rows for some studied questions is silently dropped."""
  rows = _table(beam_questions=QUESTIONS[:-1])
  with pytest.raises(ValueError, match=r"'beam M=4,k=0' at 4 generations .*question 7"):
    co.compute_optimal(rows, QUESTIONS, BINS, seed=0)


def test_compute_optimal_without_best_of_n_raises():
  """Fails if a table without best-of-N rows for the studied questions is accepted."""
  rows = _rows("beam", "M=4,k=0", 4, {0}, QUESTIONS)
  with pytest.raises(ValueError, match="no best_of_n rows"):
    co.compute_optimal(rows, QUESTIONS, BINS, seed=0)


def test_strategy_name_strips_empty_params():
  """Fails if best-of-N's name carries a trailing space (it must equal the baseline name)."""
  assert co.strategy_name("best_of_n", "") == "best_of_n"
  assert co.strategy_name("beam", "M=4,k=0") == BEAM
  assert co.strategy_name(*co.BASELINE) == "best_of_n"


def test_bootstrap_intervals_bracket_the_estimates_and_widen_with_fewer_questions():
  rng = np.random.default_rng(0)

  def intervals(num_questions):
    chosen = rng.random(num_questions) < 0.7
    best_of_n = {1: rng.random(num_questions) < 0.4, 2: rng.random(num_questions) < 0.6,
                 4: rng.random(num_questions) < 0.8}
    return chosen, best_of_n, co.bootstrap_intervals(chosen, best_of_n, 2, seed=3)[0]

  chosen, best_of_n, few = intervals(40)
  low, high = few["accuracy_interval"]
  assert low <= chosen.mean() <= high
  low, high = few["best_of_n_interval"]
  assert low <= best_of_n[2].mean() <= high
  ratio = co.matching_budget(chosen.mean(), {g: c.mean() for g, c in best_of_n.items()}) / 2
  low, high = few["efficiency_ratio_interval"]
  assert low <= ratio and (high is None or ratio <= high)
  *_, many = intervals(4000)
  width = lambda i: i["accuracy_interval"][1] - i["accuracy_interval"][0]
  assert width(many) < width(few) / 4


def test_bootstrap_ratio_bound_above_the_grid_is_none():
  chosen = np.ones(30, bool)  # compute-optimal always right; best-of-N never
  result, ratios = co.bootstrap_intervals(
      chosen, {1: np.zeros(30, bool), 2: np.zeros(30, bool)}, 1, seed=0)
  assert np.all(np.isinf(ratios))
  assert result["efficiency_ratio_interval"] == [None, None]
