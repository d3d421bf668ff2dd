"""Scoring and answer selection: one score per solution, one answer per question.

Pure and vectorised numpy, run on the host over decoded answers (in
jax.numpy each eager op compiled once per new shape: ~5% of the tiny study's
time). Solutions are identified by their index in a
`[questions, N]` layout; a selector returns, per question, the index of a
sample whose final answer it picks, or -1 when no sample has an answer.

Step aggregation (`aggregate_steps`): `last` (the paper's best), `min`, `prod`.
Answer selection over N samples:
  - `best_of_n`: the sample with the highest score;
  - `weighted_best_of_n`: the answer with the largest sum of scores over the
    samples that give it;
  - `majority`: the most frequent answer;
  - `hierarchical_weighted_best_of_n` (revision chains): weighted best-of-N
    within each chain, then across the chains' picks.
Ties go to the answer that appears first (lowest sample index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STEP_AGGREGATIONS = ("last", "min", "prod")
SELECTORS = ("best_of_n", "weighted_best_of_n", "majority")


def aggregate_steps(step_scores, step_mask, how: str) -> np.ndarray:
  """One score per solution from its step scores.

  Args:
    step_scores: float [..., max_steps], the PRM's score at each step end.
    step_mask: bool [..., max_steps], True on the solution's real steps.
    how: "last", "min" or "prod".

  Returns:
    float32 [...]; 0 for a solution without any step.
  """
  if how not in STEP_AGGREGATIONS:
    raise ValueError(f"step aggregation {how!r}: expected one of {STEP_AGGREGATIONS}")
  step_scores = np.asarray(step_scores, np.float32)
  step_mask = np.asarray(step_mask, bool)
  has_steps = step_mask.any(axis=-1)
  if how == "last":
    count = step_mask.sum(axis=-1)
    # Steps are a prefix of the row; the last real one is at count - 1.
    aggregate = np.take_along_axis(
        step_scores, np.maximum(count - 1, 0)[..., None], axis=-1)[..., 0]
  elif how == "min":
    aggregate = np.where(step_mask, step_scores, np.inf).min(axis=-1)
  else:
    aggregate = np.where(step_mask, step_scores, 1.0).prod(axis=-1)
  return np.where(has_steps, aggregate, 0.0).astype(np.float32)


def answer_ids(answers: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, np.ndarray]:
  """Integer ids for answer strings, per question.

  Args:
    answers: [questions][N] final answers; None where a sample has none.

  Returns:
    (ids int32 [questions, N], valid bool [questions, N]); equal strings of
    one question share an id; ids of invalid samples are -1.
  """
  num_samples = {len(row) for row in answers}
  if len(num_samples) > 1:
    raise ValueError(f"answers: every question needs the same N, got {sorted(num_samples)}")
  ids = np.full((len(answers), num_samples.pop() if answers else 0), -1, np.int32)
  for q, row in enumerate(answers):
    seen: dict[str, int] = {}
    for n, answer in enumerate(row):
      if answer is not None:
        ids[q, n] = seen.setdefault(answer, len(seen))
  return ids, ids >= 0


def _pick(totals, valid) -> np.ndarray:
  """Index of the first valid sample with the largest total, or -1."""
  totals = np.where(valid, totals, -np.inf)
  return np.where(valid.any(axis=-1), np.argmax(totals, axis=-1), -1).astype(np.int32)


def best_of_n(scores, valid) -> np.ndarray:
  """int32 [questions]: the valid sample with the highest score [questions, N]."""
  return _pick(np.asarray(scores, np.float32), np.asarray(valid, bool))


def weighted_best_of_n(ids, scores, valid) -> np.ndarray:
  """int32 [questions]: a sample of the answer with the largest score sum.

  Args:
    ids: int32 [questions, N] answer ids (`answer_ids`).
    scores: float [questions, N].
    valid: bool [questions, N].
  """
  ids, valid = np.asarray(ids), np.asarray(valid, bool)
  same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  # --> [questions, N]: each sample's answer's total score, summed in float64
  # so that equal sets of scores tie exactly whatever their order.
  totals = np.einsum("qij,qj->qi", same, np.asarray(scores, np.float32).astype(np.float64))
  return _pick(totals, valid)


def hierarchical_weighted_best_of_n(ids, scores, valid) -> np.ndarray:
  """int32 [questions]: weighted best-of-N within each chain, then across chains.

  Each chain picks the answer with the largest score sum over its own
  attempts; across chains, each pick weighs that sum, and the answer with the
  largest total of weights wins.

  Args:
    ids, scores, valid: [questions, chains, attempts].

  Returns:
    int32 [questions]: the flat index `chain * attempts + attempt` of an
    attempt giving the chosen answer, or -1 when no attempt has an answer.
  """
  ids, valid = np.asarray(ids), np.asarray(valid, bool)
  scores = np.asarray(scores, np.float32).astype(np.float64)
  questions, chains, attempts = ids.shape
  flat = (questions * chains, attempts)
  ids, valid, scores = ids.reshape(flat), valid.reshape(flat), scores.reshape(flat)
  pick = weighted_best_of_n(ids, scores, valid)
  chain_ids = np.take_along_axis(ids, np.maximum(pick, 0)[:, None], axis=1)[:, 0]
  weight = np.where((ids == chain_ids[:, None]) & valid, scores, 0.0).sum(axis=1)
  chain = weighted_best_of_n(chain_ids.reshape(questions, chains),
                             weight.reshape(questions, chains),
                             (pick >= 0).reshape(questions, chains))
  within = np.take_along_axis(pick.reshape(questions, chains),
                              np.maximum(chain, 0)[:, None], axis=1)[:, 0]
  return np.where(chain >= 0, chain * attempts + within, -1).astype(np.int32)


def majority(ids, valid) -> np.ndarray:
  """int32 [questions]: a sample of the most frequent answer."""
  return weighted_best_of_n(ids, np.ones(np.shape(ids), np.float32), valid)


def select(selector: str, ids, scores, valid):
  """Dispatches to a selector by name (`SELECTORS`)."""
  if selector == "best_of_n":
    return best_of_n(scores, valid)
  if selector == "weighted_best_of_n":
    return weighted_best_of_n(ids, scores, valid)
  if selector == "majority":
    return majority(ids, valid)
  raise ValueError(f"selector {selector!r}: expected one of {SELECTORS}")
