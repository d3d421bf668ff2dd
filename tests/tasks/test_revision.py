"""Tests of the revision format: edit distances, training trajectories, contexts.

Edit distances are checked against a plain textbook Levenshtein written here;
trajectories on hand-made attempt sets whose closest incorrect attempt is
obvious; contexts against strings written out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.tasks.arith import ArithTask
from ttscale.tasks.revision import (
  MAX_PREVIOUS_ATTEMPTS,
  build_keep_trajectory,
  build_trajectory,
  edit_distances,
  revision_context,
)

TASK = ArithTask()
QUESTION = "1+2*5"
NUM_SEEDS = 300


def _levenshtein(a: str, b: str) -> int:
  """The textbook full-table dynamic program (insert, delete, substitute: cost 1)."""
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(len(a) + 1):
    table[i][0] = i
  for j in range(len(b) + 1):
    table[0][j] = j
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                        table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  return table[len(a)][len(b)]


# ------------------------------------------------------------ edit distances


@pytest.mark.parametrize(("target", "candidate", "expected"), [
  ("kitten", "sitting", 3),
  ("sitting", "kitten", 3),
  ("", "", 0),
  ("", "abc", 3),
  ("abc", "", 3),
  ("flaw", "lawn", 2),
  ("1+2=3\nAnswer: 3", "1+2=3\nAnswer: 3", 0),
  ("abc", "cba", 2),
  ("ab", "ba", 2),  # no transpositions: two substitutions
])
def test_edit_distance_of_hand_cases(target, candidate, expected):
  """Fails if a single candidate's distance is wrong (e.g. an off-by-one in the
  first row or column, or the padding of candidates being read)."""
  assert _levenshtein(target, candidate) == expected  # the reference agrees
  distances = edit_distances(target, [candidate])
  assert distances.dtype == np.int64
  assert distances.tolist() == [expected]


def test_edit_distances_of_candidates_of_different_lengths_in_one_call():
  """Fails if padding a short candidate to the longest one changes its distance,
  or if results come back in another order than the candidates."""
  candidates = ["sitting", "", "kitten", "k", "kittens and more", "sitten", "kitten"]
  distances = edit_distances("kitten", candidates)
  assert distances.tolist() == [3, 6, 0, 5, 10, 1, 0]
  assert distances.tolist() == [_levenshtein("kitten", c) for c in candidates]


def test_edit_distances_of_no_candidates_and_an_empty_target():
  """Fails if an empty candidate list or an empty target is mishandled."""
  assert edit_distances("abc", []).shape == (0,)
  assert edit_distances("", ["", "a", "abcd"]).tolist() == [0, 1, 4]
  assert edit_distances("abc", ["", ""]).tolist() == [3, 3]


def test_edit_distances_match_a_plain_levenshtein_on_random_strings():
  """Fails if the vectorised rows (insertions chained by a cumulative minimum)
  disagree with the textbook dynamic program anywhere."""
  rng = np.random.default_rng(0)
  alphabet = list("ab1+\n")
  for _ in range(50):
    target = "".join(rng.choice(alphabet, size=rng.integers(0, 9)))
    candidates = ["".join(rng.choice(alphabet, size=rng.integers(0, 9)))
                  for _ in range(rng.integers(1, 6))]
    expected = [_levenshtein(target, c) for c in candidates]
    assert edit_distances(target, candidates).tolist() == expected, (target, candidates)


# ------------------------------------------------------------ trajectories

# Each correct attempt has one obvious closest incorrect attempt: the same
# text with only its result digits changed (distance 2); the rest are far.
CORRECT = ["1+2=3\nAnswer: 3", "5*5=25\nAnswer: 25"]
INCORRECT = ["9-9=1", "1+2=4\nAnswer: 4", "Answer: 777777", "5*5=24\nAnswer: 24", "8+8=17"]
CLOSEST = {CORRECT[0]: INCORRECT[1], CORRECT[1]: INCORRECT[3]}


def test_hand_case_has_the_intended_closest_attempts():
  """Fails if the hand-made case below stops meaning what the tests assume."""
  for target, closest in CLOSEST.items():
    distances = [_levenshtein(target, x) for x in INCORRECT]
    assert distances.count(min(distances)) == 1
    assert INCORRECT[int(np.argmin(distances))] == closest


def test_no_trajectory_without_a_correct_attempt():
  """Fails if a trajectory is built with no correct attempt to end it."""
  rng = np.random.default_rng(0)
  assert build_trajectory([], INCORRECT, rng) is None
  assert build_trajectory([], [], rng) is None


def test_trajectory_ends_with_the_incorrect_attempt_closest_to_its_target():
  """Fails if the last previous attempt is not the incorrect attempt nearest the
  chosen target by edit distance (e.g. nearest to another correct attempt, or
  a random one), or if previous attempts repeat or include correct ones."""
  seen_k, seen_targets, seen_orders = set(), set(), set()
  for seed in range(NUM_SEEDS):
    trajectory = build_trajectory(CORRECT, INCORRECT, np.random.default_rng(seed))
    assert set(trajectory) == {"previous", "target"}
    target, previous = trajectory["target"], trajectory["previous"]
    assert target in CORRECT
    k = len(previous)
    assert 0 <= k <= MAX_PREVIOUS_ATTEMPTS
    assert all(p in INCORRECT for p in previous)
    assert len(set(previous)) == k, "previous attempts must be distinct"
    if k:
      assert previous[-1] == CLOSEST[target], (seed, trajectory)
    seen_k.add(k)
    seen_targets.add(target)
    seen_orders.add(tuple(previous[:-1]))
  # With 5 incorrect attempts, every k of 0..4 occurs; both targets occur;
  # the other attempts are drawn, not fixed.
  assert seen_k == set(range(MAX_PREVIOUS_ATTEMPTS + 1))
  assert seen_targets == set(CORRECT)
  assert len(seen_orders) > 10


def test_trajectory_length_is_capped_by_the_incorrect_attempts_available():
  """Fails if k exceeds the number of incorrect attempts (attempts repeated or
  invented) or if the cap makes small k impossible."""
  for incorrect, allowed in ((INCORRECT[:2], {0, 1, 2}), (INCORRECT[:1], {0, 1}),
                             ([], {0})):
    seen = set()
    for seed in range(NUM_SEEDS):
      trajectory = build_trajectory(CORRECT[:1], incorrect, np.random.default_rng(seed))
      previous = trajectory["previous"]
      assert len(set(previous)) == len(previous)
      assert set(previous) <= set(incorrect)
      if previous:
        assert previous[-1] == (INCORRECT[1] if INCORRECT[1] in incorrect else incorrect[0])
      seen.add(len(previous))
    assert seen == allowed, incorrect


def test_trajectory_length_respects_max_previous():
  """Fails if `max_previous` is ignored."""
  lengths = {len(build_trajectory(CORRECT, INCORRECT, np.random.default_rng(s),
                                  max_previous=2)["previous"]) for s in range(NUM_SEEDS)}
  assert lengths == {0, 1, 2}


def test_trajectory_is_a_function_of_the_rng():
  """Fails if a trajectory depends on anything but its inputs and rng state."""
  for seed in range(20):
    first = build_trajectory(CORRECT, INCORRECT, np.random.default_rng(seed))
    assert first == build_trajectory(CORRECT, INCORRECT, np.random.default_rng(seed))


def test_keep_trajectory_ends_with_a_correct_attempt_that_is_its_target():
  """Fails if a keep trajectory's last attempt in context is not correct or
  not its target, if an earlier one is correct or repeated, or if k leaves
  1..MAX_PREVIOUS_ATTEMPTS."""
  assert build_keep_trajectory([], INCORRECT, np.random.default_rng(0)) is None
  seen_k = set()
  for seed in range(NUM_SEEDS):
    trajectory = build_keep_trajectory(CORRECT, INCORRECT, np.random.default_rng(seed))
    previous = trajectory["previous"]
    assert previous[-1] == trajectory["target"] and trajectory["target"] in CORRECT
    assert all(p in INCORRECT for p in previous[:-1])
    assert len(set(previous)) == len(previous)
    seen_k.add(len(previous))
  assert seen_k == set(range(1, MAX_PREVIOUS_ATTEMPTS + 1))
  only_correct = {len(build_keep_trajectory(CORRECT, [], np.random.default_rng(s))["previous"])
                  for s in range(20)}
  assert only_correct == {1}


# ------------------------------------------------------------ contexts


def test_context_without_previous_attempts_is_the_plain_prompt():
  """Fails if a chain's first attempt is not prompted like an ordinary sample."""
  assert revision_context(TASK, QUESTION, []) == TASK.prompt(QUESTION) == "1+2*5\n"


def test_context_shows_the_last_four_attempts_oldest_first_then_the_question():
  """Fails if the window keeps the wrong attempts, reverses them, closes an
  attempt with anything but one empty line, or does not end with the prompt."""
  attempts = [f"1+2={n}\n{n}*5={5 * n}\nAnswer: {5 * n}" for n in range(1, 7)]
  context = revision_context(TASK, QUESTION, attempts)
  assert context == (
    "1+2=3\n3*5=15\nAnswer: 15\n\n"
    "1+2=4\n4*5=20\nAnswer: 20\n\n"
    "1+2=5\n5*5=25\nAnswer: 25\n\n"
    "1+2=6\n6*5=30\nAnswer: 30\n\n"
    "1+2*5\n"
  )
  assert revision_context(TASK, QUESTION, attempts[:1]) == "1+2=1\n1*5=5\nAnswer: 5\n\n1+2*5\n"
  # A smaller window shows fewer; the window's default is the paper's 4.
  assert revision_context(TASK, QUESTION, attempts, window=2) == (
    "1+2=5\n5*5=25\nAnswer: 25\n\n1+2=6\n6*5=30\nAnswer: 30\n\n1+2*5\n")
  assert MAX_PREVIOUS_ATTEMPTS == 4


def test_attempts_are_normalised_so_empty_lines_only_separate_attempts():
  """Fails if blank lines, whitespace-only lines or trailing newlines of an
  attempt reach the context, which would make attempt boundaries ambiguous."""
  attempts = ["1+2=3\n\n3*5=15\nAnswer: 15\n", "\n1+2=4\n  \n4*5=20\n\n\nAnswer: 20\n\n",
              "Answer: 7"]
  context = revision_context(TASK, QUESTION, attempts)
  assert context == (
    "1+2=3\n3*5=15\nAnswer: 15\n\n"
    "1+2=4\n4*5=20\nAnswer: 20\n\n"
    "Answer: 7\n\n"
    "1+2*5\n"
  )
  body = context[:-len(TASK.prompt(QUESTION))]
  assert body.count("\n\n") == len(attempts)
  assert "\n\n\n" not in context
  assert body.split("\n\n")[:-1] == ["1+2=3\n3*5=15\nAnswer: 15", "1+2=4\n4*5=20\nAnswer: 20",
                                     "Answer: 7"]
