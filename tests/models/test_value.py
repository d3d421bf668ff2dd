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
