"""How good a verifier is, and what it buys as the number of samples grows.

Pure numpy, on samples and scores already stored; no model runs (answer
selection reuses `ttscale.search.select`, which is jax.numpy but runs eagerly
here).

  - `roc_auc`: how well scores rank correct solutions above incorrect ones;
    `auc_difference`: one verifier's AUC minus another's on the same
    solutions, with an interval from resampling questions.
  - `expected_calibration_error` / `reliability_table`: how close the scores,
    read as probabilities of being correct, are to the observed rates.
  - `accuracy_vs_n`: accuracy of answer-selection methods at N samples per
    question, estimated by drawing N-subsets without replacement from a fixed
    pool of P >= N samples per question. Every method sees the same draws at a
    given N, and the N-subsets are prefixes of one random permutation per
    (question, draw), so draws are shared across budgets too: comparisons
    between methods and between budgets are paired, and pass@N is
    non-decreasing in N draw by draw.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ttscale.scaling.compute_optimal import percentile_interval
from ttscale.search import select

PASS_AT_N = "pass_at_n"  # oracle: correct if any sample in the draw is correct
METHOD_SELECTORS = (*select.SELECTORS, PASS_AT_N)
_SCORELESS = ("majority", PASS_AT_N)


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve, via the Mann-Whitney U statistic.

  The probability that a random positive scores above a random negative, a tie
  counting one half (average ranks), so all-equal scores give 0.5.

  Args:
    scores: float [n].
    labels: bool [n], True for positives (e.g. correct solutions).

  Returns:
    AUC in [0, 1].
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).astype(bool).reshape(-1)
  if scores.shape != labels.shape:
    raise ValueError(f"roc_auc: {scores.size} scores but {labels.size} labels")
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"roc_auc: needs both classes, got {num_pos} positive, {num_neg} negative")
  _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # A group of tied scores occupies ranks (end - count + 1)..end; each gets their mean.
  ends = np.cumsum(counts)
  ranks = (ends - (counts - 1) / 2.0)[group]
  u_statistic = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u_statistic / (num_pos * num_neg))


def auc_difference(scores_a, scores_b, labels, questions, seed: int = 0,
                   num_resamples: int = 1000) -> dict:
  """AUC of `scores_a` minus AUC of `scores_b` on the same solutions, with a
  95% interval from resampling questions (a question's solutions together).

  Args:
    scores_a, scores_b: float [n]; labels: bool [n]; questions: [n] the
      question of each solution.

  Returns:
    {"difference", "interval", "num_questions"}; resamples holding one class
    only are skipped.
  """
  scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  labels = np.asarray(labels, bool)
  _, group = np.unique(np.asarray(questions), return_inverse=True)
  members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
  rng = np.random.default_rng(seed)
  differences = []
  for _ in range(num_resamples):
    rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
    if 0 < labels[rows].sum() < len(rows):
      differences.append(roc_auc(scores_a[rows], labels[rows])
                         - roc_auc(scores_b[rows], labels[rows]))
  return {"difference": roc_auc(scores_a, labels) - roc_auc(scores_b, labels),
          "interval": percentile_interval(differences), "num_questions": len(members)}


def _check_unit_interval(name: str, values: np.ndarray):
  if not np.all((values >= 0.0) & (values <= 1.0)):  # also rejects NaN
    raise ValueError(f"{name}: expected values in [0, 1], got min {values.min()}, "
                     f"max {values.max()}")


def reliability_table(predictions, targets, num_bins: int = 10) -> list[dict]:
  """Mean prediction against mean target in equal-width bins over [0, 1].

  Bin k holds predictions in [k / num_bins, (k + 1) / num_bins); the last bin
  also holds 1.0.

  Args:
    predictions: float [n] in [0, 1], e.g. verifier scores.
    targets: float [n] in [0, 1], e.g. correctness (soft labels allowed).
    num_bins: number of bins.

  Returns:
    One dict per non-empty bin, in increasing order: lower, upper (float bin
    edges), count (int), mean_prediction, mean_target (float).
  """
  predictions = np.asarray(predictions, np.float64).reshape(-1)
  targets = np.asarray(targets, np.float64).reshape(-1)
  if predictions.shape != targets.shape:
    raise ValueError(f"reliability_table: {predictions.size} predictions but "
                     f"{targets.size} targets")
  if predictions.size == 0:
    raise ValueError("reliability_table: no predictions")
  if num_bins < 1:
    raise ValueError(f"num_bins={num_bins}: expected >= 1")
  _check_unit_interval("predictions", predictions)
  _check_unit_interval("targets", targets)
  # floor(p * B) rather than searchsorted on linspace edges: it puts 0.3 in
  # [0.3, 0.4) as one would write it, where the float edge 0.30000000000000004 would not.
  bins = np.minimum(np.floor(predictions * num_bins).astype(np.int64), num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  sum_predictions = np.bincount(bins, weights=predictions, minlength=num_bins)
  sum_targets = np.bincount(bins, weights=targets, minlength=num_bins)
  return [
      dict(lower=k / num_bins, upper=(k + 1) / num_bins, count=int(counts[k]),
           mean_prediction=float(sum_predictions[k] / counts[k]),
           mean_target=float(sum_targets[k] / counts[k]))
      for k in np.flatnonzero(counts)
  ]


def expected_calibration_error(predictions, targets, num_bins: int = 10) -> float:
  """ECE: sum over non-empty bins of (count / n) * |mean prediction - mean target|.

  Args:
    predictions: float [n] in [0, 1].
    targets: float [n] in [0, 1] (soft labels allowed).
    num_bins: equal-width bins over [0, 1], as in `reliability_table`.

  Returns:
    ECE in [0, 1]; 0 for perfectly calibrated predictions.
  """
  table = reliability_table(predictions, targets, num_bins)
  total = sum(row["count"] for row in table)
  return float(sum(row["count"] / total * abs(row["mean_prediction"] - row["mean_target"])
                   for row in table))


@dataclasses.dataclass(frozen=True)
class SamplePool:
  """P stored samples per question, with their answers, grades and scores.

  Attributes:
    answer_ids: int32 [Q, P] answer ids per question (`select.answer_ids`), -1
      for no answer.
    valid: bool [Q, P], True where a sample has an answer.
    correct: bool [Q, P], True where the answer is right (implies valid).
    scores: named float [Q, P] score arrays, e.g. {"prm_last": ..., "orm": ...};
      finite wherever valid (scores of invalid samples are never read).
  """

  answer_ids: np.ndarray
  valid: np.ndarray
  correct: np.ndarray
  scores: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # Frozen, so normalise the arrays in place through object.__setattr__.
    set_field = lambda name, value: object.__setattr__(self, name, value)
    set_field("answer_ids", np.asarray(self.answer_ids, np.int32))
    set_field("valid", np.asarray(self.valid, bool))
    set_field("correct", np.asarray(self.correct, bool))
    set_field("scores", {key: np.asarray(value, np.float64)
                         for key, value in self.scores.items()})
    shape = self.answer_ids.shape
    if len(shape) != 2 or 0 in shape:
      raise ValueError(f"answer_ids: expected a non-empty [Q, P] array, got shape {shape}")
    named = {"valid": self.valid, "correct": self.correct,
             **{f"scores[{key!r}]": value for key, value in self.scores.items()}}
    for name, value in named.items():
      if value.shape != shape:
        raise ValueError(f"{name}: shape {value.shape}, expected {shape} like answer_ids")
    if np.any(self.correct & ~self.valid):
      raise ValueError("correct: a sample without an answer cannot be correct")
    for key, value in self.scores.items():
      # A NaN anywhere would poison weighted_best_of_n's sums; -inf could let
      # best_of_n pick an invalid sample.
      if not np.all(np.isfinite(value[self.valid])):
        raise ValueError(f"scores[{key!r}]: not finite on some valid samples")

  @property
  def num_questions(self) -> int:
    return self.answer_ids.shape[0]

  @property
  def pool_size(self) -> int:
    return self.answer_ids.shape[1]


@dataclasses.dataclass(frozen=True)
class Method:
  """An answer-selection method to evaluate.

  Attributes:
    name: the key of its results.
    selector: one of `METHOD_SELECTORS`: a `select.SELECTORS` name, or
      "pass_at_n" (correct if any sample of the draw is correct).
    score: the key of `SamplePool.scores` to select with; None for "majority"
      and "pass_at_n", which use no score.
  """

  name: str
  selector: str
  score: str | None = None


class Accuracy(NamedTuple):
  """Accuracy of one method at one budget; unpacks as (mean, stderr).

  Attributes:
    mean: accuracy averaged over questions and draws.
    stderr: standard error over questions: the sample std (ddof=1) of the
      per-question accuracies (each averaged over draws) / sqrt(Q); NaN when
      Q == 1. It treats questions as the random unit; the draws only reduce
      the noise within a question.
  """

  mean: float
  stderr: float


def _check_methods(pool: SamplePool, methods: Sequence[Method]):
  names = [method.name for method in methods]
  if len(set(names)) != len(names):
    raise ValueError(f"methods: names must be unique, got {names}")
  for method in methods:
    if method.selector not in METHOD_SELECTORS:
      raise ValueError(f"method {method.name!r}: selector {method.selector!r}, "
                       f"expected one of {METHOD_SELECTORS}")
    if method.selector in _SCORELESS:
      if method.score is not None:
        raise ValueError(f"method {method.name!r}: {method.selector} uses no score, "
                         f"got score={method.score!r}")
    elif method.score not in pool.scores:
      raise ValueError(f"method {method.name!r}: score {method.score!r}, expected one of "
                       f"{sorted(pool.scores)}")


def _check_budgets(budgets: Sequence[int], pool_size: int) -> list[int]:
  checked = []
  for budget in budgets:
    budget = operator.index(budget)  # rejects 2.5 rather than truncating it
    if not 1 <= budget <= pool_size:
      raise ValueError(f"budget N={budget}: expected 1 <= N <= pool size P={pool_size}")
    checked.append(budget)
  return checked


def _gather(values: np.ndarray, picked: np.ndarray) -> np.ndarray:
  """[Q, P] values, [Q, D, N] sample indices --> [Q * D, N], one row per (question, draw)."""
  return np.take_along_axis(values[:, None, :], picked, axis=-1).reshape(-1, picked.shape[-1])


def accuracy_vs_n(pool: SamplePool, methods: Sequence[Method], budgets: Sequence[int],
                  num_draws: int, seed: int) -> dict[str, dict[int, Accuracy]]:
  """Accuracy of each method at each budget N, from N-subsets of the pool.

  Per (question, draw), one uniformly random permutation of the P samples;
  the draw at budget N is its first N samples, so all methods and all budgets
  share draws (results at N do not depend on which other budgets are asked
  for). A chosen index of -1 (no answer in the draw) counts as incorrect. At
  N == P every draw is the whole pool.

  Args:
    pool: the stored samples, [Q, P] arrays.
    methods: what to evaluate; names must be unique.
    budgets: values of N, each in [1, P].
    num_draws: D, subsets drawn per question and budget.
    seed: for `np.random.default_rng`; the same seed gives the same results.

  Returns:
    {method name: {N: Accuracy(mean, stderr)}}, budgets in the given order.
  """
  _check_methods(pool, methods)
  budgets = _check_budgets(budgets, pool.pool_size)
  if num_draws < 1:
    raise ValueError(f"num_draws={num_draws}: expected >= 1")
  num_questions, pool_size = pool.answer_ids.shape
  rng = np.random.default_rng(seed)
  # Argsort of i.i.d. uniform noise: a uniform random permutation per row. --> [Q, D, P]
  order = np.argsort(rng.random((num_questions, num_draws, pool_size)), axis=-1)

  results: dict[str, dict[int, Accuracy]] = {method.name: {} for method in methods}
  for budget in budgets:
    picked = order[:, :, :budget]  # [Q, D, N]
    ids, valid, correct = (_gather(values, picked)
                           for values in (pool.answer_ids, pool.valid, pool.correct))
    rows = np.arange(ids.shape[0])
    for method in methods:
      if method.selector == PASS_AT_N:
        hit = correct.any(axis=-1)
      else:
        scores = None
        if method.score is not None:
          # Zero the unread scores of invalid samples: a NaN there would still
          # reach weighted_best_of_n's sums through a 0 weight.
          scores = np.where(valid, _gather(pool.scores[method.score], picked), 0.0)
        chosen = np.asarray(select.select(method.selector, ids, scores, valid))
        hit = (chosen >= 0) & correct[rows, np.maximum(chosen, 0)]
      per_question = hit.reshape(num_questions, num_draws).mean(axis=-1)  # [Q]
      stderr = (float(per_question.std(ddof=1) / math.sqrt(num_questions))
                if num_questions > 1 else math.nan)
      results[method.name][budget] = Accuracy(float(per_question.mean()), stderr)
  return results


# ------------------------------------------------------------- sibling steps
#
# What search needs from a verifier is not the pooled step AUC (which mostly
# ranks easy questions above hard ones) but, after one prefix, telling a
# right next step from a wrong sibling: beam search keeps the best of M
# sampled siblings at every round.


@dataclasses.dataclass(frozen=True)
class ScoredSolution:
  """One sampled solution with the exact label and a score at every step.

  Attributes:
    question: an id of its question (solutions of one question share it).
    steps: the step texts, in order.
    labels: exact correctness of each step (prefix property: once wrong,
      every later step is wrong).
    scores: a verifier's score at each step end.
  """

  question: int
  steps: Sequence[str]
  labels: Sequence[bool]
  scores: Sequence[float]


class SiblingGroup(NamedTuple):
  """The sampled next steps after one right prefix of one question.

  Attributes:
    right, scores: bool / float [samples], one entry per solution that has
      a step after the prefix (repeats kept: they are the policy's
      distribution of next steps).
    texts: the step texts, in the same order.
  """

  right: np.ndarray
  scores: np.ndarray
  texts: tuple[str, ...]


def sibling_groups(solutions: Sequence[ScoredSolution]) -> list[SiblingGroup]:
  """Groups next steps by (question, right prefix): siblings after one prefix.

  A prefix with a wrong step has only wrong continuations, so only prefixes
  whose steps are all right (the empty one included) form groups.
  """
  groups: dict[tuple, list[tuple[bool, float, str]]] = {}
  for solution in solutions:
    steps = list(solution.steps)
    if not len(steps) == len(solution.labels) == len(solution.scores):
      raise ValueError(f"question {solution.question}: {len(steps)} steps, "
                       f"{len(solution.labels)} labels, {len(solution.scores)} scores")
    for k, (text, label, score) in enumerate(zip(steps, solution.labels, solution.scores,
                                                 strict=True)):
      groups.setdefault((solution.question, tuple(steps[:k])), []).append(
          (bool(label), float(score), text))
      if not label:
        break  # later steps follow a wrong prefix
  return [SiblingGroup(np.array([r for r, _, _ in members]),
                       np.array([s for _, s, _ in members], np.float64),
                       tuple(t for _, _, t in members))
          for members in groups.values()]


def sibling_auc(groups: Sequence[SiblingGroup]) -> dict:
  """P(a right step scores above a wrong sibling of the same prefix), ties 1/2.

  Pairs are of distinct step texts (a repeated step is one candidate), pooled
  over all groups that have both a right and a wrong sibling.

  Returns:
    {"auc": float or None (no mixed group), "num_pairs": int, "num_groups": int}.
  """
  wins, pairs, mixed = 0.0, 0, 0
  for group in groups:
    distinct = {}
    for right, score, text in zip(group.right, group.scores, group.texts, strict=True):
      distinct.setdefault(text, (bool(right), float(score)))
    right = np.array([s for r, s in distinct.values() if r])
    wrong = np.array([s for r, s in distinct.values() if not r])
    if right.size and wrong.size:
      mixed += 1
      pairs += right.size * wrong.size
      difference = right[:, None] - wrong[None, :]
      wins += float((difference > 0).sum() + 0.5 * (difference == 0).sum())
  return {"auc": wins / pairs if pairs else None, "num_pairs": pairs, "num_groups": mixed}


def top_of_m(groups: Sequence[SiblingGroup], m: int, num_draws: int, seed: int) -> dict:
  """How often the top-scored of M sampled siblings is right, against a random one.

  What one round of beam search with width M faces: from each group with at
  least M sampled next steps, draw M of them (without replacement), `num_draws`
  times; ties for the top go to the first drawn.

  Returns:
    {"top": accuracy of the top-scored, "random": of a random sibling (the
    right fraction of the draw), "top_mixed"/"random_mixed": the same over
    draws holding both a right and a wrong step (None without any),
    "num_groups", "num_mixed_draws"}.
  """
  if m < 1 or num_draws < 1:
    raise ValueError(f"top_of_m: expected m >= 1 and num_draws >= 1, got {m}, {num_draws}")
  rng = np.random.default_rng(seed)
  top, random_pick, mixed_top, mixed_random, used = [], [], [], [], 0
  for group in groups:
    if group.right.size < m:
      continue
    used += 1
    for _ in range(num_draws):
      drawn = rng.choice(group.right.size, size=m, replace=False)
      right, scores = group.right[drawn], group.scores[drawn]
      hit, chance = float(right[np.argmax(scores)]), float(right.mean())
      top.append(hit)
      random_pick.append(chance)
      if 0 < right.sum() < m:
        mixed_top.append(hit)
        mixed_random.append(chance)
  mean = lambda values: float(np.mean(values)) if values else None
  return {"m": m, "top": mean(top), "random": mean(random_pick),
          "top_mixed": mean(mixed_top), "random_mixed": mean(mixed_random),
          "num_groups": used, "num_mixed_draws": len(mixed_top)}



def transfer(scores: Mapping[str, np.ndarray], correct: np.ndarray, questions: Sequence[int],
             seed: int) -> dict:
  """Two verifiers' outcome AUCs on the same attempts, and the first's
  advantage with an interval from resampling questions (`auc_difference`).

  Args:
    scores: {name: float [A]} of exactly two verifiers, the first compared
      against the second.
    correct: bool [A], each attempt's outcome.

  Returns:
    {"auc": {name: AUC or None}, "advantage": `auc_difference` or None}, None
    where every attempt has the same outcome (AUC undefined).
  """
  both = 0 < correct.sum() < len(correct)
  auc = {name: roc_auc(values, correct) if both else None for name, values in scores.items()}
  first, second = scores.values()
  advantage = auc_difference(first, second, correct, questions, seed=seed) if both else None
  return {"auc": auc, "advantage": advantage}
