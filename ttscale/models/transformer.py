"""One decoder trunk (Flax NNX), used by the policy (LM head) and the PRM.

RMSNorm, rotary position embeddings, grouped/multi-query attention, gated MLP,
and the options imported checkpoints need (see `ModelConfig`): zero-centred norm
scales, scaled input embeddings and tanh soft-capping of attention scores and
logits (Gemma), post-norms, query scaling, sliding-window layers and separate
RoPE bases (Gemma 2 and 3), qk-norm (Qwen 3, Gemma 3), q/k/v biases (Qwen 2.5)
and rescaled RoPE frequencies (Llama 3.1+, Gemma 3). One code path: every
option is a config field and the defaults are our own models.

Sliding-window layers use a mask over the full cache, not a ring buffer of W
slots. The cache's slots are shared by all rows while each row has its own
gaps (rows waiting or finished), so the last W slots hold a different number
of a row's tokens in each row: a ring would have to be per row. The mask
costs what a global layer costs; the study's contexts (up to a few thousand
tokens) keep that small.

Parameters carry `logical_axes` metadata and activations are constrained by
logical axes (`ttscale.parallel`), so the same code shards on any mesh.

Two ways to run the trunk:
- `forward(tokens, positions, segment_ids)`: whole (packed) sequences, for
  training and for scoring; tokens attend within their segment, causally.
- `extend(tokens, token_valid, cache)`: append tokens to an explicit
  `KVCache` (prefill is an append to an empty cache, decoding an append of
  one token per row); returns the new cache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttscale import parallel
from ttscale.models.config import ModelConfig
from ttscale.models.kv_cache import KVCache, append_layout, slot_positions

_MASKED = -1e30


def _param(rngs: nnx.Rngs, shape, logical_axes, scale: float | None = None,
           dtype: str = "float32"):
  """A normal-initialised Param with std `scale` (default 1/sqrt(fan_in)),
  drawn in float32 and stored in `dtype`."""
  if scale is None:
    scale = shape[0] ** -0.5
  value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=logical_axes)


class RMSNorm(nnx.Module):
  """x / rms(x) * (scale_offset + scale) over the last axis; `scale` starts at
  1 - scale_offset. `axis_name` is the logical axis of that last axis.
  Computed in float32 (a bfloat16 mean of squares loses the small ones), the
  result in x's dtype."""

  def __init__(self, dim: int, *, eps: float = 1e-6, scale_offset: float = 0.0,
               axis_name: str = "embed", dtype: str = "float32"):
    # Initialised so that the multiplier starts at 1 whatever the offset (Gemma's
    # zero-centred scales start at 0).
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - scale_offset, dtype),
                           logical_axes=(axis_name,))
    self.eps = eps
    self.scale_offset = scale_offset

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    scale = self.scale[...].astype(jnp.float32)
    if self.scale_offset:
      scale = self.scale_offset + scale
    return (x * jax.lax.rsqrt(variance + self.eps) * scale).astype(dtype)


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
  """`cap * tanh(x / cap)`: x squashed into (-cap, cap); cap = 0 returns x."""
  if not cap:
    return x
  return cap * jnp.tanh(x / cap)


def rope_frequency_scale(config: ModelConfig, head_dim: int) -> np.ndarray | None:
  """Factors [head_dim // 2] on a global layer's RoPE frequencies, or None.

  "linear" divides every frequency by the factor; "llama3" (Llama 3.1's
  `apply_scaling`) divides those whose wavelength exceeds
  original_context / low_freq_factor, keeps those under original_context /
  high_freq_factor, and interpolates between by the context's number of
  wavelengths. Computed in float64 on the host: a constant of the program.
  """
  if config.rope_scaling == "none":
    return None
  factor = config.rope_scaling_factor
  half = head_dim // 2
  if config.rope_scaling == "linear":
    return np.full((half,), 1.0 / factor)
  frequencies = config.rope_base ** (-np.arange(half, dtype=np.float64) / half)
  wavelengths = 2 * np.pi / frequencies
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  context = config.rope_original_context
  smooth = (context / wavelengths - low) / (high - low)
  medium = (1 - smooth) / factor + smooth
  return np.where(wavelengths < context / high, 1.0,
                  np.where(wavelengths > context / low, 1.0 / factor, medium))


def apply_rope(x: jax.Array, positions: jax.Array, base: float,
               frequency_scale: np.ndarray | None = None) -> jax.Array:
  """Rotary embedding of x [batch, T, heads, head_dim] at positions [batch, T].

  `frequency_scale` [head_dim // 2] multiplies the frequencies (rope scaling,
  `rope_frequency_scale`); None leaves them as they are.
  """
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if frequency_scale is not None:
    frequencies = frequencies * jnp.asarray(frequency_scale, jnp.float32)
  angles = positions[..., None].astype(jnp.float32) * frequencies  # [batch, T, half]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  first, second = x[..., :half], x[..., half:]
  # In float32 (x promotes), returned in x's dtype.
  return jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1).astype(x.dtype)


def _dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def _expand_mask(mask: jax.Array, kv_heads: int, groups: int) -> jax.Array:
  """[batch, T, S] → [batch, 1, groups * T, S], matching grouped queries."""
  batch, length, slots = mask.shape
  mask = jnp.broadcast_to(mask[:, None], (batch, groups, length, slots))
  return mask.reshape(batch, 1, groups * length, slots)


def _masked_weights(scores: jax.Array, mask: jax.Array, softcap: float, dtype) -> jax.Array:
  """Masked softmax [batch, kv_heads, groups * T, S] of scores of that shape, in `dtype`."""
  groups = scores.shape[2] // mask.shape[1]
  # Softmax in float32 whatever the compute dtype; the weights mix the values
  # in theirs. Capped before masking, as Gemma 2 does, so masked slots stay at
  # _MASKED.
  scores = soft_cap(scores.astype(jnp.float32), softcap)
  scores = jnp.where(_expand_mask(mask, scores.shape[1], groups), scores, _MASKED)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _softmax_mix(scores: jax.Array, mask: jax.Array, values: jax.Array,
                 softcap: float) -> jax.Array:
  """Masked softmax of scores [batch, kv_heads, groups * T, S] applied to values."""
  weights = _masked_weights(scores, mask, softcap, values.dtype)
  return jnp.einsum("bkqs,bksd->bkqd", weights, values)


# Whole-sequence attention (`dense_attention`) goes in query blocks, each
# over the keys up to its last query: more blocks skip more of the causal
# triangle. But each block's backward pads its keys' and values' gradients to
# the full length, so a differentiated call goes in 2 blocks, and a forward
# one (scoring, validation) in one block per ~40 queries, at most 8.
# Measured on 2 CPU cores, seconds:
# - one train step of the policy at batch 50 × 160 tokens, and of the
#   revision model at 16 × 704: 17 blocks –, 0.85; 8 blocks –, 0.79;
#   4 blocks 0.21, 0.65; 3 blocks 0.22, 0.51; 2 blocks 0.20, 0.53;
#   1 block 0.23, 0.61;
# - the policy's forward pass at 16 × 704: 17 blocks 0.20, 8 blocks 0.17,
#   2 blocks 0.26 (at 64 × 160 the larger policy's: 0.31–0.33 for all).
_TRAINING_QUERY_BLOCKS = 2
_QUERY_BLOCK = 40
_MAX_QUERY_BLOCKS = 8


def _blocked_attention(q, k, v, mask, softcap: float, num_blocks: int):
  """`dense_attention` in `num_blocks` query blocks."""
  batch, kv_heads, rows, head_dim = q.shape
  length = k.shape[2]
  groups = rows // length
  num_blocks = max(1, min(num_blocks, length))
  bounds = [length * i // num_blocks for i in range(num_blocks + 1)]
  # --> [batch, kv_heads, groups, T, head_dim]: a block takes its queries of every group.
  q = q.reshape(batch, kv_heads, groups, length, head_dim)
  mixed = []
  for start, end in zip(bounds[:-1], bounds[1:], strict=True):
    block = q[:, :, :, start:end].reshape(batch, kv_heads, groups * (end - start), head_dim)
    scores = jnp.einsum("bkqd,bksd->bkqs", block, k[:, :, :end])
    mixed.append(_softmax_mix(scores, mask[:, start:end, :end], v[:, :, :end], softcap)
                 .reshape(batch, kv_heads, groups, end - start, head_dim))
  return jnp.concatenate(mixed, axis=3).reshape(batch, kv_heads, rows, head_dim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    mask: jax.Array, softcap: float = 0.0) -> jax.Array:
  """Causal softmax attention of whole sequences (no cache).

  The queries go in blocks, each over the keys up to its last query only: a
  causal mask hides the later ones, so part of the score matrix is never
  computed. A forward call goes in one block per `_QUERY_BLOCK` queries (at
  most `_MAX_QUERY_BLOCKS`); a differentiated one in
  `_TRAINING_QUERY_BLOCKS`, forward and backward. Either result is that of
  one block up to the order of float sums.

  Args:
    q: float [batch, kv_heads, groups * T, head_dim], already scaled.
    k, v: float [batch, kv_heads, T, head_dim].
    mask: bool [batch, T, T], causal: no query attends a later key.
    softcap: soft cap of the scores (`soft_cap`); 0 is off.

  Returns:
    float [batch, kv_heads, groups * T, head_dim].
  """
  length = k.shape[2]
  return _blocked_attention(q, k, v, mask, softcap,
                            min(_MAX_QUERY_BLOCKS, length // _QUERY_BLOCK))


def _dense_attention_forward(q, k, v, mask, softcap):
  """(the output, its backward) in `_TRAINING_QUERY_BLOCKS` blocks."""
  return jax.vjp(
      lambda q, k, v: _blocked_attention(q, k, v, mask, softcap, _TRAINING_QUERY_BLOCKS),
      q, k, v)


def _dense_attention_backward(softcap, backward, gradient):
  del softcap  # a static argument of the forward, closed over by `backward`
  # The mask is boolean: no gradient.
  return (*backward(gradient), None)


dense_attention.defvjp(_dense_attention_forward, _dense_attention_backward)


def cached_attention(q: jax.Array, keys_t: jax.Array, values: jax.Array,
                     mask: jax.Array, softcap: float = 0.0) -> jax.Array:
  """Attention of new tokens over a KV cache.

  Decoding is bound by reading the cache. On the XLA CPU backend the two
  contractions read it fastest when neither reduces over the minor axis:
  scores reduce over head_dim, so keys are stored `[..., head_dim, slots]`;
  the weighted sum reduces over slots, so values stay `[..., slots, head_dim]`.

  Args:
    q: float [batch, kv_heads, groups * T, head_dim], already scaled.
    keys_t: float [batch, kv_heads, head_dim, S].
    values: float [batch, kv_heads, S, head_dim].
    mask: bool [batch, T, S].
    softcap: soft cap of the scores (`soft_cap`); 0 is off.

  Returns:
    float [batch, kv_heads, groups * T, head_dim].
  """
  return _softmax_mix(jnp.einsum("bkqd,bkds->bkqs", q, keys_t), mask, values,
                      softcap)


def prefix_attention(q: jax.Array, keys_t: jax.Array, values: jax.Array, mask: jax.Array,
                     prefix_keys_t: jax.Array, prefix_values: jax.Array,
                     prefix_mask: jax.Array, softcap: float) -> jax.Array:
  """`cached_attention` of rows that first read a context shared by their group.

  Rows come in groups of `copies` consecutive rows (`kv_cache.SharedPrefix`).
  A group's queries meet its context's keys in one matrix product, so the
  context is read once per group; one softmax runs over the context's slots
  and the row's own.

  Args:
    q: float [batch, kv_heads, groups * T, head_dim], already scaled.
    keys_t, values, mask: the rows' own cache and mask, as `cached_attention`.
    prefix_keys_t: float [row groups, kv_heads, head_dim, W].
    prefix_values: float [row groups, kv_heads, W, head_dim].
    prefix_mask: bool [batch, T, W].
    softcap: soft cap of the scores (`soft_cap`); 0 is off.

  Returns:
    float [batch, kv_heads, groups * T, head_dim].
  """
  batch, kv_heads, queries, _ = q.shape
  row_groups, width = prefix_keys_t.shape[0], prefix_keys_t.shape[-1]
  copies = batch // row_groups

  def by_group(x):  # [batch, kv_heads, queries, n] -> [row groups, kv_heads, copies * queries, n]
    x = x.reshape(row_groups, copies, kv_heads, queries, x.shape[-1])
    return x.transpose(0, 2, 1, 3, 4).reshape(row_groups, kv_heads, copies * queries,
                                              x.shape[-1])

  def by_row(x):  # the inverse of by_group
    x = x.reshape(row_groups, kv_heads, copies, queries, x.shape[-1])
    return x.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, queries, x.shape[-1])

  prefix_scores = by_row(jnp.einsum("gkqd,gkds->gkqs", by_group(q), prefix_keys_t))
  own_scores = jnp.einsum("bkqd,bkds->bkqs", q, keys_t)
  weights = _masked_weights(jnp.concatenate([prefix_scores, own_scores], axis=-1),
                            jnp.concatenate([prefix_mask, mask], axis=-1), softcap,
                            values.dtype)
  own = jnp.einsum("bkqs,bksd->bkqd", weights[..., width:], values)
  shared = jnp.einsum("gkqs,gksd->gkqd", by_group(weights[..., :width]), prefix_values)
  return own + by_row(shared)


class Attention(nnx.Module):
  """Self-attention of one layer; `local` layers read a sliding window."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, local: bool = False):
    d, h, k, hd = (config.embed_dim, config.num_heads, config.num_kv_heads,
                   config.head_dim)
    dtype = config.param_dtype
    self.query = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dtype=dtype)
    self.key = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), dtype=dtype)
    self.value = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), dtype=dtype)
    self.out = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"),
                      scale=(h * hd) ** -0.5, dtype=dtype)
    if config.qkv_bias:
      self.query_bias = nnx.Param(jnp.zeros((h, hd), dtype),
                                  logical_axes=("heads", "head_dim"))
      self.key_bias = nnx.Param(jnp.zeros((k, hd), dtype),
                                logical_axes=("kv_heads", "head_dim"))
      self.value_bias = nnx.Param(jnp.zeros((k, hd), dtype),
                                  logical_axes=("kv_heads", "head_dim"))
    if config.qk_norm:
      self.query_norm = RMSNorm(hd, eps=config.norm_eps,
                                scale_offset=config.norm_scale_offset,
                                axis_name="head_dim", dtype=dtype)
      self.key_norm = RMSNorm(hd, eps=config.norm_eps,
                              scale_offset=config.norm_scale_offset,
                              axis_name="head_dim", dtype=dtype)
    self.config = config
    self.local = local
    # Local layers have their own base (Gemma 3) and no rope scaling.
    self.rope_base = (config.rope_local_base or config.rope_base) if local else (
        config.rope_base)

  def __call__(self, x, positions, attention_mask, cached_kv=None,
               write_index=None, prefix=None):
    """Self-attention.

    Args:
      x: float [batch, T, embed].
      positions: int32 [batch, T].
      attention_mask: bool [batch, T, S]; S = T without a cache, max_slots with
        (the sliding window's mask in a local layer).
      cached_kv: None, or the layer's cache (keys [batch, kv_heads, head_dim,
        max_slots], values [batch, kv_heads, max_slots, head_dim]) into which
        this call's keys and values are written at slot `write_index`.
      write_index: int32 [] slot of the first token of this call.
      prefix: None, or (keys [row groups, kv_heads, head_dim, W], values
        [row groups, kv_heads, W, head_dim], mask bool [batch, T, W]): the
        shared context every row reads before its cache (`prefix_attention`).

    Returns:
      (output [batch, T, embed], updated (keys, values) or None).
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    q = jnp.einsum("btd,dhk->bthk", x, self.query[...].astype(dtype))
    k = jnp.einsum("btd,dhk->bthk", x, self.key[...].astype(dtype))
    v = jnp.einsum("btd,dhk->bthk", x, self.value[...].astype(dtype))
    if cfg.qkv_bias:
      q = q + self.query_bias[...].astype(dtype)
      k = k + self.key_bias[...].astype(dtype)
      v = v + self.value_bias[...].astype(dtype)
    if cfg.qk_norm:
      q = self.query_norm(q)
      k = self.key_norm(k)
    frequency_scale = None if self.local else rope_frequency_scale(cfg, cfg.head_dim)
    q = apply_rope(q, positions, self.rope_base, frequency_scale)
    k = apply_rope(k, positions, self.rope_base, frequency_scale)
    q = parallel.constrain(q, ("batch", "length", "heads", "head_dim"))
    batch, length = x.shape[:2]
    groups = cfg.num_heads // cfg.num_kv_heads
    # --> [batch, kv_heads, T, head_dim]: heads-major, like the cache.
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    # --> [batch, kv_heads, groups * T, head_dim]: query heads grouped per kv head.
    q = q.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
    q = q.transpose(0, 2, 3, 1, 4).reshape(
        batch, cfg.num_kv_heads, groups * length, cfg.head_dim)
    q = q * (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
    if cached_kv is None:
      mixed = dense_attention(q, k, v, attention_mask, cfg.attn_logit_softcap)
    else:
      # Keys are cached transposed, [batch, kv_heads, head_dim, slots]: see
      # `cached_attention`.
      k = jax.lax.dynamic_update_slice(
          cached_kv[0], k.transpose(0, 1, 3, 2), (0, 0, 0, write_index))
      v = jax.lax.dynamic_update_slice(cached_kv[1], v, (0, 0, write_index, 0))
      cached_kv = (k, v)
      if prefix is None:
        mixed = cached_attention(q, k, v, attention_mask, cfg.attn_logit_softcap)
      else:
        mixed = prefix_attention(q, k, v, attention_mask, *prefix, cfg.attn_logit_softcap)
    # --> [batch, T, heads, head_dim]
    mixed = mixed.reshape(batch, cfg.num_kv_heads, groups, length, cfg.head_dim)
    mixed = mixed.transpose(0, 3, 1, 2, 4).reshape(
        batch, length, cfg.num_heads, cfg.head_dim)
    return jnp.einsum("bthk,hkd->btd", mixed, self.out[...].astype(dtype)), cached_kv


class GatedMLP(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, m = config.embed_dim, config.mlp_dim
    self.gate = _param(rngs, (d, m), ("embed", "mlp"), dtype=config.param_dtype)
    self.up = _param(rngs, (d, m), ("embed", "mlp"), dtype=config.param_dtype)
    self.down = _param(rngs, (m, d), ("mlp", "embed"), dtype=config.param_dtype)
    self.activation = getattr(jax.nn, config.activation)
    self.dtype = config.compute_dtype

  def __call__(self, x):
    gate, up = self.gate[...].astype(self.dtype), self.up[...].astype(self.dtype)
    hidden = self.activation(x @ gate) * (x @ up)
    hidden = parallel.constrain(hidden, ("batch", "length", "mlp"))
    return hidden @ self.down[...].astype(self.dtype)


def _norm(config: ModelConfig) -> RMSNorm:
  return RMSNorm(config.embed_dim, eps=config.norm_eps,
                 scale_offset=config.norm_scale_offset, dtype=config.param_dtype)


class Block(nnx.Module):
  """Pre-norm attention and MLP, each added to the residual stream; with
  `post_norms`, their outputs are normed again before the add (Gemma 2/3)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, local: bool = False):
    self.attention_norm = _norm(config)
    self.attention = Attention(config, rngs, local=local)
    self.mlp_norm = _norm(config)
    self.mlp = GatedMLP(config, rngs)
    if config.post_norms:
      self.post_attention_norm = _norm(config)
      self.post_mlp_norm = _norm(config)
    self.post_norms = config.post_norms
    self.local = local
    self.dropout_rate = config.dropout_rate

  def __call__(self, x, positions, masks, cached_kv, write_index, dropout_rng,
               prefix=None):
    """One block: x float [batch, T, embed] -> the same, and the layer's cache.

    `masks` is (global mask, sliding-window mask or None), bool [batch, T, S]
    each; a local block reads the second. `prefix`: None, or the layer's
    shared context (keys, values) and its masks, (global, sliding-window).
    """
    rngs = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    if prefix is not None:
      keys, values, prefix_masks = prefix
      prefix = (keys, values, prefix_masks[1] if self.local else prefix_masks[0])
    attended, cached_kv = self.attention(
        self.attention_norm(x), positions, masks[1] if self.local else masks[0],
        cached_kv, write_index, prefix)
    if self.post_norms:
      attended = self.post_attention_norm(attended)
    x = x + _dropout(attended, self.dropout_rate, rngs[0])
    mlp_out = self.mlp(self.mlp_norm(x))
    if self.post_norms:
      mlp_out = self.post_mlp_norm(mlp_out)
    x = x + _dropout(mlp_out, self.dropout_rate, rngs[1])
    return parallel.constrain(x, ("batch", "length", "embed")), cached_kv


def _window_mask(mask: jax.Array, query_positions: jax.Array,
                 key_positions: jax.Array, window: int) -> jax.Array:
  """`mask` [batch, T, S] and keys less than `window` positions back.

  Positions, not slots or indices: a row's tokens may sit in slots with gaps
  (the cache's shared slots), while its positions count its own tokens, as in
  training (where they restart in every packed segment).
  """
  distance = query_positions[:, :, None] - key_positions[:, None, :]
  return mask & (distance < window)


class Decoder(nnx.Module):
  """Token embedding, `num_layers` blocks and a final norm: hidden states."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.embedding = _param(rngs, (config.vocab_size, config.embed_dim),
                            ("vocab", "embed"), dtype=config.param_dtype)
    self.blocks = nnx.List([Block(config, rngs, local=config.is_local_layer(layer))
                            for layer in range(config.num_layers)])
    self.final_norm = _norm(config)

  def _run(self, tokens, positions, masks, cache_kv, write_index, dropout_rng,
           prefix=None):
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.config.compute_dtype)
    if self.config.scale_embeddings:
      # In the activation dtype, as Gemma's `Embedder.encode` does.
      x = x * jnp.asarray(self.config.embed_dim ** 0.5, x.dtype)
    x = parallel.constrain(x, ("batch", "length", "embed"))
    new_keys, new_values = [], []
    for layer, block in enumerate(self.blocks):
      layer_rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, layer)
      kv = None if cache_kv is None else (cache_kv[0][layer], cache_kv[1][layer])
      layer_prefix = None if prefix is None else (
          prefix[0][layer], prefix[1][layer], prefix[2])
      x, kv = block(x, positions, masks, kv, write_index, layer_rng, layer_prefix)
      if kv is not None:
        new_keys.append(kv[0])
        new_values.append(kv[1])
    return self.final_norm(x), (tuple(new_keys), tuple(new_values))

  def forward(self, tokens: jax.Array, positions: jax.Array,
              segment_ids: jax.Array | None = None,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    """Hidden states of whole sequences, float [batch, T, embed].

    Args:
      tokens: int32 [batch, T].
      positions: int32 [batch, T] (restart at 0 in each packed segment).
      segment_ids: int32 [batch, T]; tokens attend only within their segment;
        None means one segment per row.
      dropout_rng: a PRNG key to enable dropout (training), else None.
    """
    length = tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))[None]
    if segment_ids is None:
      mask = jnp.broadcast_to(causal, (tokens.shape[0], length, length))
    else:
      mask = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
    local_mask = None
    if self.config.sliding_window:
      local_mask = _window_mask(mask, positions, positions, self.config.sliding_window)
    hidden, _ = self._run(tokens, positions, (mask, local_mask), None, None,
                          dropout_rng)
    return hidden

  def extend(self, tokens: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Appends tokens to `cache`; returns hidden [batch, T, embed] and the cache.

    Args:
      tokens: int32 [batch, T].
      token_valid: bool [batch, T]; False marks padding (not appended).
      cache: the cache to extend; it must have T free slots.
    """
    positions, slot_valid, mask, next_position = append_layout(cache, token_valid)
    window = self.config.sliding_window
    own_positions = slot_positions(slot_valid) if window else None
    prefix = None
    if cache.prefix is not None:
      rows = cache.prefix.rows(cache.batch_size)
      context_valid = cache.prefix.slot_valid[rows]                    # [batch, W]
      prefix_mask = jnp.broadcast_to(context_valid[:, None, :],
                                     (*tokens.shape, context_valid.shape[1]))
      prefix_local = None
      if window:
        prefix_local = _window_mask(prefix_mask, positions, cache.prefix.positions()[rows],
                                    window)
        # A row's own tokens come after its context's.
        own_positions = own_positions + context_valid.sum(axis=1, dtype=jnp.int32)[:, None]
      prefix = (cache.prefix.keys, cache.prefix.values, (prefix_mask, prefix_local))
    local_mask = _window_mask(mask, positions, own_positions, window) if window else None
    hidden, (keys, values) = self._run(
        tokens, positions, (mask, local_mask), (cache.keys, cache.values),
        cache.write_index, None, prefix)
    cache = cache.replace(
        keys=keys, values=values, slot_valid=slot_valid,
        next_position=next_position,
        write_index=cache.write_index + tokens.shape[1])
    return hidden, cache


class LanguageModel(nnx.Module):
  """The policy: decoder trunk + LM head (tied to the embedding by default)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.decoder = Decoder(config, rngs)
    if not config.tie_embeddings:
      self.lm_head = _param(rngs, (config.embed_dim, config.vocab_size),
                            ("embed", "vocab"), dtype=config.param_dtype)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Next-token logits [..., vocab], float32, of hidden states [..., embed]."""
    dtype = self.config.compute_dtype
    if self.config.tie_embeddings:
      logits = hidden @ self.decoder.embedding[...].T.astype(dtype)
    else:
      logits = hidden @ self.lm_head[...].astype(dtype)
    return soft_cap(logits.astype(jnp.float32), self.config.final_logit_softcap)

  def __call__(self, tokens, positions, segment_ids=None, dropout_rng=None):
    """Next-token logits of whole sequences, float [batch, T, vocab]."""
    return self.logits(self.decoder.forward(tokens, positions, segment_ids,
                                            dropout_rng))

  def extend(self, tokens, token_valid, cache):
    """Next-token logits [batch, T, vocab] of appended tokens, and the cache."""
    hidden, cache = self.decoder.extend(tokens, token_valid, cache)
    return self.logits(hidden), cache
