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


# ------------------------------------------------- hierarchical (revision chains)


def _chain_ids(answers):
  """ids, valid [questions, chains, attempts] from answers of that shape, ids
  shared across a question's chains (as `answer_ids` gives on the flat layout)."""
  shape = (len(answers), len(answers[0]), len(answers[0][0]))
  ids, valid = select.answer_ids([[a for chain in q for a in chain] for q in answers])
  return ids.reshape(shape), valid.reshape(shape)


def test_hierarchical_picks_per_chain_first_where_flat_weighted_best_of_n_differs():
  """Fails if the hierarchical selector is the flat weighted best-of-N over all
  attempts, or weighs a chain's pick by anything but its own score sum."""
  answers = [[["7", "7", "9"],     # 7: 0.45 + 0.45 = 0.9 < 9: 0.95 -> chain picks 9
              ["7", "7", "9"],     # same: picks 9 (0.95)
              ["7", "7", "3"]]]    # 7: 0.9 > 3: 0.2 -> picks 7 (0.9)
  scores = np.array([[[0.45, 0.45, 0.95], [0.45, 0.45, 0.95], [0.45, 0.45, 0.2]]])
  ids, valid = _chain_ids(answers)
  # Across chains: 9 weighs 0.95 + 0.95 = 1.9 > 0.9 for 7. Flat: 7 has 2.7.
  assert select.hierarchical_weighted_best_of_n(ids, scores, valid).tolist() == [2]
  flat = select.weighted_best_of_n(ids.reshape(1, 9), scores.reshape(1, 9), valid.reshape(1, 9))
  assert flat.tolist() == [0]  # "7": a flat implementation gives another answer


def test_hierarchical_ignores_chains_without_an_answer_and_indexes_flat():
  """Fails if a chain with no valid attempt takes part (its high scores would
  win), if all-invalid questions get an index, or if the index is not
  `chain * attempts + attempt` of an attempt giving the chosen answer."""
  answers = [
      [["7", "7", "3"], [None, None, None], ["4", "9", None]],   # chain 2 picks 9 (0.95)
      [[None] * 3, [None] * 3, [None] * 3],
      [[None, None, None], [None, "5", "5"], ["6", None, "6"]],  # 5: 1.0 vs 6: 0.75
      [[None, None, None], ["8", None, "8"], [None, None, None]],  # 8 with a zero weight
  ]
  scores = np.array([
      [[0.45, 0.45, 0.2], [5.0, 5.0, 5.0], [0.5, 0.95, 9.0]],
      [[0.9, 0.9, 0.9], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9]],
      [[9.0, 9.0, 9.0], [0.1, 0.5, 0.5], [0.25, 9.0, 0.5]],
      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
  ])
  ids, valid = _chain_ids(answers)
  chosen = select.hierarchical_weighted_best_of_n(ids, scores, valid).tolist()
  # Question 0: chains pick 7 (0.9), nothing, 9 (0.95): 9 wins in chain 2 at
  # attempt 1. Question 2: 5 (1.0, chain 1 attempt 1) beats 6 (0.75). Question 3:
  # the only answer wins though it weighs 0, no more than the empty chains.
  assert chosen == [2 * 3 + 1, -1, 1 * 3 + 1, 1 * 3 + 0]
  assert [answers[q][i // 3][i % 3] for q, i in ((0, chosen[0]), (2, chosen[2]), (3, chosen[3]))
          ] == ["9", "5", "8"]


def test_hierarchical_all_invalid_is_minus_one():
  """Fails if a question with no answer anywhere gets an index."""
  ids = -np.ones((2, 2, 2), np.int32)
  scores = np.ones((2, 2, 2))
  assert select.hierarchical_weighted_best_of_n(
      ids, scores, np.zeros((2, 2, 2), bool)).tolist() == [-1, -1]


def _hierarchical_reference(answers, scores):
  """Pure Python: per chain the answer with the largest score sum (ties: seen
  first), weighted by that sum; across chains the largest total weight (ties:
  the answer whose first chain comes first); the first attempt of the first
  chain that picked it."""
  picks = []
  for chain, chain_scores in zip(answers, scores, strict=True):
    totals = {}
    for a, s in zip(chain, chain_scores, strict=True):
      if a is not None:
        totals[a] = totals.get(a, 0.0) + s
    if not totals:
      picks.append(None)
      continue
    best = max(totals.values())
    answer = next(a for a in chain if a is not None and totals[a] == best)
    picks.append((answer, totals[answer], chain.index(answer)))
  weights = {}
  for pick in picks:
    if pick:
      weights[pick[0]] = weights.get(pick[0], 0.0) + pick[1]
  if not weights:
    return -1
  best = max(weights.values())
  for c, pick in enumerate(picks):
    if pick and weights[pick[0]] == best:
      return c * len(answers[0]) + pick[2]
  raise AssertionError("unreachable")


def test_hierarchical_matches_a_pure_python_reference_on_random_cases():
  """Fails if any rule of the selector (weights, ties, masking, indexing)
  departs from the reference on random cases with many exact ties."""
  rng = np.random.default_rng(0)
  num_questions, chains, attempts = 200, 3, 4
  answers = [[[None if rng.random() < 0.3 else str(rng.integers(3))
               for _ in range(attempts)] for _ in range(chains)]
             for _ in range(num_questions)]
  scores = rng.integers(0, 5, size=(num_questions, chains, attempts)) / 4  # exact sums
  ids, valid = _chain_ids(answers)
  chosen = np.asarray(select.hierarchical_weighted_best_of_n(ids, scores, valid))
  expected = [_hierarchical_reference(a, s) for a, s in zip(answers, scores, strict=True)]
  assert chosen.tolist() == expected
  for q, index in enumerate(chosen):
    if index >= 0:
      assert valid[q].reshape(-1)[index]
