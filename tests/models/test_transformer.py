"""Tests of the decoder: cached decoding, packing, and the config's arithmetic.

The reference route everywhere is `LanguageModel.__call__` on whole
sequences; the cached route (`extend`) must reproduce its logits whatever the
row lengths, padding and gaps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale import testing
from ttscale.models import (
  LanguageModel,
  ModelConfig,
  init_cache,
  policy_extend_fn,
  policy_forward_fn,
)
from ttscale.models.kv_cache import continue_shared
from ttscale.models.transformer import RMSNorm, _softmax_mix, dense_attention, soft_cap

BATCH = 3
GAP = 64       # rows that wait two whole attention blocks of the cache
MAX_SLOTS = 4 + GAP + 8
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@functools.cache
def _model_fns():
  """Jitted (extend, forward) of the tiny policy, shared by every test here."""
  graphdef, _, _ = testing.tiny_policy()
  return jax.jit(policy_extend_fn(graphdef)), jax.jit(policy_forward_fn(graphdef))


def _params():
  return testing.tiny_policy()[1]


def _full_logits(tokens: np.ndarray, segment_ids: np.ndarray | None = None,
                 positions: np.ndarray | None = None) -> np.ndarray:
  """Logits [batch, T, vocab] of whole rows (positions 0.. unless given)."""
  _, forward = _model_fns()
  if positions is None:
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  if segment_ids is None:
    segment_ids = np.ones(tokens.shape, np.int32)
  return np.asarray(forward(_params(), jnp.asarray(tokens, jnp.int32),
                            jnp.asarray(positions, jnp.int32),
                            jnp.asarray(segment_ids, jnp.int32)))


def _random_tokens(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).integers(
      0, testing.TINY_CONFIG.vocab_size, shape).astype(np.int32)


def _decode(sequences: np.ndarray, prefix_lengths, lengths, gap: int = 0):
  """Runs rows through the cache: a prefill, `gap` empty steps, then 1 token a step.

  Row b prefills its first `prefix_lengths[b]` tokens (right-padded inside a
  width-4 block), then appends `sequences[b, t]` for t < `lengths[b]`, one per
  call; a row that has run out appends padding.

  Returns:
    {(row, t): logits [vocab]} the next-token logits after token t of each row.
  """
  extend, _ = _model_fns()
  params = _params()
  cache = init_cache(testing.TINY_CONFIG, BATCH, MAX_SLOTS)
  width = 4
  prefill_valid = np.arange(width)[None, :] < np.asarray(prefix_lengths)[:, None]
  prefill_tokens = np.where(prefill_valid, sequences[:, :width], 0)
  logits, cache = extend(params, jnp.asarray(prefill_tokens),
                         jnp.asarray(prefill_valid), cache)
  logits = np.asarray(logits)
  found = {(row, t): logits[row, t]
           for row in range(BATCH) for t in range(prefix_lengths[row])}
  idle = jnp.zeros((BATCH, 1), bool)
  for _ in range(gap):
    _, cache = extend(params, jnp.zeros((BATCH, 1), jnp.int32), idle, cache)
  steps = max(n - p for n, p in zip(lengths, prefix_lengths, strict=True))
  for step in range(steps):
    t = np.asarray(prefix_lengths) + step
    valid = t < np.asarray(lengths)
    t = np.minimum(t, np.asarray(lengths) - 1)  # a finished row: any token, masked.
    tokens = np.where(valid, sequences[np.arange(BATCH), t], 0)
    logits, cache = extend(params, jnp.asarray(tokens[:, None]),
                           jnp.asarray(valid[:, None]), cache)
    logits = np.asarray(logits)
    for row in np.flatnonzero(valid):
      found[(row, t[row])] = logits[row, 0]
  return found


def test_cached_decode_of_ragged_rows_equals_the_full_forward_pass():
  sequences = _random_tokens(0, (BATCH, 8))
  lengths = (8, 6, 5)
  prefix_lengths = (4, 1, 3)  # rows decode 4, 5 and 2 tokens one at a time.
  expected = _full_logits(sequences)
  found = _decode(sequences, prefix_lengths, lengths)
  assert len(found) == sum(lengths)
  for (row, t), logits in found.items():
    np.testing.assert_allclose(logits, expected[row, t], **TOLERANCE,
                               err_msg=f"row {row}, token {t}")


def test_a_gap_of_invalid_slots_does_not_change_the_logits():
  # Invalid slots between a row's prefix and its new tokens, or (row 1, whose
  # prefix is empty) before any of its keys.
  sequences = _random_tokens(1, (BATCH, 8))
  lengths = (7, 5, 6)
  prefix_lengths = (4, 0, 3)
  without_gap = _decode(sequences, prefix_lengths, lengths)
  with_gap = _decode(sequences, prefix_lengths, lengths, gap=GAP)
  assert with_gap.keys() == without_gap.keys()
  assert len(with_gap) == sum(lengths)
  for key, logits in with_gap.items():
    np.testing.assert_allclose(logits, without_gap[key], **TOLERANCE,
                               err_msg=f"(row, token) = {key}")
  expected = _full_logits(sequences)
  for (row, t), logits in with_gap.items():
    np.testing.assert_allclose(logits, expected[row, t], **TOLERANCE)


def test_packed_segments_do_not_attend_to_each_other():
  first, second = _random_tokens(2, 3), _random_tokens(3, 5)
  padding = np.zeros(3, np.int32)
  tokens = np.stack([np.concatenate([first, second]),      # packed
                     np.concatenate([second, padding]),    # second alone
                     np.concatenate([first, padding, padding[:2]])])  # first alone
  positions = np.array([[0, 1, 2, 0, 1, 2, 3, 4], list(range(8)), list(range(8))])
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2, 2],
                          [1, 1, 1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0, 0, 0]])
  logits = _full_logits(tokens, segment_ids, positions)
  np.testing.assert_allclose(logits[0, 3:], logits[1, :5], **TOLERANCE)
  np.testing.assert_allclose(logits[0, :3], logits[2, :3], **TOLERANCE)
  # The same packed row as one segment: the second sequence now sees the first.
  leaked = _full_logits(tokens, np.ones_like(segment_ids), positions)
  assert not np.allclose(leaked[0, 3:], logits[1, :5], **TOLERANCE)


def test_config_rejects_an_unknown_activation_naming_the_field():
  with pytest.raises(ValueError, match=r"model\.activation='swish'"):
    ModelConfig(vocab_size=16, activation="swish")


def test_config_rejects_heads_not_divisible_by_kv_heads_naming_the_fields():
  with pytest.raises(ValueError, match=r"model\.num_heads=6.*model\.num_kv_heads=4"):
    ModelConfig(vocab_size=16, num_heads=6, num_kv_heads=4)


@pytest.mark.parametrize("num_kv_heads", [0, -2])
def test_config_rejects_non_positive_kv_heads_naming_the_field(num_kv_heads):
  with pytest.raises(ValueError, match=r"model\.num_kv_heads"):
    ModelConfig(vocab_size=16, num_heads=4, num_kv_heads=num_kv_heads)


def test_config_rejects_an_odd_head_dim_naming_the_field():
  with pytest.raises(ValueError, match=r"model\.head_dim=7"):
    ModelConfig(vocab_size=16, num_heads=2, num_kv_heads=2, head_dim=7)


def _built_params(config: ModelConfig) -> dict[str, int]:
  """Parameter counts of the built (abstract) model, by path."""
  model = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
  counts = {}
  for path, leaf in nnx.state(model, nnx.Param).flat_state():
    counts["/".join(map(str, path))] = int(np.prod(leaf.shape))
  return counts


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_num_params_counts_the_built_model(tie_embeddings):
  config = dataclasses.replace(testing.TINY_CONFIG, tie_embeddings=tie_embeddings)
  built = _built_params(config)
  assert config.num_params() == sum(built.values())
  assert any("lm_head" in path for path in built) == (not tie_embeddings)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_flops_per_token_without_context_is_twice_the_matmul_params(tie_embeddings):
  config = dataclasses.replace(testing.TINY_CONFIG, tie_embeddings=tie_embeddings)
  built = _built_params(config)
  # Norm scales are not matmul weights; the embedding lookup is free, but the
  # output projection (the tied embedding, or the untied head) is a matmul.
  matmul_params = sum(size for path, size in built.items()
                      if not path.endswith("scale") and path != "decoder/embedding")
  if tie_embeddings:
    matmul_params += built["decoder/embedding"]
  assert config.flops_per_token(0) == 2 * matmul_params


def test_flops_per_token_grows_by_one_attention_read_per_key():
  config = testing.TINY_CONFIG
  per_key = 4 * config.num_layers * config.num_heads * config.head_dim
  for context in (0, 1, 7, 100):
    assert config.flops_per_token(context + 1) - config.flops_per_token(context) == per_key
  assert config.flops_per_token(100) == config.flops_per_token(0) + 100 * per_key


# --- Architecture options (Gemma's), against the default model on rows of 8 (the
# shape the shared forward is compiled for). ---


@functools.cache
def _forward_of(config: ModelConfig):
  return jax.jit(policy_forward_fn(testing.tiny_policy(config=config)[0]))


def _logits_of(config: ModelConfig, params, tokens: np.ndarray) -> np.ndarray:
  """Whole-row logits of the tiny policy's graph built for `config`, with `params`."""
  forward = _forward_of(config)
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(forward(params, jnp.asarray(tokens), jnp.asarray(positions)))


def _replaced(params, replace):
  """A copy of `params` with each value v at path p replaced by `replace(p, v)`."""
  return nnx.from_flat_state([
      (path, variable.replace(replace(path, variable[...])))
      for path, variable in nnx.to_flat_state(params)])


def test_norm_scale_offset_one_with_zero_centred_scales_equals_offset_zero():
  tokens = _random_tokens(4, (BATCH, 8))
  offset = dataclasses.replace(testing.TINY_CONFIG, norm_scale_offset=1.0)
  np.testing.assert_allclose(
      _logits_of(offset, _replaced(
          _params(), lambda path, v: v - 1.0 if path[-1] == "scale" else v), tokens),
      _full_logits(tokens), **TOLERANCE)
  # Starts as a unit multiplier, like offset 0's ones.
  assert np.all(np.asarray(RMSNorm(4, scale_offset=1.0).scale[...]) == 0.0)


def test_final_softcap_is_tanh_of_uncapped_logits_and_bounds_them():
  tokens = _random_tokens(5, (BATCH, 8))
  capped = dataclasses.replace(testing.TINY_CONFIG, final_logit_softcap=2.0)
  logits = _logits_of(capped, _params(), tokens)
  np.testing.assert_allclose(logits, 2.0 * np.tanh(_full_logits(tokens) / 2.0),
                             **TOLERANCE)
  assert np.abs(logits).max() < 2.0


def test_attention_softcap_changes_logits_and_cached_decode_still_matches():
  config = dataclasses.replace(testing.TINY_CONFIG, attn_logit_softcap=0.5)
  tokens = _random_tokens(6, (BATCH, 8))
  expected = _logits_of(config, _params(), tokens)
  assert not np.allclose(expected, _full_logits(tokens), **TOLERANCE)
  # Two appends of 4 tokens: the second attends to cached, capped keys; one shape,
  # one compilation.
  extend = jax.jit(policy_extend_fn(testing.tiny_policy(config=config)[0]))
  cache = init_cache(config, BATCH, max_slots=8)
  for start in (0, 4):
    logits, cache = extend(_params(), jnp.asarray(tokens[:, start:start + 4]),
                           jnp.ones((BATCH, 4), bool), cache)
    np.testing.assert_allclose(np.asarray(logits), expected[:, start:start + 4],
                               **TOLERANCE)


def test_scale_embeddings_equals_an_embedding_table_times_sqrt_embed_dim():
  # Untied head, so that only the input side reads the table.
  tokens = _random_tokens(7, (BATCH, 8))
  scale = testing.TINY_CONFIG.embed_dim ** 0.5
  scaled_table = _replaced(
      _params(), lambda path, v: v * scale if path == ("decoder", "embedding") else v)
  scaled = dataclasses.replace(testing.TINY_CONFIG, scale_embeddings=True)
  _, forward = _model_fns()
  positions = np.broadcast_to(np.arange(8), tokens.shape)
  expected = forward(scaled_table, jnp.asarray(tokens), jnp.asarray(positions),
                     jnp.ones(tokens.shape, jnp.int32))
  np.testing.assert_allclose(_logits_of(scaled, _params(), tokens), np.asarray(expected),
                             **TOLERANCE)


@pytest.mark.parametrize("field, value", [("norm_eps", 0.0), ("attn_logit_softcap", -1.0),
                                          ("final_logit_softcap", float("inf")),
                                          ("norm_scale_offset", float("nan"))])
def test_config_rejects_bad_architecture_options_naming_the_field(field, value):
  with pytest.raises(ValueError, match=rf"model\.{field}="):
    ModelConfig(vocab_size=16, **{field: value})


@pytest.mark.parametrize("softcap", [0.0, 3.0])
def test_blocked_causal_attention_and_its_gradient_equal_one_block_over_every_key(softcap):
  """Fails if a query block drops a key it may attend or misplaces a group's
  rows, forward (200 tokens: five blocks) or differentiated (its own two
  blocks): two query groups per kv head, packed segments."""
  batch, kv_heads, groups, length, head_dim = 2, 2, 2, 200, 8
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (batch, kv_heads, groups * length, head_dim))
  k = jax.random.normal(keys[1], (batch, kv_heads, length, head_dim))
  v = jax.random.normal(keys[2], (batch, kv_heads, length, head_dim))
  weights = jax.random.normal(keys[3], q.shape)
  segments = jnp.asarray(np.repeat([[1, 2], [1, 1]], [77, 123], axis=1))
  mask = (jnp.tril(jnp.ones((length, length), bool))[None]
          & (segments[:, :, None] == segments[:, None, :]))

  def one_block(q, k, v):
    return _softmax_mix(soft_cap(jnp.einsum("bkqd,bksd->bkqs", q, k), softcap), mask, v, 0.0)

  np.testing.assert_allclose(dense_attention(q, k, v, mask, softcap), one_block(q, k, v),
                             atol=1e-5)
  gradients = jax.grad(lambda *qkv: (dense_attention(*qkv, mask, softcap) * weights).sum(),
                       argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(lambda *qkv: (one_block(*qkv) * weights).sum(), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(gradients, expected, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-4)


# Every option of the released families at once (Gemma 3's layout, Qwen's
# biases, Llama 3's rope scaling): a window of 3 with a global layer every 2.
ALL_OPTIONS = dataclasses.replace(
    testing.TINY_CONFIG, num_layers=4, qkv_bias=True, qk_norm=True, post_norms=True,
    query_pre_attn_scalar=20.0, sliding_window=3, sliding_window_pattern=2,
    rope_base=100.0, rope_local_base=30.0, rope_scaling="llama3",
    rope_scaling_factor=4.0, rope_original_context=16, norm_scale_offset=1.0,
    attn_logit_softcap=5.0, final_logit_softcap=8.0, scale_embeddings=True)


def _random_biases(params):
  # Built biases start at 0; random ones show a bias read in the wrong place.
  rng = np.random.default_rng(0)
  return _replaced(params, lambda path, v: (
      jnp.asarray(rng.normal(size=v.shape), v.dtype) if path[-1].endswith("_bias") else v))


def test_all_options_count_their_params_and_only_local_layers_are_local():
  assert ALL_OPTIONS.num_params() == sum(_built_params(ALL_OPTIONS).values())
  assert [ALL_OPTIONS.is_local_layer(i) for i in range(4)] == [True, False, True, False]
  assert not testing.TINY_CONFIG.is_local_layer(0)


def test_sliding_window_cached_decode_with_gaps_equals_the_full_forward_pass():
  # Rows of different lengths with idle steps between their tokens: slots and
  # positions part ways, and the window must follow positions.
  params = _random_biases(testing.tiny_policy(config=ALL_OPTIONS)[1])
  extend = jax.jit(policy_extend_fn(testing.tiny_policy(config=ALL_OPTIONS)[0]))
  tokens = _random_tokens(8, (BATCH, 9))
  lengths = np.array([9, 6, 8])
  expected = _logits_of(ALL_OPTIONS, params, tokens)
  cache = init_cache(ALL_OPTIONS, BATCH, max_slots=32)
  written = np.zeros(BATCH, int)
  step = 0
  while (written < lengths).any():
    # Row r is idle at every step divisible by r + 2 (row 0 every other step).
    valid = (written < lengths) & (step % (np.arange(BATCH) + 2) != 0)
    column = np.minimum(written, 8)
    logits, cache = extend(params, jnp.asarray(tokens[np.arange(BATCH), column][:, None]),
                           jnp.asarray(valid[:, None]), cache)
    for row in np.flatnonzero(valid):
      np.testing.assert_allclose(np.asarray(logits)[row, 0], expected[row, written[row]],
                                 **TOLERANCE, err_msg=f"row {row}, token {written[row]}")
    written += valid
    step += 1
  assert step > 9  # the gaps were there


@pytest.mark.parametrize("options", [False, True], ids=["tiny", "all_options"])
def test_rows_that_share_a_prefix_decode_the_logits_of_the_full_forward_pass(options):
  # Two contexts of different lengths, each continued in 3 rows of their own
  # tokens, rows idle at different steps: every logit as if each row held its
  # whole sequence (GQA; with all options also the window across the prefix).
  config = ALL_OPTIONS if options else testing.TINY_CONFIG
  graphdef, params, _ = testing.tiny_policy(config=config)
  if options:
    params = _random_biases(params)
  extend = jax.jit(policy_extend_fn(graphdef))
  groups, copies, width, own = 2, 3, 6, 5
  context_lengths = np.array([6, 4])
  contexts = _random_tokens(10, (groups, width))
  continuations = _random_tokens(11, (groups * copies, own))
  # Left-padded contexts: the last `length` columns are real.
  context_valid = np.arange(width)[None, :] >= width - context_lengths[:, None]
  _, context = extend(params, jnp.asarray(contexts), jnp.asarray(context_valid),
                       init_cache(config, groups, width))
  cache = continue_shared(context, copies, max_slots=2 * own)
  rows = np.repeat(np.arange(groups), copies)
  # Each row's whole sequence; its logit after own token t is at length + t.
  expected = [_logits_of(config, params, np.concatenate([
      contexts[rows[row], width - context_lengths[rows[row]]:], continuations[row]])[None])[0]
      for row in range(len(rows))]
  written = np.zeros(groups * copies, int)
  step = 0
  while (written < own).any():
    valid = (written < own) & (step % (np.arange(groups * copies) % 3 + 2) != 0)
    column = np.minimum(written, own - 1)
    appended = continuations[np.arange(len(rows)), column][:, None]
    logits, cache = extend(params, jnp.asarray(appended), jnp.asarray(valid[:, None]), cache)
    for row in np.flatnonzero(valid):
      np.testing.assert_allclose(
          np.asarray(logits)[row, 0],
          expected[row][context_lengths[rows[row]] + written[row]], **TOLERANCE,
          err_msg=f"row {row}, token {written[row]}")
    written += valid
    step += 1
  assert step > own  # the gaps were there


def test_a_cache_continues_one_shared_prefix_only():
  context = continue_shared(init_cache(testing.TINY_CONFIG, 2, 4), 2, 3)
  with pytest.raises(ValueError, match="already continues a shared prefix"):
    continue_shared(context, 2, 3)


def test_a_window_shorter_than_the_context_changes_the_logits():
  params = _random_biases(testing.tiny_policy(config=ALL_OPTIONS)[1])
  tokens = _random_tokens(9, (BATCH, 8))
  windowed = _logits_of(ALL_OPTIONS, params, tokens)
  wide = _logits_of(dataclasses.replace(ALL_OPTIONS, sliding_window=8), params, tokens)
  # Within the window (tokens 0..2) nothing differs; past it the local layers
  # read fewer keys.
  np.testing.assert_allclose(windowed[:, :3], wide[:, :3], **TOLERANCE)
  assert not np.allclose(windowed[:, 3:], wide[:, 3:], **TOLERANCE)


@pytest.mark.parametrize("field, value", [
    ("sliding_window", -1), ("rope_scaling", "yarn"), ("rope_scaling_factor", 0.0),
    ("query_pre_attn_scalar", -2.0), ("qk_norm", 1), ("rope_original_context", 0)])
def test_config_rejects_bad_released_family_options_naming_the_field(field, value):
  with pytest.raises(ValueError, match=rf"model\.{field}="):
    ModelConfig(vocab_size=16, **{field: value})


def test_a_window_needs_a_layer_pattern():
  with pytest.raises(ValueError, match=r"model\.sliding_window_pattern=0"):
    ModelConfig(vocab_size=16, sliding_window=4)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bfloat16_compute_runs_forward_and_sampling_close_to_float32(param_dtype):
  from ttscale.search import sampling

  config = dataclasses.replace(ALL_OPTIONS, compute_dtype="bfloat16",
                               param_dtype=param_dtype)
  graphdef, params, _ = testing.tiny_policy(config=config)
  f32_params = _random_biases(testing.tiny_policy(config=ALL_OPTIONS)[1])
  params = jax.tree.map(lambda x: x.astype(param_dtype), f32_params)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
  tokens = _random_tokens(10, (BATCH, 8))
  expected = _logits_of(ALL_OPTIONS, f32_params, tokens)
  logits = _logits_of(config, params, tokens)
  assert logits.dtype == np.float32
  # bfloat16 keeps 8 bits of mantissa: differences of a few hundredths.
  np.testing.assert_allclose(logits, expected, atol=0.25)
  assert not np.array_equal(logits, expected)

  cache = init_cache(config, BATCH, max_slots=8 + 16)
  assert cache.keys[0].dtype == jnp.bfloat16
  extend_fn = policy_extend_fn(graphdef)
  sampler_config = sampling.SamplerConfig(
      rule=sampling.SamplingRule(temperature=1.0), stop_at=sampling.StopAt.SOLUTION,
      max_new_tokens=16, step_id=-1, eos_id=-1)

  @jax.jit
  def sample(params, prompts):
    filled, pending = sampling.prefill(extend_fn, params, cache, prompts,
                                       jnp.full((BATCH,), 8))
    return sampling.sample(extend_fn, params, filled, pending, jnp.ones((BATCH,), bool),
                           jax.random.key(0), sampler_config)

  out = sample(params, jnp.asarray(tokens))
  assert out.cache.keys[0].dtype == jnp.bfloat16
  assert (np.asarray(out.lengths) == 16).all()
  assert np.isfinite(np.asarray(out.logprobs)).all()
