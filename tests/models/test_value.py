"""The verifier network: initialised from the policy, scored whole or step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttscale.models import LanguageModel, ModelConfig, init_cache
from ttscale.models.value import (
    ValueModel,
    init_from_policy,
    last_token_logits,
    step_end_scores,
)

CONFIG = ModelConfig(vocab_size=16, num_layers=2, embed_dim=32, num_heads=4,
                     num_kv_heads=2, head_dim=8, mlp_dim=64)


def _random_like(abstract, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype), abstract)


@pytest.fixture(scope="module")
def models():
  _, policy_abstract = nnx.split(nnx.eval_shape(lambda: LanguageModel(CONFIG, rngs=nnx.Rngs(0))))
  graphdef, value_abstract = nnx.split(nnx.eval_shape(lambda: ValueModel(CONFIG, rngs=nnx.Rngs(0))))
  # Random values everywhere (head included), so equalities below are not 0 == 0.
  return graphdef, _random_like(value_abstract, 1), _random_like(policy_abstract, 2)


def test_init_from_policy_copies_the_trunk_and_keeps_the_head(models):
  _, value_params, policy_params = models
  before = nnx.to_pure_dict(value_params)
  combined = nnx.to_pure_dict(init_from_policy(value_params, policy_params))
  policy_trunk = nnx.to_pure_dict(policy_params)["decoder"]
  jax.tree.map(np.testing.assert_array_equal, combined["decoder"], policy_trunk)
  np.testing.assert_array_equal(combined["head"], before["head"])
  # The input is not modified.
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(value_params), before)


def test_init_from_policy_of_another_shape_is_refused(models):
  _, value_params, _ = models
  other = ModelConfig(**{**CONFIG.__dict__, "mlp_dim": 32})
  _, other_policy = nnx.split(nnx.eval_shape(lambda: LanguageModel(other, rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError, match="differ in shape"):
    init_from_policy(value_params, other_policy)


def test_a_step_appended_to_the_cache_scores_like_the_whole_prefix(models):
  graphdef, value_params, _ = models
  model = nnx.merge(graphdef, value_params)
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(0, CONFIG.vocab_size, size=(2, 9)), jnp.int32)
  full = model(tokens, jnp.tile(jnp.arange(9), (2, 1)))          # [2, 9]
  # Prefix of 5 tokens, then a "step" of 4 (row 0) or 2 (row 1) tokens.
  cache = init_cache(CONFIG, 2, 16)
  _, cache = model.extend(tokens[:, :5], jnp.ones((2, 5), bool), cache)
  step_valid = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  step_logits, _ = model.extend(tokens[:, 5:], step_valid, cache)
  found = last_token_logits(step_logits, step_valid)
  np.testing.assert_allclose(found, [full[0, 8], full[1, 6]], atol=1e-5)


def test_step_end_scores_read_each_step_end_and_zero_the_padding():
  logits = jnp.array([[0.0, 2.0, -1.0, 3.0]])
  scores = step_end_scores(logits, jnp.array([[1, 3, 0]]), jnp.array([[True, True, False]]))
  np.testing.assert_allclose(scores, [[jax.nn.sigmoid(2.0), jax.nn.sigmoid(3.0), 0.0]],
                             rtol=1e-6)


STEP, EOS = 4, 3


@pytest.fixture(scope="module")
def likelihood_model(models):
  """A verifier reading its trunk's step likelihood, the trunk a random LM's."""
  _, _, policy_params = models
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: ValueModel(CONFIG, rngs=nnx.Rngs(0), step_likelihood=(STEP, EOS))))
  params = init_from_policy(_random_like(abstract, 6), policy_params)
  return nnx.merge(graphdef, params), nnx.merge(
      nnx.split(nnx.eval_shape(lambda: LanguageModel(CONFIG, rngs=nnx.Rngs(0))))[0],
      policy_params)


def test_step_likelihood_features_are_the_steps_token_log_probs(likelihood_model):
  """Fails if the features are not the sum and min of the policy's log-probs
  of each step's tokens after its first, restarting at every step end."""
  model, policy = likelihood_model
  tokens = jnp.asarray([[2, 7, STEP, 9, 10, 11, STEP, 12, 13, EOS]], jnp.int32)
  positions = jnp.arange(tokens.shape[1])[None]
  features = model._step_likelihood(model.decoder.forward(tokens, positions), tokens,
                                    jnp.ones(tokens.shape, bool))
  logprobs = jax.nn.log_softmax(policy(tokens, positions)[0])
  token_logprob = [float(logprobs[t - 1, tokens[0, t]]) for t in range(1, 10)]
  # Steps: [9, 10, 11, STEP] (positions 3..6) and [12, 13, EOS] (7..9); the
  # first token of each (9, 12) is not counted.
  first = token_logprob[3:6]   # tokens at positions 4, 5, 6
  second = token_logprob[7:9]  # positions 8, 9
  np.testing.assert_allclose(features[0, 6], [sum(first), min(first)], rtol=1e-5)
  np.testing.assert_allclose(features[0, 9], [sum(second), min(second)], rtol=1e-5)
  np.testing.assert_allclose(features[0, 7], [0.0, 0.0], atol=1e-6)  # a step's first token


def _weighing_likelihood(model):
  """`model` with nonzero likelihood weights, so that the features count."""
  graphdef, params = nnx.split(model)
  params_dict = nnx.to_pure_dict(params)
  params_dict["likelihood_weights"] = jnp.asarray([0.3, -0.7])
  nnx.replace_by_pure_dict(params, params_dict)
  return nnx.merge(graphdef, params)


def test_a_step_appended_scores_like_the_whole_prefix_with_step_likelihood(likelihood_model):
  model = _weighing_likelihood(likelihood_model[0])
  tokens = jnp.asarray([[2, 7, STEP, 9, 10, 11, STEP, 12, 13, EOS]], jnp.int32)
  full = model(tokens, jnp.arange(10)[None])
  cache = init_cache(CONFIG, 1, 16)
  _, cache = model.extend(tokens[:, :3], jnp.ones((1, 3), bool), cache)
  step, cache = model.extend(tokens[:, 3:7], jnp.ones((1, 4), bool), cache)
  last, _ = model.extend(tokens[:, 7:], jnp.ones((1, 3), bool), cache)
  np.testing.assert_allclose(step[0, -1], full[0, 6], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(last[0, -1], full[0, 9], rtol=1e-5, atol=1e-5)


def test_an_append_in_chunks_scores_and_caches_like_one_append(likelihood_model):
  """Fails if the chunked trunk loses a step that crosses a chunk boundary
  (its likelihood features restart), skips a chunk some row uses, or writes
  other slots than one append does."""
  model = _weighing_likelihood(likelihood_model[0])
  rng = np.random.default_rng(5)
  tokens = rng.integers(5, CONFIG.vocab_size, size=(4, 16))
  tokens[:, 2::3] = STEP                             # steps of 3 tokens: some cross column 4, 8
  tokens = jnp.asarray(tokens, jnp.int32)
  counts = jnp.asarray([0, 3, 9, 7])                 # no row reaches the last chunk
  valid = jnp.arange(16)[None, :] < counts[:, None]
  prompt = jnp.asarray(rng.integers(5, CONFIG.vocab_size, size=(4, 5)), jnp.int32)
  extend = jax.jit(lambda t, v, c: model.extend(t, v, c))     # jitted: eager is slow
  _, cache = extend(prompt, jnp.ones((4, 5), bool), init_cache(CONFIG, 4, 24))
  whole, whole_cache = extend(tokens, valid, cache)
  chunked, chunked_cache = jax.jit(lambda t, v, c: model.extend_in_chunks(t, v, c, 4))(
      tokens, valid, cache)
  np.testing.assert_allclose(np.where(valid, chunked, 0), np.where(valid, whole, 0),
                             rtol=1e-5, atol=1e-5)
  assert int(chunked_cache.write_index) == int(whole_cache.write_index) == 21
  np.testing.assert_array_equal(chunked_cache.slot_valid, whole_cache.slot_valid)
  np.testing.assert_array_equal(chunked_cache.next_position, whole_cache.next_position)
  used = whole_cache.slot_valid[:, None, None, :]
  for chunked_keys, whole_keys in zip(chunked_cache.keys, whole_cache.keys, strict=True):
    np.testing.assert_allclose(np.where(used, chunked_keys, 0), np.where(used, whole_keys, 0),
                               rtol=1e-5, atol=1e-5)
