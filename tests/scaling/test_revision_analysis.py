"""Revision chains attempt by attempt, on hand-made graded attempts."""

import numpy as np
import pytest

from ttscale.scaling import revision_analysis

# [question][chain][attempt]; per question, attempt accuracy averages its chains.
GRADED = np.array([[[False, True, True], [False, False, True]],
                   [[True, False, False], [True, True, True]],
                   [[False, False, False], [False, False, True]]])


def test_attempt_accuracy_averages_chains_then_questions():
  result = revision_analysis.attempt_accuracy(GRADED, seed=0)
  # Attempt 1: (0 + 1 + 0) / 3; attempt 2: (.5 + .5 + 0) / 3; attempt 3: (1 + .5 + .5) / 3.
  assert result["accuracy"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
  assert (result["num_questions"], result["num_chains"]) == (3, 2)
  for accuracy, (low, high) in zip(result["accuracy"], result["interval"], strict=True):
    assert low <= accuracy <= high


def test_attempt_gain_is_paired_on_the_same_chains():
  gain = revision_analysis.attempt_gain(GRADED, 3, seed=0)
  # Per question: (1 - 0), (.5 - 1), (.5 - 0) -> mean 1/3.
  assert gain["gain"] == pytest.approx(1 / 3)
  assert gain["interval"][0] <= 1 / 3 <= gain["interval"][1]
  # Identical attempts: no gain and a zero-width interval.
  same = np.repeat(GRADED[:, :, :1], 3, axis=2)
  assert revision_analysis.attempt_gain(same, 3)["interval"] == [0.0, 0.0]
  with pytest.raises(ValueError, match="attempt 4: the chains have attempts 1..3"):
    revision_analysis.attempt_gain(GRADED, 4)


def test_transitions_count_both_directions_over_units_of_any_shape():
  turned = revision_analysis.transitions([GRADED, np.array([True, False, True])])
  # Correct attempts with a next one: 1 + 2 + 1 + 0 + 0 + 0 (GRADED) + 1 = 5; of
  # them turned incorrect: q1 chain 1 (T -> F) and the extra chain's T -> F = 2.
  assert turned["correct_to_incorrect"] == {"count": 2, "of": 5, "rate": 0.4}
  # Incorrect with a next one: 1 + 2 + 1 + 0 + 2 + 2 (GRADED) + 1 = 9; turned
  # correct: q0 (both chains), q2 chain 2, and the extra chain = 4.
  assert turned["incorrect_to_correct"] == {"count": 4, "of": 9, "rate": pytest.approx(4 / 9)}
  assert revision_analysis.transitions([np.array([[True]])])["correct_to_incorrect"][
      "rate"] is None


def test_fresh_baseline_pools_first_attempts_per_question_across_units():
  # Fresh accuracy from attempt 1 of every chain: q0 0/2, q1 2/2, q2 0/2 in
  # GRADED; a second unit on q1..q2 (one chain of 2 attempts) adds q1 0/1 and
  # q2 1/1, so q0 0, q1 2/3, q2 1/3.
  second = np.array([[[False, True]], [[True, True]]])
  baseline = revision_analysis.fresh_baseline([(0, GRADED), (1, second)])
  fresh = {0: 0.0, 1: 2 / 3, 2: 1 / 3}
  # Pairs whose first attempt is incorrect: GRADED q0: 3, q1: 1, q2: 4; second
  # unit q1: 1, q2: 0.
  after_incorrect = (3 * fresh[0] + 2 * fresh[1] + 4 * fresh[2]) / 9
  # Correct first of a pair: GRADED q0: 1, q1: 3, q2: 0; second unit q2: 1.
  after_correct = (1 * fresh[0] + 3 * fresh[1] + 1 * fresh[2]) / 5
  assert baseline == {"after_incorrect": pytest.approx(after_incorrect),
                      "after_correct": pytest.approx(after_correct), "num_questions": 3}
  assert revision_analysis.fresh_baseline([(0, np.zeros((1, 1, 1), bool))])[
      "after_correct"] is None


def test_first_attempt_pass_at_1_counts_every_chain_of_every_unit_per_question():
  # As above: q0 0/2, q1 2/3, q2 1/3; a question no unit covers is left out.
  second = np.array([[[False, True]], [[True, True]]])
  # A unit on q5 alone (GRADED's q1: both first attempts right); q3 and q4 have none.
  first = revision_analysis.first_attempt_pass_at_1(
      [(0, GRADED), (1, second), (5, GRADED[1:2])])
  assert first["questions"] == [0, 1, 2, 5]
  assert first["pass_at_1"] == pytest.approx([0.0, 2 / 3, 1 / 3, 1.0])
  assert first["samples"] == [2, 3, 3, 2]
  analysis = revision_analysis.attempt_analysis({"u": (0, GRADED)}, seed=0)
  assert analysis["first_attempts"]["pass_at_1"] == pytest.approx([0.0, 1.0, 0.0])


def test_graded_attempts_must_be_three_dimensional():
  with pytest.raises(ValueError, match=r"expected \[questions, chains, attempts\]"):
    revision_analysis.attempt_accuracy(np.ones((2, 3), bool))


def test_first_error_shares_count_each_kind_per_attempt():
  """Fails if a kind's share is not taken over every chain at that attempt,
  if a right attempt (None) is not "right", or if kinds are not ordered by
  their total share."""
  first_errors = [[["operands", None], ["slip", "operands"]],
                  [[None, None], ["operands", "operands"]]]
  shares = revision_analysis.first_error_shares(first_errors)
  assert shares == {"operands": [0.5, 0.5], "right": [0.25, 0.5], "slip": [0.25, 0.0]}
  assert list(shares) == ["operands", "right", "slip"]
  for attempt in range(2):
    assert sum(values[attempt] for values in shares.values()) == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"expected \[questions, chains, attempts\]"):
    revision_analysis.first_error_shares([])


def test_attempt_analysis_reports_first_errors_only_when_every_longest_unit_has_them():
  units = {"a": (0, GRADED[:1, :1]), "b": (1, GRADED[1:, :1])}
  kinds = {"a": [[["slip", None, None]]], "b": [[[None, "slip", "operands"]],
                                               [["operands", "operands", None]]]}
  analysis = revision_analysis.attempt_analysis(units, seed=0, first_errors=kinds)
  assert analysis["longest_chains"]["first_errors"] == {
      "right": [pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(2 / 3)],
      "operands": [pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3)],
      "slip": [pytest.approx(1 / 3), pytest.approx(1 / 3), 0.0]}
  # A pool saved before kinds were recorded: no partial table.
  partial = revision_analysis.attempt_analysis(units, seed=0, first_errors={"a": kinds["a"]})
  assert "first_errors" not in partial["longest_chains"]
