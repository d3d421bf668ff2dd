"""Scoring and answer selection: one score per solution, one answer per question.

Pure and vectorised (jax.numpy, so usable inside jitted search programs and
on numpy arrays alike). Solutions are identified by their index in a
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

import jax.numpy as jnp
import numpy as np

STEP_AGGREGATIONS = ("last", "min", "prod")
SELECTORS = ("best_of_n", "weighted_best_of_n", "majority")


def aggregate_steps(step_scores, step_mask, how: str):
  """One score per solution from its step scores.

  Args:
    step_scores: float [..., max_steps], the PRM's score at each step end.
    step_mask: bool [..., max_steps], True on the solution's real steps.
    how: "last", "min" or "prod".

  Returns:
    float [...]; 0 for a solution without any step.
  """
  step_scores = jnp.asarray(step_scores, jnp.float32)
  step_mask = jnp.asarray(step_mask, bool)
  has_steps = step_mask.any(axis=-1)
  if how == "last":
    count = step_mask.sum(axis=-1)
    last = jnp.take_along_axis(
        step_scores, jnp.maximum(count - 1, 0)[..., None], axis=-1)[..., 0]
    # Steps are a prefix of the row; the last real one is at count - 1.
    return jnp.where(has_steps, last, 0.0)
  if how == "min":
    return jnp.where(has_steps, jnp.where(step_mask, step_scores, jnp.inf).min(axis=-1), 0.0)
  if how == "prod":
    return jnp.where(has_steps, jnp.where(step_mask, step_scores, 1.0).prod(axis=-1), 0.0)
  raise ValueError(f"step aggregation {how!r}: expected one of {STEP_AGGREGATIONS}")


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


def _pick(totals, valid):
  """Index of the first valid sample with the largest total, or -1."""
  totals = jnp.where(valid, totals, -jnp.inf)
  return jnp.where(valid.any(axis=-1), jnp.argmax(totals, axis=-1), -1)


def best_of_n(scores, valid):
  """int32 [questions]: the valid sample with the highest score [questions, N]."""
  return _pick(jnp.asarray(scores, jnp.float32), jnp.asarray(valid, bool))


def weighted_best_of_n(ids, scores, valid):
  """int32 [questions]: a sample of the answer with the largest score sum.

  Args:
    ids: int32 [questions, N] answer ids (`answer_ids`).
    scores: float [questions, N].
    valid: bool [questions, N].
  """
  ids, valid = jnp.asarray(ids), jnp.asarray(valid, bool)
  same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  # --> [questions, N]: each sample's answer's total score.
  totals = jnp.einsum("qij,qj->qi", same.astype(jnp.float32),
                      jnp.asarray(scores, jnp.float32))
  return _pick(totals, valid)


def hierarchical_weighted_best_of_n(ids, scores, valid):
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
  ids, valid = jnp.asarray(ids), jnp.asarray(valid, bool)
  scores = jnp.asarray(scores, jnp.float32)
  questions, chains, attempts = ids.shape
  flat = (questions * chains, attempts)
  pick = weighted_best_of_n(ids.reshape(flat), scores.reshape(flat), valid.reshape(flat))
  picked = jnp.maximum(pick, 0)[:, None]
  same = (ids.reshape(flat) == jnp.take_along_axis(ids.reshape(flat), picked, axis=1))
  weight = jnp.where(same & valid.reshape(flat), scores.reshape(flat), 0.0).sum(axis=1)
  chain_ids = jnp.take_along_axis(ids.reshape(flat), picked, axis=1)[:, 0]
  chain_valid = pick >= 0
  chain = weighted_best_of_n(chain_ids.reshape(questions, chains),
                             weight.reshape(questions, chains),
                             chain_valid.reshape(questions, chains))
  within = jnp.take_along_axis(pick.reshape(questions, chains),
                               jnp.maximum(chain, 0)[:, None], axis=1)[:, 0]
  return jnp.where(chain >= 0, chain * attempts + within, -1)


def majority(ids, valid):
  """int32 [questions]: a sample of the most frequent answer."""
  return weighted_best_of_n(ids, jnp.ones(jnp.shape(ids), jnp.float32), valid)


def select(selector: str, ids, scores, valid):
  """Dispatches to a selector by name (`SELECTORS`)."""
  if selector == "best_of_n":
    return best_of_n(scores, valid)
  if selector == "weighted_best_of_n":
    return weighted_best_of_n(ids, scores, valid)
  if selector == "majority":
    return majority(ids, valid)
  raise ValueError(f"selector {selector!r}: expected one of {SELECTORS}")
