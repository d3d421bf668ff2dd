"""The verifier network (PRM and ORM): the policy's trunk with a scalar head.

A `ValueModel` is the same `Decoder` as the policy, so it starts from the
policy's weights (`init_from_policy`) and shares its cache layout: search can
score a newly sampled step by appending only that step's tokens to the
verifier's own `KVCache` (`extend`), never re-reading the prefix.

The head reads a logit at every position; a solution prefix is scored at the
last token of its last step (`step_end_scores`, `last_token_logits`), and
the score is the sigmoid of that logit: the predicted probability that the
policy, continuing from there, reaches a correct answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache
from ttscale.models.transformer import Decoder


class ValueModel(nnx.Module):
  """Decoder trunk + a linear scalar head: one logit per position."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.decoder = Decoder(config, rngs)
    # Zero-initialised: every prefix starts at probability 0.5.
    self.head = nnx.Param(jnp.zeros((config.embed_dim,)), logical_axes=("embed",))
    self.head_bias = nnx.Param(jnp.zeros(()), logical_axes=())

  def _logits(self, hidden: jax.Array) -> jax.Array:
    return hidden @ self.head[...] + self.head_bias[...]

  def __call__(self, tokens, positions, segment_ids=None, dropout_rng=None):
    """Value logits of whole sequences, float [batch, T]."""
    return self._logits(self.decoder.forward(tokens, positions, segment_ids,
                                             dropout_rng))

  def extend(self, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Value logits [batch, T] of appended tokens, and the extended cache."""
    hidden, cache = self.decoder.extend(tokens, token_valid, cache)
    return self._logits(hidden), cache


def init_from_policy(value_params: nnx.State, policy_params: nnx.State) -> nnx.State:
  """`value_params` with the trunk (`decoder`) replaced by the policy's.

  Raises:
    ValueError: the two trunks differ in shape (another model config).
  """
  value_trunk = nnx.to_pure_dict(value_params["decoder"])
  policy_trunk = nnx.to_pure_dict(policy_params["decoder"])
  value_shapes = jax.tree.map(jnp.shape, value_trunk)
  policy_shapes = jax.tree.map(jnp.shape, policy_trunk)
  if value_shapes != policy_shapes:
    raise ValueError("the verifier's trunk and the policy's differ in shape: "
                     "build the verifier from the policy's model config")
  params = nnx.to_pure_dict(value_params)
  params["decoder"] = policy_trunk
  state = jax.tree.map(lambda x: x, value_params)  # a copy to fill
  nnx.replace_by_pure_dict(state, params)
  return state


def step_end_scores(logits: jax.Array, step_ends: jax.Array,
                    step_mask: jax.Array) -> jax.Array:
  """Scores at every step end of whole solutions.

  Args:
    logits: float [batch, T] from `ValueModel.__call__`.
    step_ends: int32 [batch, max_steps], the position of each step's last
      token (its delimiter or end-of-solution token).
    step_mask: bool [batch, max_steps], True on real steps.

  Returns:
    float [batch, max_steps]: sigmoid scores, 0 where `step_mask` is False.
  """
  gathered = jnp.take_along_axis(logits, jnp.maximum(step_ends, 0), axis=1)
  return jnp.where(step_mask, jax.nn.sigmoid(gathered), 0.0)


def last_token_logits(logits: jax.Array, token_valid: jax.Array) -> jax.Array:
  """The logit at each row's last valid token of an `extend` call.

  Args:
    logits: float [batch, T]; token_valid: bool [batch, T] (valid tokens
      first, as the sampler writes them).

  Returns:
    float [batch]; rows without a valid token get the logit of column 0.
  """
  last = jnp.maximum(token_valid.sum(axis=1) - 1, 0)
  return jnp.take_along_axis(logits, last[:, None], axis=1)[:, 0]
