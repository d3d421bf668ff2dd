"""What revision chains do attempt by attempt (numpy, from graded attempts).

- `attempt_accuracy`: accuracy of attempt k = 1..s over the chains, with a
  bootstrap interval over questions (the paper's Fig. 6, left).
- `attempt_gain`: attempt k minus attempt 1 of the same chains, with a paired
  bootstrap interval: do later attempts improve on earlier ones?
- `transitions`: how often a correct attempt is revised into an incorrect one,
  and an incorrect one into a correct one (paper: about 38% of correct
  answers turned incorrect).
- `first_error_shares`: how each attempt goes wrong (the task's kinds of
  first error), attempt by attempt.
- `first_attempt_pass_at_1`: the revision model's pass@1 with no previous
  attempt, per question, from every chain's first attempt.
- `fresh_baseline`: what a fresh first attempt of the same model would have
  scored in place of each revision, so that a revision model that hurts can be
  told from one whose chains land on hard questions.
"""

from __future__ import annotations

import collections

import numpy as np

from ttscale.scaling.search_checks import mean_interval


def _checked(correct) -> np.ndarray:
  correct = np.asarray(correct, bool)
  if correct.ndim != 3 or 0 in correct.shape:
    raise ValueError(f"graded attempts of shape {correct.shape}: expected [questions, "
                     "chains, attempts], none empty")
  return correct


def attempt_accuracy(correct, seed: int = 0) -> dict:
  """Accuracy of each attempt position over all chains.

  Args:
    correct: bool [questions, chains, attempts], each attempt graded.

  Returns:
    {"accuracy": [attempts], "interval": [attempts][low, high] (95%, questions
    resampled), "num_questions", "num_chains"}.
  """
  correct = _checked(correct)
  per_question = correct.mean(axis=1)  # [questions, attempts]
  return {"accuracy": per_question.mean(axis=0).tolist(),
          "interval": [mean_interval(per_question[:, k], seed)
                       for k in range(correct.shape[2])],
          "num_questions": correct.shape[0], "num_chains": correct.shape[1]}


def attempt_gain(correct, attempt: int, seed: int = 0) -> dict:
  """Accuracy of attempt `attempt` (1-based) minus attempt 1 of the same chains.

  Returns:
    {"attempt", "gain", "interval"} (paired: the same resampled questions).
  """
  correct = _checked(correct)
  if not 1 <= attempt <= correct.shape[2]:
    raise ValueError(f"attempt {attempt}: the chains have attempts 1..{correct.shape[2]}")
  difference = (correct[:, :, attempt - 1].astype(np.float64)
                - correct[:, :, 0]).mean(axis=1)
  return {"attempt": attempt, "gain": float(difference.mean()),
          "interval": mean_interval(difference, seed)}


def transitions(graded) -> dict:
  """Consecutive attempts of every chain: correct→incorrect among correct
  attempts that have a next one, and incorrect→correct among incorrect ones.

  Args:
    graded: bool arrays [..., attempts] (e.g. one per sweep unit, of any shapes).

  Returns:
    {"correct_to_incorrect": {"count", "of", "rate"}, "incorrect_to_correct":
    {...}}; a rate is None when nothing could turn.
  """
  counts = np.zeros(4, np.int64)  # c→i, c with a next, i→c, i with a next
  for correct in graded:
    correct = np.asarray(correct, bool)
    before, after = correct[..., :-1], correct[..., 1:]
    counts += [(before & ~after).sum(), before.sum(), (~before & after).sum(), (~before).sum()]

  def rate(count, total) -> dict:
    return {"count": int(count), "of": int(total),
            "rate": float(count / total) if total else None}

  return {"correct_to_incorrect": rate(*counts[:2]), "incorrect_to_correct": rate(*counts[2:])}


def _first_attempts(units) -> tuple[np.ndarray, np.ndarray]:
  """Per question index: the number of right first attempts over every
  chain of every unit, and the number of first attempts."""
  units = [(first, _checked(correct)) for first, correct in units]
  size = max((first + c.shape[0] for first, c in units), default=0)
  right, seen = np.zeros(size), np.zeros(size)
  for first, correct in units:
    right[first:first + correct.shape[0]] += correct[:, :, 0].sum(axis=1)
    seen[first:first + correct.shape[0]] += correct.shape[1]
  return right, seen


def first_attempt_pass_at_1(units) -> dict:
  """The revision model's pass@1 with no previous attempt, per question.

  Attempt 1 of every chain is such a sample, so every chain of every unit
  counts (units may cover the same questions: different splits). Many
  samples a question make this a far less noisy estimate than one chain's
  first attempt, to compare with the policy's pass@1 on the same questions.

  Args:
    units: (first question index, graded bool [questions, chains, attempts]).

  Returns:
    {"questions": question indices with a first attempt, ascending;
     "pass_at_1": [those questions] the share of right first attempts;
     "samples": [those questions] how many first attempts}.
  """
  right, seen = _first_attempts(units)
  questions = np.flatnonzero(seen)
  return {"questions": questions.tolist(),
          "pass_at_1": (right[questions] / seen[questions]).tolist(),
          "samples": seen[questions].astype(int).tolist()}


def fresh_baseline(units) -> dict:
  """The chance that a fresh sample would be right where the chains revised.

  Attempt 1 of every chain is a fresh sample of the revision model (no
  previous attempt in context), so the mean over a question's first attempts
  (pooled over all units) estimates its fresh accuracy p_q. For each
  consecutive pair of attempts, a fresh sample in place of the second would
  be right with chance p_q: averaged over pairs whose first attempt is
  incorrect, this is what `incorrect_to_correct` would be if revising were
  no better and no worse than resampling; over pairs whose first attempt is
  correct, what 1 − `correct_to_incorrect` would be.

  Args:
    units: (first question index, graded bool [questions, chains, attempts])
      pairs; units may cover the same questions (different splits).

  Returns:
    {"after_incorrect", "after_correct"}: mean p_q over those pairs (None when
    there are none), and "num_questions" with a first attempt.
  """
  units = [(first, _checked(correct)) for first, correct in units]
  right, seen = _first_attempts(units)
  fresh = np.divide(right, seen, out=np.zeros(len(seen)), where=seen > 0)
  totals = np.zeros(4)  # sum of p_q after incorrect, count, after correct, count
  for first, correct in units:
    p = np.broadcast_to(fresh[first:first + correct.shape[0], None, None],
                        correct[:, :, :-1].shape)
    before = correct[:, :, :-1]
    totals += [p[~before].sum(), (~before).sum(), p[before].sum(), before.sum()]
  return {"after_incorrect": float(totals[0] / totals[1]) if totals[1] else None,
          "after_correct": float(totals[2] / totals[3]) if totals[3] else None,
          "num_questions": int((seen > 0).sum())}


def first_error_shares(first_errors: list) -> dict:
  """How each attempt position goes wrong: the share of chains whose attempt k
  has each kind of first error (a task's `first_error`; None, right, is
  "right"), so that an attempt that loses its place in the question can be
  told from one that slips on a value.

  Args:
    first_errors: [questions][chains][attempts] kinds (str or None).

  Returns:
    {kind: [share at attempt 1, 2, ...]}, kinds by their total share, largest
    first; the shares of one attempt sum to 1.
  """
  kinds = np.array([[["right" if k is None else k for k in chain] for chain in question]
                    for question in first_errors], dtype=object)
  if kinds.ndim != 3 or 0 in kinds.shape:
    raise ValueError(f"first errors of shape {kinds.shape}: expected [questions, chains, "
                     "attempts], none empty")
  flat = kinds.reshape(-1, kinds.shape[2])
  shares = {kind: (flat == kind).mean(axis=0) for kind in set(flat.ravel())}
  return {kind: shares[kind].tolist()
          for kind in sorted(shares, key=lambda kind: (-shares[kind].sum(), kind))}


# Later attempts are judged against the first at this attempt (or the chains'
# last, when shorter): the paper's window of previous attempts is 4.
GAIN_ATTEMPT = 4


def attempt_analysis(units: dict[str, tuple[int, np.ndarray]], seed: int,
                     first_errors: dict[str, list] | None = None) -> dict:
  """Per-attempt accuracy and gain of the longest single chains, and the
  transitions and fresh baseline of every chain of every unit.

  Args:
    units: {unit name: (first question, graded bool [Q, p, s])}; names sort
      by first question within a split. The longest single chains are the
      units of p = 1 with the largest s.
    first_errors: {unit name: [Q][p][s] kinds of first error} for the units
      whose task names its errors.

  Returns:
    {"transitions", "fresh_baseline", "first_attempts"
     (`first_attempt_pass_at_1`), "longest_chains": `attempt_accuracy`
     with its "gain" and, when every one of its units has them,
     "first_errors" (`first_error_shares`); or None without a unit of p = 1}.
  """
  longest = {}
  for name, (_, correct) in units.items():
    if correct.shape[1] == 1:
      longest.setdefault(correct.shape[2], []).append((name, correct))
  analysis = {"transitions": transitions([c for _, c in units.values()]),
              "fresh_baseline": fresh_baseline(list(units.values())),
              "first_attempts": first_attempt_pass_at_1(list(units.values())),
              "longest_chains": None}
  if longest:
    sequential = max(longest)
    # Unit names sort by first question: the chains in question order.
    correct = np.concatenate([c for _, c in sorted(longest[sequential])])
    accuracy = attempt_accuracy(correct, seed)
    accuracy["gain"] = attempt_gain(correct, min(GAIN_ATTEMPT, sequential), seed)
    names = sorted(name for name, _ in longest[sequential])
    if first_errors and all(name in first_errors for name in names):
      accuracy["first_errors"] = first_error_shares(
          [question for name in names for question in first_errors[name]])
    analysis["longest_chains"] = accuracy
  return analysis


def sweep_accuracy(rows: list[dict], selectors) -> tuple[dict, dict]:
  """Accuracy of the revision rows per setting, and sequential against parallel.

  Returns:
    ({params: {budget: accuracy}}, budgets ascending, rounded to 4 places;
     {selector: {budget: {"sequential": s=N,p=1, "parallel": s=1,p=N}}}).
  """
  accuracy = collections.defaultdict(list)
  for row in rows:
    accuracy[(row["params"], row["budget"])].append(row["correct"])
  curves = collections.defaultdict(dict)
  for (params, budget), values in sorted(accuracy.items(), key=lambda kv: kv[0][1]):
    curves[params][budget] = round(float(np.mean(values)), 4)
  sequential_vs_parallel = {}
  for sel in selectors:
    for budget in sorted({b for _, b in accuracy}):
      seq = curves.get(f"s={budget},p=1,select={sel}", {}).get(budget)
      par = curves.get(f"s=1,p={budget},select={sel}", {}).get(budget)
      sequential_vs_parallel.setdefault(sel, {})[budget] = {"sequential": seq, "parallel": par}
  return {k: dict(v) for k, v in curves.items()}, sequential_vs_parallel
