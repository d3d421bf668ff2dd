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
from ttscale.models.transformer import Decoder, soft_cap


def _segmented_scan(values: jax.Array, starts: jax.Array, combine) -> jax.Array:
  """Running `combine` of `values` [B, T] along T, restarting where `starts`."""
  def op(a, b):
    (a_value, a_start), (b_value, b_start) = a, b
    return jnp.where(b_start, b_value, combine(a_value, b_value)), a_start | b_start

  return jax.lax.associative_scan(op, (values, starts), axis=1)[0]


class ValueModel(nnx.Module):
  """Decoder trunk + a linear scalar head: one logit per position.

  With `step_likelihood` (the ids of the tokens that end a step), the head also
  reads how likely the trunk's own LM head found the current step: at every
  position, the sum and the minimum of the log-probabilities of the step's
  tokens so far, each with a learned weight (zero at the start). A value head
  read at a step's last token of a shallow trunk cannot see what the trunk
  computed at the step's other tokens, where a slip shows as a token the
  trunk did not expect; these two numbers carry it there. A step's first
  token is not counted (its prediction sits before the step, where an append
  of the step does not reach), so whole sequences and appended steps read the
  same features. The trunk is then not trained (only the head and the two
  weights are).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs,
               step_likelihood: tuple[int, ...] = ()):
    self.config = config
    self.decoder = Decoder(config, rngs)
    # Zero-initialised: every prefix starts at probability 0.5.
    self.head = nnx.Param(jnp.zeros((config.embed_dim,)), logical_axes=("embed",))
    self.head_bias = nnx.Param(jnp.zeros(()), logical_axes=())
    self.step_end_ids = tuple(step_likelihood)
    if self.step_end_ids:
      if not config.tie_embeddings:
        self.lm_head = nnx.Param(jnp.zeros((config.embed_dim, config.vocab_size)),
                                 logical_axes=("embed", "vocab"))
      self.likelihood_weights = nnx.Param(jnp.zeros((2,)), logical_axes=(None,))

  def _step_likelihood(self, hidden: jax.Array, tokens: jax.Array,
                       token_valid: jax.Array) -> jax.Array:
    """float [B, T, 2]: sum and min of the current step's token log-probs."""
    table = (self.decoder.embedding[...].T if self.config.tie_embeddings
             else self.lm_head[...])
    logits = soft_cap(hidden @ table, self.config.final_logit_softcap).astype(jnp.float32)
    # Token t's log-prob was predicted at t - 1; the trunk's verdict, not trained here.
    predicted = jax.nn.log_softmax(jax.lax.stop_gradient(logits[:, :-1]))
    token_logprob = jnp.take_along_axis(predicted, tokens[:, 1:, None], axis=-1)[..., 0]
    is_end = jnp.isin(tokens, jnp.asarray(self.step_end_ids))
    # A step starts after a step end (or at the first token given).
    starts = jnp.pad(is_end[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    counted = ~starts[:, 1:] & token_valid[:, 1:] & token_valid[:, :-1]
    logprob = jnp.pad(jnp.where(counted, token_logprob, 0.0), ((0, 0), (1, 0)))
    total = _segmented_scan(logprob, starts, jnp.add)
    lowest = _segmented_scan(logprob, starts, jnp.minimum)
    return jnp.stack([total, lowest], axis=-1)

  def _logits(self, hidden: jax.Array, tokens: jax.Array,
              token_valid: jax.Array) -> jax.Array:
    if self.step_end_ids:
      # The trunk stays the language model it was: training it for value
      # would wreck the predictions the features read (measured: step
      # log-probs of right steps fell to about -10).
      hidden = jax.lax.stop_gradient(hidden)
    likelihood = (self._step_likelihood(hidden, tokens, token_valid) if self.step_end_ids
                  else None)
    return self.head_logits(hidden, likelihood)

  def head_logits(self, hidden: jax.Array, likelihood: jax.Array | None) -> jax.Array:
    """The head alone: value logits float [...] from the trunk's hidden states
    float [..., embed] and, with `step_likelihood`, the step's likelihood
    features float [..., 2] at the same positions (else None)."""
    logits = hidden @ self.head[...] + self.head_bias[...]
    if self.step_end_ids:
      logits += likelihood @ self.likelihood_weights[...]
    return logits

  def step_end_inputs(self, tokens: jax.Array, positions: jax.Array,
                      step_ends: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """What the head reads at every step end of whole sequences (no dropout).

    `head_logits` of these equals `__call__`'s logits gathered at `step_ends`.

    Args:
      tokens, positions: int32 [batch, T].
      step_ends: int32 [batch, max_steps], positions in [0, T).

    Returns:
      hidden float [batch, max_steps, embed]; the step likelihood features
      float [batch, max_steps, 2] with `step_likelihood`, else None.
    """
    hidden = self.decoder.forward(tokens, positions)
    at_ends = jnp.take_along_axis(hidden, step_ends[..., None], axis=1)
    if not self.step_end_ids:
      return at_ends, None
    likelihood = self._step_likelihood(hidden, tokens, jnp.ones(tokens.shape, bool))
    return at_ends, jnp.take_along_axis(likelihood, step_ends[..., None], axis=1)

  def __call__(self, tokens, positions, segment_ids=None, dropout_rng=None):
    """Value logits of whole sequences, float [batch, T]."""
    hidden = self.decoder.forward(tokens, positions, segment_ids, dropout_rng)
    valid = jnp.ones(tokens.shape, bool) if segment_ids is None else segment_ids > 0
    return self._logits(hidden, tokens, valid)

  def extend(self, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Value logits [batch, T] of appended tokens, and the extended cache."""
    hidden, cache = self.decoder.extend(tokens, token_valid, cache)
    return self._logits(hidden, tokens, token_valid), cache

  def extend_in_chunks(self, tokens: jax.Array, token_valid: jax.Array, cache: KVCache,
                       chunk: int) -> tuple[jax.Array, KVCache]:
    """`extend`, running the trunk `chunk` columns at a time and only up to the
    last column that holds a real token of some row.

    Search appends whole solutions (T = 128) or rollouts into fixed-width
    buffers that are mostly padding; the trunk's cost then follows the
    longest real append, not T. The slots are those `extend` uses (chunk c at
    `write_index + c·chunk`); the slots of chunks left out stay invalid, as
    every slot at or past `write_index` is. The head reads the whole width at
    once, so the step-likelihood features see steps that cross chunks whole.

    Args:
      tokens: int32 [batch, T]; token_valid: bool [batch, T], real tokens of
        a row first (a prefix of the columns); chunk: columns per trunk call
        (T not a multiple of it, or not above it: one `extend`).

    Returns:
      (value logits float [batch, T], meaningless where not `token_valid`;
      the cache, its `write_index` advanced by T as `extend` does).
    """
    batch, width = tokens.shape
    if width <= chunk or width % chunk:
      return self.extend(tokens, token_valid, cache)
    start = cache.write_index
    used = jnp.max(jnp.where(token_valid, jnp.arange(width)[None, :] + 1, 0))

    def cond(carry):
      column, _, _ = carry
      return column < used

    def body(carry):
      column, hidden, cache = carry
      piece = jax.lax.dynamic_slice_in_dim(tokens, column, chunk, axis=1)
      piece_valid = jax.lax.dynamic_slice_in_dim(token_valid, column, chunk, axis=1)
      piece_hidden, cache = self.decoder.extend(piece, piece_valid, cache)
      hidden = jax.lax.dynamic_update_slice_in_dim(hidden, piece_hidden, column, axis=1)
      return column + chunk, hidden, cache

    piece_shape = jax.eval_shape(lambda t, v, c: self.decoder.extend(t, v, c)[0],
                                 tokens[:, :chunk], token_valid[:, :chunk], cache)
    hidden = jnp.zeros((batch, width, piece_shape.shape[-1]), piece_shape.dtype)
    _, hidden, cache = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), hidden, cache))
    return self._logits(hidden, tokens, token_valid), cache.replace(write_index=start + width)


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
  if "lm_head" in params:  # an untied head for the step-likelihood features
    params["lm_head"] = nnx.to_pure_dict(policy_params)["lm_head"]
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
