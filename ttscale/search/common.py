"""What every compiled search program shares: its models, its start, PRM scoring.

A search program runs the policy and the PRM side by side, each with its own
`KVCache`. Both start from the question's prompt, prefilled once per question
and then copied to the question's N rows (`start`), so a prompt is computed
once however large the budget. New tokens are scored by appending them to the
PRM's cache (`append_and_score`), never by re-reading the prefix.

The PRM's cache advances only by the longest real append of the batch
(`append_and_score` pulls its write index back over the all-padding tail), so
it keeps pace with the policy's cache, which the sampler advances one slot per
decode trip.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ttscale.models import ExtendFn, init_cache, policy_extend_fn
from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache
from ttscale.search import sampling
from ttscale.search.budget import FlopsRate
from ttscale.search.exact_verifier import ExactVerifier

# Columns per PRM trunk call when search appends a whole solution (128 wide)
# or a rollout (k·S): appended rows are mostly padding past their longest.
PRM_APPEND_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class SearchModels:
  """The policy and the PRM as pure functions, with their shapes (hashable)."""
  policy_graphdef: object
  prm_graphdef: object
  policy_config: ModelConfig
  prm_config: ModelConfig
  # False skips every PRM call (scores 0): only for timing the PRM's share.
  with_prm: bool = True
  # Set: steps are scored by the task's exact labels instead of the PRM
  # (`exact_verifier.ExactVerifier`), and the PRM never runs.
  exact_verifier: ExactVerifier | None = None

  @property
  def runs_prm(self) -> bool:
    return self.with_prm and self.exact_verifier is None

  @property
  def policy_extend(self) -> ExtendFn:
    return policy_extend_fn(self.policy_graphdef)

  @property
  def prm_extend(self) -> ExtendFn:
    # `ValueModel.extend` has the policy's signature: (params, tokens, valid, cache).
    return policy_extend_fn(self.prm_graphdef)

  def prm_append(self, prm_params, tokens, token_valid, cache):
    """`prm_extend` for appends of a step or more: a PRM that can
    (`ValueModel.extend_in_chunks`) runs its trunk only over the columns some
    row uses."""
    prm = nnx.merge(self.prm_graphdef, prm_params)
    if hasattr(prm, "extend_in_chunks"):
      return prm.extend_in_chunks(tokens, token_valid, cache, PRM_APPEND_CHUNK)
    return prm.extend(tokens, token_valid, cache)

  @property
  def policy_rate(self) -> FlopsRate:
    return FlopsRate.of(self.policy_config)

  @property
  def prm_rate(self) -> FlopsRate:
    return FlopsRate.of(self.prm_config)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Started:
  policy_cache: KVCache   # rows [Q·copies]: all prompt tokens but the last
  pending: jax.Array      # int32 [Q·copies]: each row's last prompt token
  prm_cache: KVCache      # rows [Q·copies]: all prompt tokens
  flops: jax.Array        # float32 [Q]: the prompt prefills


def start(models: SearchModels, policy_params, prm_params, prompts: jax.Array,
          lengths: jax.Array, copies: int, slots: int, prm_slots: int) -> Started:
  """Prefills each prompt once into both models, then copies it to `copies` rows.

  Args:
    prompts: int32 [Q, P] left-padded prompts; lengths: int32 [Q].
    copies: rows per question (N); row `q * copies + j` is copy j of question q.
    slots, prm_slots: cache sizes of the policy and the PRM.
  """
  num_questions, width = prompts.shape
  policy_cache = init_cache(models.policy_config, num_questions, slots)
  policy_cache, pending = sampling.prefill(models.policy_extend, policy_params,
                                           policy_cache, prompts, lengths)
  columns = jnp.arange(width)
  prompt_valid = columns[None, :] >= width - lengths[:, None]
  prm_cache = init_cache(models.prm_config, num_questions, prm_slots)
  flops = models.policy_rate.decode(0, lengths - 1)
  if models.runs_prm:
    _, prm_cache = models.prm_extend(prm_params, prompts, prompt_valid, prm_cache)
  if models.exact_verifier is None:  # the exact verifier costs nothing
    flops += models.prm_rate.decode(0, lengths)
  rows = jnp.repeat(jnp.arange(num_questions), copies)
  return Started(policy_cache=sampling.gather_rows(policy_cache, rows),
                 pending=pending[rows],
                 prm_cache=sampling.gather_rows(prm_cache, rows),
                 flops=flops)


def append_to_prm(models: SearchModels, prm_params, prm_cache: KVCache, tokens: jax.Array,
                  counts: jax.Array) -> tuple[jax.Array, KVCache, jax.Array]:
  """Appends each row's first `counts` tokens to the PRM's cache, scoring each.

  Args:
    tokens: int32 [B, S]; counts: int32 [B] real tokens per row (0: nothing).
    prm_cache: needs S free slots (the tail past the longest count is taken
      back afterwards).

  Returns:
    (token_scores float32 [B, S]: sigmoid of the PRM at every appended token,
    meaningless past `counts`; the cache; FLOPs float32 [B]).
  """
  if not models.runs_prm:
    return jnp.zeros(tokens.shape), prm_cache, jnp.zeros(counts.shape)
  valid = jnp.arange(tokens.shape[1])[None, :] < counts[:, None]
  start_context = prm_cache.next_position
  write_index = prm_cache.write_index
  logits, prm_cache = models.prm_append(prm_params, tokens, valid, prm_cache)
  prm_cache = prm_cache.replace(write_index=write_index + jnp.max(counts))
  return jax.nn.sigmoid(logits), prm_cache, models.prm_rate.decode(start_context, counts)


def append_and_score(models: SearchModels, prm_params, prm_cache: KVCache,
                     tokens: jax.Array, counts: jax.Array
                     ) -> tuple[jax.Array, KVCache, jax.Array]:
  """`append_to_prm`, keeping the score at each row's last appended token.

  Returns:
    (scores float32 [B], meaningless where counts == 0; the cache; FLOPs float32 [B]).
  """
  token_scores, prm_cache, flops = append_to_prm(models, prm_params, prm_cache, tokens,
                                                 counts)
  last = jnp.maximum(counts - 1, 0)
  return jnp.take_along_axis(token_scores, last[:, None], axis=1)[:, 0], prm_cache, flops


def per_question(values: jax.Array, copies: int) -> jax.Array:
  """Sums a per-row quantity [Q·copies] over each question's rows → [Q]."""
  return values.reshape(-1, copies).sum(axis=1)
