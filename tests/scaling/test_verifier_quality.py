"""Verifier quality (AUC, calibration) and accuracy vs N on hand-made cases."""

import numpy as np
import pytest

from ttscale.scaling import verifier_quality as vq
from ttscale.scaling.verifier_quality import Method, SamplePool

ALL_METHODS = [
    Method("best", "best_of_n", "orm"),
    Method("weighted", "weighted_best_of_n", "orm"),
    Method("majority", "majority"),
    Method("pass", "pass_at_n"),
]


def _random_pool(num_questions=4, pool_size=6, seed=0):
  """Three possible answers per question, answer 0 the right one, ~20% without an answer."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 3, (num_questions, pool_size)).astype(np.int32)
  valid = rng.random((num_questions, pool_size)) < 0.8
  ids = np.where(valid, ids, -1)
  return SamplePool(answer_ids=ids, valid=valid, correct=valid & (ids == 0),
                    scores={"orm": rng.random((num_questions, pool_size))})


# --- roc_auc -------------------------------------------------------------------------------------


def test_auc_is_one_for_perfect_separation_and_zero_when_reversed():
  labels = [False, False, True, True]
  assert vq.roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
  assert vq.roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0


def test_auc_counts_ties_as_one_half():
  # Positive pairs (pos, neg): (0.4, 0.1) 1, (0.4, 0.4) 1/2, (0.8, 0.1) 1, (0.8, 0.4) 1 --> 3.5 / 4.
  assert vq.roc_auc([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1]) == pytest.approx(0.875)
  assert vq.roc_auc([0.3] * 5, [1, 0, 0, 1, 0]) == pytest.approx(0.5)


def test_auc_matches_counting_all_pairs_with_many_ties():
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 5, 40) / 4   # five distinct values: many ties
  labels = rng.random(40) < 0.4
  diff = scores[labels][:, None] - scores[~labels][None, :]
  by_pairs = ((diff > 0) + 0.5 * (diff == 0)).mean()
  assert vq.roc_auc(scores, labels) == pytest.approx(by_pairs)


def test_auc_rejects_one_class_and_mismatched_lengths():
  with pytest.raises(ValueError, match="both classes"):
    vq.roc_auc([0.1, 0.9], [True, True])
  with pytest.raises(ValueError, match="3 scores but 2 labels"):
    vq.roc_auc([0.1, 0.5, 0.9], [True, False])


# --- calibration ---------------------------------------------------------------------------------


def test_ece_is_zero_when_each_bin_mean_matches_its_target_rate():
  # Bin [0.2, 0.3): mean prediction 0.25, targets 0.5 and 0 (soft) --> 0.25; bin [0.7, 0.8): 0.75.
  predictions = [0.25, 0.25, 0.75, 0.75]
  assert vq.expected_calibration_error(predictions, [0.5, 0.0, 1.0, 0.5]) == pytest.approx(0.0)


def test_ece_and_table_on_hand_made_bins():
  predictions = [0.05, 0.15, 0.15, 0.95]
  targets = [0, 1, 0, 1]
  table = vq.reliability_table(predictions, targets)
  assert [(row["lower"], row["upper"], row["count"]) for row in table] == [
      (0.0, 0.1, 1), (0.1, 0.2, 2), (0.9, 1.0, 1)]
  np.testing.assert_allclose([row["mean_prediction"] for row in table], [0.05, 0.15, 0.95])
  np.testing.assert_allclose([row["mean_target"] for row in table], [0.0, 0.5, 1.0])
  # (1 * 0.05 + 2 * 0.35 + 1 * 0.05) / 4
  assert vq.expected_calibration_error(predictions, targets) == pytest.approx(0.2)


def test_a_prediction_of_one_goes_to_the_last_bin_and_edges_open_their_bin():
  table = vq.reliability_table([1.0, 0.5, 0.3], [1, 1, 0], num_bins=2)
  assert [(row["lower"], row["upper"], row["count"]) for row in table] == [
      (0.0, 0.5, 1), (0.5, 1.0, 2)]
  assert vq.reliability_table([0.3], [0])[0]["lower"] == 0.3


def test_calibration_rejects_values_outside_the_unit_interval():
  with pytest.raises(ValueError, match="predictions"):
    vq.expected_calibration_error([1.5], [1.0])
  with pytest.raises(ValueError, match="targets"):
    vq.expected_calibration_error([0.5], [-1.0])


# --- accuracy_vs_n -------------------------------------------------------------------------------


def test_at_n_equal_to_the_pool_every_draw_is_the_whole_pool():
  #           A ok  A ok  B     none
  # Q0:      0.4   0.4   0.7   0.99   best: B (wrong); weighted: A 0.8 > B 0.7; majority: A.
  #           Y     X ok  Y     none
  # Q1:      0.2   0.9   0.3   0.95   best: X; weighted: X 0.9 > Y 0.5; majority: Y (wrong).
  pool = SamplePool(
      answer_ids=[[0, 0, 1, -1], [0, 1, 0, -1]],
      valid=[[1, 1, 1, 0], [1, 1, 1, 0]],
      correct=[[1, 1, 0, 0], [0, 1, 0, 0]],
      scores={"orm": [[0.4, 0.4, 0.7, 0.99], [0.2, 0.9, 0.3, 0.95]]})
  found = vq.accuracy_vs_n(pool, ALL_METHODS, budgets=[4], num_draws=3, seed=0)
  # Per question [0, 1] --> stderr std([0, 1], ddof=1) / sqrt(2) = 0.5; [1, 1] --> 0.
  expected = {"best": (0.5, 0.5), "weighted": (1.0, 0.0), "majority": (0.5, 0.5),
              "pass": (1.0, 0.0)}
  for name, (mean, stderr) in expected.items():
    assert found[name][4] == pytest.approx((mean, stderr)), name


def test_weighted_best_of_n_and_best_of_n_differ_by_hand():
  # Answer A twice (0.4, 0.4, both right), answer B once (0.7, wrong).
  pool = SamplePool(answer_ids=[[0, 0, 1]], valid=[[1, 1, 1]], correct=[[1, 1, 0]],
                    scores={"orm": [[0.4, 0.4, 0.7]]})
  methods = ALL_METHODS[:2]
  found = vq.accuracy_vs_n(pool, methods, budgets=[2, 3], num_draws=2000, seed=0)
  assert found["weighted"][3].mean == 1.0   # A: 0.8 > 0.7
  assert found["best"][3].mean == 0.0       # B: 0.7 is the top sample
  # N = 2 without replacement: {A, A} 1 in 3 (right for both), {A, B} 2 in 3 (B wins both).
  # With replacement {A, A} would be 4 in 9.
  assert found["weighted"][2].mean == pytest.approx(1 / 3, abs=0.05)
  assert found["best"][2].mean == found["weighted"][2].mean   # same draws, same picks


def test_at_n_one_every_selector_takes_the_drawn_sample_and_pass_is_mean_correct():
  pool = _random_pool()
  found = vq.accuracy_vs_n(pool, ALL_METHODS, budgets=[1], num_draws=2000, seed=3)
  # Paired draws: with a single sample, every method is right exactly when it is correct.
  assert len({found[method.name][1] for method in ALL_METHODS}) == 1
  assert found["pass"][1].mean == pytest.approx(pool.correct.mean(), abs=0.03)


def test_pass_at_n_is_non_decreasing_in_n_and_reaches_any_correct_at_p():
  pool = _random_pool()
  budgets = list(range(1, 7))
  found = vq.accuracy_vs_n(pool, [Method("pass", "pass_at_n")], budgets, num_draws=50, seed=0)
  curve = [found["pass"][n].mean for n in budgets]
  assert all(a <= b for a, b in zip(curve, curve[1:], strict=False)), curve
  assert curve[-1] == pytest.approx(pool.correct.any(axis=1).mean())
  assert curve[0] < curve[-1]   # not flat, or the check above would be vacuous


def test_same_seed_same_numbers_other_seed_other_numbers_and_budgets_do_not_interact():
  pool = _random_pool()
  run = lambda budgets, seed: vq.accuracy_vs_n(pool, ALL_METHODS, budgets, num_draws=20,
                                               seed=seed)
  first = run([2, 3], seed=0)
  assert run([2, 3], seed=0) == first
  assert run([2, 3], seed=1) != first
  # One permutation per (question, draw) serves every budget.
  assert run([3], seed=0)["best"][3] == first["best"][3]


def test_samples_without_an_answer_are_never_chosen_and_their_nan_scores_are_never_read():
  #        none  B     A ok  A ok
  # scores  NaN   0.1   0.9   0.2    weighted: A 1.1 > B 0.1 (a NaN in the sums would make every
  #                                  total NaN and hand the pick to the first valid sample, B).
  pool = SamplePool(answer_ids=[[-1, 1, 0, 0]], valid=[[0, 1, 1, 1]], correct=[[0, 0, 1, 1]],
                    scores={"orm": [[np.nan, 0.1, 0.9, 0.2]]})
  # Ten orders of the pool, so that in some B comes first among the valid samples.
  found = vq.accuracy_vs_n(pool, ALL_METHODS, budgets=[4], num_draws=10, seed=0)
  assert {name: by_n[4].mean for name, by_n in found.items()} == {
      "best": 1.0, "weighted": 1.0, "majority": 1.0, "pass": 1.0}


def test_bad_budgets_methods_and_pools_raise_with_the_culprit_named():
  pool = _random_pool(pool_size=6)
  run = lambda methods, budgets: vq.accuracy_vs_n(pool, methods, budgets, num_draws=2, seed=0)
  with pytest.raises(ValueError, match="N=7"):
    run(ALL_METHODS, [2, 7])
  with pytest.raises(ValueError, match="N=0"):
    run(ALL_METHODS, [0])
  with pytest.raises(ValueError, match="'oracle'.*'top2'"):
    run([Method("oracle", "top2", "orm")], [1])
  with pytest.raises(ValueError, match="'prm'.*'prm_last'"):
    run([Method("prm", "best_of_n", "prm_last")], [1])
  with pytest.raises(ValueError, match="'prm'.*None"):
    run([Method("prm", "best_of_n")], [1])
  with pytest.raises(ValueError, match="unique"):
    run([Method("a", "majority"), Method("a", "pass_at_n")], [1])
  with pytest.raises(ValueError, match="correct"):
    SamplePool(answer_ids=[[-1]], valid=[[False]], correct=[[True]])
  with pytest.raises(ValueError, match="orm"):
    SamplePool(answer_ids=[[0, 1]], valid=[[True, True]], correct=[[True, False]],
               scores={"orm": [[0.5]]})


# ------------------------------------------------------------- sibling steps

def _pool() -> list:
  """Two questions. Question 0: after the empty prefix, siblings "a" (right,
  0.9), "b" (wrong, 0.2), "a" again; after "a", "c" (right, 0.6) and "d"
  (wrong, 0.7). Question 1: one solution, all right (no wrong sibling)."""
  S = vq.ScoredSolution
  return [S(0, ["a", "c"], [True, True], [0.9, 0.6]),
          S(0, ["b", "x"], [False, False], [0.2, 0.99]),  # "x" follows a wrong prefix
          S(0, ["a", "d"], [True, False], [0.9, 0.7]),
          S(1, ["a"], [True], [0.1])]


def test_sibling_groups_follow_right_prefixes_only():
  groups = {(tuple(g.texts)): g for g in vq.sibling_groups(_pool())}
  assert set(groups) == {("a", "b", "a"), ("c", "d"), ("a",)}
  np.testing.assert_array_equal(groups[("a", "b", "a")].right, [True, False, True])


def test_sibling_auc_on_a_hand_made_pool():
  # Pairs of distinct texts: ("a" 0.9 vs "b" 0.2) right wins; ("c" 0.6 vs "d"
  # 0.7) wrong wins; question 1 has no wrong sibling. AUC = 1/2.
  result = vq.sibling_auc(vq.sibling_groups(_pool()))
  assert result == {"auc": 0.5, "num_pairs": 2, "num_groups": 2}
  tie = [vq.ScoredSolution(0, ["a"], [True], [0.5]),
         vq.ScoredSolution(0, ["b"], [False], [0.5])]
  assert vq.sibling_auc(vq.sibling_groups(tie))["auc"] == 0.5


def test_top_of_m_against_a_random_sibling():
  groups = vq.sibling_groups(_pool())
  result = vq.top_of_m(groups, m=2, num_draws=200, seed=0)
  # Groups with >= 2 siblings: {"a","b","a"} (top always right; random 2/3 on
  # average) and {"c","d"} (top "d": wrong; random 1/2).
  assert result["num_groups"] == 2
  assert result["top"] == pytest.approx(0.5)
  assert result["random"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=0.03)
  # Mixed draws only: every draw of {c, d} (top wrong); of {a, b, a} the 2 in
  # 3 with "b" (top right): 2/3 / (1 + 2/3) = 0.4.
  assert result["top_mixed"] == pytest.approx(0.4, abs=0.05)
  assert result["random_mixed"] == pytest.approx(0.5)

