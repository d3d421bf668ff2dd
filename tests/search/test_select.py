"""Step aggregation and answer selection on hand-made cases."""

import numpy as np
import pytest

from ttscale.search import select

# Two questions, three samples each: answers, validity and scores by hand.
ANSWERS = [["7", "5", "5"], [None, None, None]]
SCORES = np.array([[0.9, 0.5, 0.5], [0.8, 0.9, 0.1]])


def test_answer_ids_share_an_id_per_equal_string_and_mark_missing_answers():
  ids, valid = select.answer_ids([["7", "5", "7", None]])
  assert ids.tolist() == [[0, 1, 0, -1]]
  assert valid.tolist() == [[True, True, True, False]]


def test_answer_ids_reject_questions_with_different_sample_counts():
  with pytest.raises(ValueError, match="same N"):
    select.answer_ids([["1"], ["1", "2"]])


@pytest.mark.parametrize("how, expected", [
    ("last", [0.25, 0.9, 0.0]),
    ("min", [0.25, 0.6, 0.0]),
    ("prod", [0.8 * 0.5 * 0.25, 0.6 * 0.9, 0.0]),
])
def test_step_aggregation_reads_only_real_steps(how, expected):
  step_scores = np.array([[0.8, 0.5, 0.25, 0.99],    # three steps, one padding
                          [0.6, 0.9, 0.01, 0.01],    # two steps
                          [0.3, 0.3, 0.30, 0.30]])   # no step at all
  step_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
  found = select.aggregate_steps(step_scores, step_mask, how)
  np.testing.assert_allclose(found, expected, rtol=1e-6)


def test_unknown_aggregation_and_selector_name_the_choices():
  with pytest.raises(ValueError, match="last"):
    select.aggregate_steps(np.ones((1, 1)), np.ones((1, 1), bool), "mean")
  with pytest.raises(ValueError, match="majority"):
    select.select("oracle", np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1), bool))


def test_weighted_best_of_n_sums_scores_per_answer_where_best_of_n_takes_the_top():
  ids, valid = select.answer_ids(ANSWERS)
  # "5" has 0.5 + 0.5 = 1.0 > 0.9 for "7"; the single best sample says "7".
  assert select.weighted_best_of_n(ids, SCORES, valid).tolist() == [1, -1]
  assert select.best_of_n(SCORES, valid).tolist() == [0, -1]
  assert select.majority(ids, valid).tolist() == [1, -1]


def test_ties_go_to_the_answer_seen_first():
  ids, valid = select.answer_ids([["4", "9", "9", "4"]])
  scores = np.array([[0.5, 0.25, 0.25, 0.0]])   # both answers sum to 0.5
  assert select.weighted_best_of_n(ids, scores, valid).tolist() == [0]
  assert select.majority(ids, valid).tolist() == [0]
  assert select.best_of_n(np.array([[0.3, 0.7, 0.7, 0.1]]), valid).tolist() == [1]


def test_a_single_sample_is_chosen_by_every_selector_when_it_has_an_answer():
  ids, valid = select.answer_ids([["3"], [None]])
  scores = np.array([[0.01], [0.99]])
  for name in select.SELECTORS:
    assert select.select(name, ids, scores, valid).tolist() == [0, -1], name


def test_samples_without_an_answer_never_win_whatever_their_score():
  ids, valid = select.answer_ids([[None, "2", None]])
  scores = np.array([[1.0, 0.0, 1.0]])
  for name in select.SELECTORS:
    assert select.select(name, ids, scores, valid).tolist() == [1], name
