"""Best-of-N as one compiled program: N samples per question, scored by the PRM.

The N samples of a question are rows of the batch; each prompt is prefilled
once and copied. Whole solutions are sampled, then appended to the PRM's
cache in one call, whose trunk runs only over the columns some row uses
(`common.PRM_APPEND_CHUNK` at a time: solutions fill about half of their
128-token buffer); a solution's score is the PRM's score at its last step end
(`last` aggregation, the paper's best; or the lowest of its step scores,
`min`). The answer is chosen on the host
(`select.weighted_best_of_n` over the decoded final answers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ttscale.search import common, sampling

# How a candidate's step scores make its score, in every search program.
SEARCH_AGGREGATIONS = ("last", "min")


@struct.dataclass
class Candidates:
  """N finished candidates per question, the output of every search program."""
  tokens: jax.Array     # int32 [Q·N, T] solution tokens, 0 after `lengths`
  lengths: jax.Array    # int32 [Q·N] tokens per solution (its end token included)
  scores: jax.Array     # float32 [Q·N] verifier score at the last step end (0: no step)
  flops: jax.Array      # float32 [Q] FLOPs used per question
  policy_tokens: jax.Array  # int32 [Q] tokens the policy decoded per question (rollouts included)
  # Best-of-N only (None for beam search): float32 [Q, N], FLOPs the question
  # would have used with only its first n + 1 samples (prompt prefills
  # included), so one pool of N samples also gives best-of-n for every n < N.
  prefix_flops: jax.Array | None = None
  # Tree search only (None for best-of-N): float32 [Q], the mean over rounds
  # of the number of distinct prefixes the question's live rows held after
  # selection (its search's diversity; N/M at most for beam search).
  distinct_prefixes: jax.Array | None = None


def solution_scores(tokens: jax.Array, lengths: jax.Array, token_scores: jax.Array,
                    step_id: int, eos_id: int, how: str = "last") -> jax.Array:
  """One score per row from the scores at its step ends, or 0 without a step.

  A step end is a delimiter or end-of-solution token that ends a non-empty
  step (the token before it is not itself a step end).

  Args:
    tokens: int32 [B, T]; lengths: int32 [B]; token_scores: float [B, T].
    how: "last" (the score at the last step end, the paper's) or "min" (the
      lowest over the step ends).
  """
  columns = jnp.arange(tokens.shape[1])[None, :]
  is_end = ((tokens == step_id) | (tokens == eos_id)) & (columns < lengths[:, None])
  previous_end = jnp.pad(is_end, ((0, 0), (1, 0)))[:, :-1]
  step_end = is_end & ~previous_end & (columns > 0)
  has_step = step_end.any(axis=1)
  if how == "min":
    return jnp.where(has_step, jnp.where(step_end, token_scores, jnp.inf).min(axis=1), 0.0)
  if how != "last":
    raise ValueError(f"step aggregation {how!r}: expected one of {SEARCH_AGGREGATIONS}")
  last = jnp.max(jnp.where(step_end, columns, -1), axis=1)
  score = jnp.take_along_axis(token_scores, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  return jnp.where(has_step, score, 0.0)


def best_of_n(models: common.SearchModels, policy_params, prm_params, prompts, lengths,
              rng, *, num_samples: int, sampler_config: sampling.SamplerConfig,
              aggregation: str = "last") -> Candidates:
  """N = `num_samples` whole solutions per question and their PRM scores.

  Args:
    prompts: int32 [Q, P] left-padded; lengths: int32 [Q]; rng: PRNG key.
    sampler_config: must stop at the end of the solution.
    aggregation: how a solution's step scores make its score (`solution_scores`).

  Returns:
    `Candidates` with Q·N rows, question-major.
  """
  assert sampler_config.stop_at == sampling.StopAt.SOLUTION
  width = prompts.shape[1]
  budget = sampler_config.max_new_tokens
  # Solutions start in a policy cache of half their budget (`sample_in_two_caches`).
  first_tokens = sampling.first_cache_tokens(sampler_config)
  started = common.start(models, policy_params, prm_params, prompts, lengths, num_samples,
                         slots=width + (first_tokens or budget), prm_slots=width + budget)
  rows = started.pending.shape[0]
  context = started.policy_cache.next_position
  out = sampling.sample_in_two_caches(
      models.policy_extend, policy_params, started.policy_cache, started.pending,
      jnp.ones((rows,), bool), rng, sampler_config, first_tokens, width + budget)
  policy_flops = models.policy_rate.decode(context, out.lengths)
  if models.exact_verifier is not None:
    scores = models.exact_verifier.scores(prompts, lengths, out.tokens, out.lengths)
    prm_flops = jnp.zeros_like(policy_flops)
  else:
    # The whole solution into the PRM at once; a score at every token.
    token_scores, _, prm_flops = common.append_to_prm(
        models, prm_params, started.prm_cache, out.tokens, out.lengths)
    scores = solution_scores(out.tokens, out.lengths, token_scores,
                             sampler_config.step_id, sampler_config.eos_id, aggregation)
  row_flops = (policy_flops + prm_flops).reshape(-1, num_samples)
  prefix_flops = started.flops[:, None] + jnp.cumsum(row_flops, axis=1)
  return Candidates(tokens=out.tokens, lengths=out.lengths, scores=scores,
                    flops=prefix_flops[:, -1],
                    policy_tokens=common.per_question(out.lengths, num_samples),
                    prefix_flops=prefix_flops)
